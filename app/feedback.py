"""Feedback on answers and the opt-in transcript store: what live traffic leaves behind for learning.

A rating is stored against the answer's ledger row, so it carries the configuration, prompt, index
and model versions that produced the answer. The transcript store (``feedback.transcripts`` in a
configuration, off by default) keeps only what the PII filter left of question and answer (pseudonyms
never restored), the citations and the versions, until its retention runs out; the worker deletes
expired rows (:func:`purge_expired_transcripts`). Nothing here ever holds raw caller text.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from app.after_answer import AfterAnswer
from core.config import parse_duration
from core.errors import AccessDenied, BadRequest, NotFound
from ingest.worker import Chore

if TYPE_CHECKING:  # types only: the CLI imports this module for the worker's chores
    from app.answers import Answer, Prepared
    from app.keys import ApiKey
    from core.access import Grant
    from core.config import LoadedConfig
    from core.pii import PiiEngine

log = logging.getLogger(__name__)

Scale = Literal["thumbs", "stars"]
Reason = Literal["wrong", "incomplete", "not_in_documents", "outdated", "other"]
REASONS: tuple[Reason, ...] = ("wrong", "incomplete", "not_in_documents", "outdated", "other")
SCALES: dict[Scale, frozenset[int]] = {"thumbs": frozenset({-1, 1}), "stars": frozenset(range(1, 6))}


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """``7d``, ``24h``, ``30m``, ``2w`` (that long ago) or an ISO date/time (UTC unless it says otherwise)."""
    with contextlib.suppress(ValueError):
        return (now or datetime.now(UTC)) - timedelta(seconds=parse_duration(value))
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadRequest(f"since: {value!r} is neither a duration like 7d or 24h nor an ISO date", "since") from None
    # In UTC: ISO 8601 allows offsets PostgreSQL refuses (beyond +-15:59); the same instant in UTC it takes.
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def is_negative(scale: Scale, rating: int) -> bool:
    """Whether a rating says the answer failed (thumbs down, or 1-2 stars); the SQL column computes the same."""
    return rating == -1 if scale == "thumbs" else rating <= 2


# ------------------------------------------------------------------ transcripts


def transcript_citations(prepared: Prepared, answer: Answer) -> list[dict[str, Any]]:
    """Citations as a transcript keeps them: ids and scores; source and snippet only as the context filter left them."""
    filtered = prepared.config.config.pii.enabled and prepared.config.config.pii.apply_to.context == "all"
    return [
        {
            "n": c.n,
            "document_id": c.document_id,
            "chunk_id": c.chunk_id,
            "score": round(c.score, 6),
            "source": c.source if filtered else None,
            "snippet": c.snippet if filtered else None,
        }
        for c in answer.citations
    ]


def transcript_to_keep(request_id: str, prepared: Prepared, answer: Answer) -> AfterAnswer | None:
    """Storing the answer's filtered transcript, when its configuration opts in (written with the ledger row).

    Nothing is stored when the question or answer went unfiltered (``pii.on_error: pass``).
    """
    settings = prepared.config.config.feedback.transcripts
    if not settings.enabled:
        return None
    transcript = prepared.pii.filtered_transcript()
    if transcript is None:
        log.info("request %s: no transcript stored; configuration %r did not filter question and answer",
                 request_id, prepared.config.name)  # fmt: skip
        return None
    row = (request_id, prepared.question.collection or "", answer.versions.config, answer.versions.prompt,
           answer.versions.index, answer.versions.model, transcript["question"], transcript["answer"],
           Jsonb(transcript_citations(prepared, answer)), settings.retention_days)  # fmt: skip

    def write(conn: psycopg.Connection) -> None:
        conn.execute(
            """INSERT INTO transcripts (request_id, collection, config_version, prompt_version, index_version,
                   model, question, answer, citations, expires_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, now() + make_interval(days => %s))
               ON CONFLICT (request_id) DO NOTHING""",
            row,
        )

    return AfterAnswer("transcript", write)


def filtered_questions(conn: psycopg.Connection, request_ids: Sequence[str]) -> dict[str, str]:
    """The transcript store's (PII-filtered) question of each of ``request_ids`` that has an unexpired one."""
    rows = conn.execute(
        "SELECT request_id, question FROM transcripts WHERE request_id = ANY(%s) AND expires_at > now()",
        (list(request_ids),),
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def purge_expired_transcripts(conn: psycopg.Connection, now: datetime | None = None) -> int:
    """Delete transcripts whose retention ran out (the worker's chore, and ``ragops feedback purge``); how many."""
    cursor = conn.execute("DELETE FROM transcripts WHERE expires_at <= coalesce(%s, now())", (now,))
    deleted = cursor.rowcount
    if deleted:
        log.info("deleted %d expired transcript(s)", deleted)
    return deleted


TRANSCRIPT_RETENTION = Chore("transcript retention", 600.0, purge_expired_transcripts)
CHORES: tuple[Chore, ...] = (TRANSCRIPT_RETENTION,)  # what the app's worker runs between jobs


# ------------------------------------------------------------------ ratings


@dataclass(frozen=True)
class Rated:
    """The request a rating is for, as the ledger recorded it."""

    request_id: str
    key_id: int | None
    collection: str | None
    status: int
    config_version: str | None
    trace_id: str | None = None  # the answer's OpenTelemetry trace and root span, when it was traced
    span_id: str | None = None


def rateable(conn: psycopg.Connection, request_id: str, key: ApiKey | None, grant: Grant) -> Rated:
    """The answered request ``key`` may rate: one it made, or one of a collection it administers.

    Refusals read the same whether the request exists or not (403 with a key, 404 with auth off),
    so a key learns nothing about other keys' requests.
    """
    row = conn.execute(
        "SELECT request_id, key_id, collection, status, config_version, trace_id, span_id FROM ledger"
        " WHERE request_id = %s",
        (request_id,),
    ).fetchone()
    rated = Rated(*row) if row is not None else None
    if key is None:
        if rated is None:
            raise NotFound(f"no request {request_id!r}", field="request_id")
    elif rated is None or not _may_rate(rated, key, grant):
        raise AccessDenied(f"this key may not rate request {request_id!r}", field="request_id")
    assert rated is not None
    if rated.collection is None or rated.status >= 400:
        raise BadRequest(f"request {request_id!r} produced no answer to rate", field="request_id")
    return rated


def _may_rate(rated: Rated, key: ApiKey, grant: Grant) -> bool:
    """The key made the request, or administers its collection (a global admin: every collection)."""
    return rated.key_id == key.id or ("admin" in key.scopes and grant.may_use(rated.collection or ""))


def check_sources(conn: psycopg.Connection, collection: str, document_ids: list[int]) -> list[int]:
    """The document ids, deduplicated, once each is known in ``collection``; 422 naming the others."""
    wanted = sorted(set(document_ids))
    if not wanted:
        return []
    found = {r[0] for r in conn.execute(
        "SELECT id FROM documents WHERE collection = %s AND id = ANY(%s)", (collection, wanted)
    ).fetchall()}  # fmt: skip
    unknown = [i for i in wanted if i not in found]
    if unknown:
        raise BadRequest(
            f"sources: no document {', '.join(map(str, unknown))} in the answer's collection "
            "(send the document_id of its citations)",
            field="sources",
        )
    return wanted


def filter_comment(text: str, config: LoadedConfig, engine: PiiEngine | None) -> str:
    """A rating's free text with every configured entity replaced (fails closed: no filter, no text)."""
    policy = config.config.pii
    if engine is None or not policy.enabled:
        raise BadRequest(
            f"configuration {config.name!r} does not filter PII, so free text cannot be stored; "
            "send rating, reason and sources only",
            field="text",
        )
    return engine.scrub(text, policy).text


@dataclass(frozen=True)
class Rating:
    """What a caller says about one answer (text already filtered)."""

    scale: Scale
    rating: int
    reason: Reason | None
    text: str | None
    sources: list[int]


def save_rating(conn: psycopg.Connection, rated: Rated, key: ApiKey | None, rating: Rating) -> dict[str, Any]:
    """Insert or replace the request's rating; the stored row with ``created`` (False: an update)."""
    assert rated.collection is not None
    row = conn.execute(
        """INSERT INTO feedback AS f (request_id, collection, key_id, scale, rating, reason, text, sources)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (request_id) DO UPDATE
             SET key_id = excluded.key_id, scale = excluded.scale, rating = excluded.rating,
                 reason = excluded.reason, text = excluded.text, sources = excluded.sources, updated_at = now()
           RETURNING id, request_id, collection, scale, rating, negative, reason, text, sources, created_at,
                     updated_at, (xmax = 0) AS created""",
        (rated.request_id, rated.collection, key.id if key else None, rating.scale, rating.rating, rating.reason,
         rating.text, rating.sources),
    ).fetchone()  # fmt: skip
    assert row is not None
    names = ("id", "request_id", "collection", "scale", "rating", "negative", "reason", "text", "sources",
             "created_at", "updated_at", "created")  # fmt: skip
    return dict(zip(names, row, strict=True))


FEEDBACK_COLUMNS = """f.id, f.request_id, f.collection, f.scale, f.rating, f.negative, f.reason, f.text, f.sources,
       f.created_at, f.updated_at, l.route, l.config_version, l.prompt_version, l.index_version, l.model"""


def list_feedback(
    conn: psycopg.Connection,
    collection: str,
    *,
    since: datetime | None = None,
    negative: bool | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Ratings of one collection (updated since ``since``), oldest id first, with the answer's versions."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"""SELECT {FEEDBACK_COLUMNS}
                FROM feedback f JOIN ledger l ON l.request_id = f.request_id
                WHERE f.collection = %(collection)s AND f.id > %(after)s
                  AND (%(since)s::timestamptz IS NULL OR f.updated_at >= %(since)s)
                  AND (%(negative)s::boolean IS NULL OR f.negative = %(negative)s)
                ORDER BY f.id LIMIT %(limit)s""",
            {"collection": collection, "after": after_id, "since": since, "negative": negative, "limit": limit},
        ).fetchall()
