"""Stored PII spans of document text: analyzed once (at ingest, or on first retrieval), read per query.

Content-addressed (sha256 of the text, and the analysis fingerprint of the policy that found them),
so the same chunk in a rebuilt index version, or a title shared by a document's chunks, is analyzed
once. Rows hold offsets, types and scores, never the text or its values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import psycopg
from psycopg.types.json import Jsonb

from core.config import PiiSettings
from core.pii import PiiEngine, PiiSpan


def text_key(text: str) -> bytes:
    """The key a text's spans are stored under."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def load(conn: psycopg.Connection, analysis: str, texts: Iterable[str]) -> dict[str, list[PiiSpan]]:
    """Stored raw spans of those ``texts`` that have them (one round trip)."""
    by_key = {text_key(t): t for t in texts}
    if not by_key:
        return {}
    rows = conn.execute(
        "SELECT text_sha256, spans FROM pii_spans WHERE analysis = %s AND text_sha256 = ANY(%s)",
        (analysis, list(by_key)),
    ).fetchall()
    return {by_key[bytes(key)]: [PiiSpan(t, int(s), int(e), float(sc)) for t, s, e, sc in spans] for key, spans in rows}


def store(conn: psycopg.Connection, analysis: str, found: dict[str, list[PiiSpan]]) -> None:
    """Keep raw spans of analyzed texts (a text already stored keeps its first analysis)."""
    if not found:
        return
    rows = [
        (analysis, text_key(text), Jsonb([[s.entity_type, s.start, s.end, s.score] for s in spans]))
        for text, spans in found.items()
    ]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO pii_spans (analysis, text_sha256, spans) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", rows
        )


def analyze_missing(conn: psycopg.Connection, engine: PiiEngine, policy: PiiSettings, texts: Iterable[str]) -> int:
    """Analyze and store the ``texts`` that have no stored spans yet (the ingest pass); returns how many."""
    analysis = policy.analysis()
    wanted = {t for t in texts if t.strip()}
    missing = sorted(wanted - load(conn, analysis, wanted).keys())
    if missing:
        store(conn, analysis, dict(zip(missing, engine.analyze_batch(missing, policy), strict=True)))
    return len(missing)
