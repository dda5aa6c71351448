"""Stored PII spans of document text: analyzed once (at ingest, or on first retrieval), read per query.

Content-addressed (sha256 of the text, and the analysis fingerprint of the policy that found them),
so the same chunk in a rebuilt index version, or a title shared by a document's chunks, is analyzed
once. Rows hold offsets, types and scores, never the text or its values.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from core.config import PiiSettings
from core.pii import PiiEngine, PiiSpan
from ingest.versions import IndexVersion


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


# A word is learned as the collection's own name when the NER model calls it PERSON in at most this
# share of its occurrences, and it occurs this often, in this many documents. A real name in a
# handbook is tagged nearly every time it appears; "Webhook" in a table row only sometimes.
LEARN_MAX_PERSON_SHARE = 0.5
LEARN_MIN_OCCURRENCES = 4
LEARN_MIN_DOCUMENTS = 2
# One to three capitalized words on one line ("Roomly", "Customer Support"): where the small model errs
# on product, team and feature names.
_WORD = re.compile(r"[A-Z][A-Za-z]+(?: [A-Z][A-Za-z]+){0,2}")


@dataclass(frozen=True)
class LearnedTerm:
    """A word the collection uses as a name of its own, and the evidence."""

    term: str
    occurrences: int
    documents: int
    tagged_person: int


def learn_terms(
    conn: psycopg.Connection, version: IndexVersion, collection: str, policy: PiiSettings
) -> list[LearnedTerm]:
    """The collection's own names among the words its stored spans call PERSON (see ``LEARN_*``)."""
    rows = conn.execute(
        sql.SQL(
            """SELECT c.document_id, c.text, p.spans FROM {} c
               LEFT JOIN pii_spans p ON p.analysis = %s AND p.text_sha256 = sha256(convert_to(c.text, 'UTF8'))
               WHERE c.collection = %s"""
        ).format(version.table),
        (policy.analysis(), collection),
    ).fetchall()
    tagged: Counter[str] = Counter()
    for _, text, spans in rows:
        for entity_type, start, end, score in spans or ():
            term = text[start:end]
            if entity_type == "PERSON" and score >= policy.score_threshold and _WORD.fullmatch(term):
                tagged[term] += 1
    vetoed = set(policy.never_allow)
    candidates = sorted((t for t in tagged if t not in vetoed), key=len, reverse=True)
    if not candidates:
        return []
    pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, candidates)) + r")\b")
    occurrences: Counter[str] = Counter()
    documents: dict[str, set[int]] = {}
    for document_id, text, _ in rows:
        for match in pattern.finditer(text):
            occurrences[match.group(0)] += 1
            documents.setdefault(match.group(0), set()).add(document_id)
    return [
        LearnedTerm(term, occurrences[term], len(documents[term]), tagged[term])
        for term in sorted(candidates)
        if occurrences[term] >= LEARN_MIN_OCCURRENCES
        and len(documents[term]) >= LEARN_MIN_DOCUMENTS
        and tagged[term] <= LEARN_MAX_PERSON_SHARE * occurrences[term]
    ]


def store_terms(conn: psycopg.Connection, collection: str, analysis: str, terms: list[LearnedTerm]) -> None:
    """Replace the collection's learned terms for this analysis."""
    with conn.transaction():
        conn.execute("DELETE FROM pii_learned_terms WHERE collection = %s AND analysis = %s", (collection, analysis))
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO pii_learned_terms (collection, analysis, term, occurrences, documents, tagged_person)
                   VALUES (%s, %s, %s, %s, %s, %s)""",
                [(collection, analysis, t.term, t.occurrences, t.documents, t.tagged_person) for t in terms],
            )


def load_terms(conn: psycopg.Connection, collection: str, analysis: str) -> list[LearnedTerm]:
    """The collection's learned terms, by term."""
    rows = conn.execute(
        """SELECT term, occurrences, documents, tagged_person FROM pii_learned_terms
           WHERE collection = %s AND analysis = %s ORDER BY term""",
        (collection, analysis),
    ).fetchall()
    return [LearnedTerm(*row) for row in rows]
