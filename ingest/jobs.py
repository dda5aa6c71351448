"""Background reindex jobs: a queue in PostgreSQL and the worker that runs it.

Lives in ingest because running a job needs nothing but ingest (store, pipeline, configs):
the API (app/api/admin.py) enqueues and reads jobs, ``ragops worker`` or a thread of the API
process runs them. Workers claim with ``FOR UPDATE SKIP LOCKED`` (never two on one job); a
heartbeat thread commits progress every second; a job whose heartbeat went stale is queued
again (re-running is idempotent: unchanged documents are skipped by content hash) or, after
``job_max_attempts`` runs, failed with its reason. An index version is activated only after
its build completed, in the same transaction that marks the job succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict

from core.access import DEFAULT_COLLECTION
from core.config import NAME_PATTERN, load_config
from core.errors import IndexVersionError, IngestBusy, SourceError
from core.settings import Settings
from ingest import versions
from ingest.sources import default_sources, resolve_source

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class ReindexParams(BaseModel):
    """What a reindex job does; stored as the job's ``params``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: list[str]  # absolute, resolved, checked to lie under the allowed roots
    config: str
    collection: str = DEFAULT_COLLECTION
    mode: Literal["incremental", "full"] = "incremental"
    activate: bool | None = None  # None: only when no version is active yet
    sync: bool = False
    uploads: list[str] = []  # files an upload stored for this job, by source (their name in the uploads folder)


@dataclass(frozen=True)
class Job:
    """One job row, with the rates derived from it."""

    id: int
    kind: str
    params: dict[str, Any]
    status: str
    docs_done: int
    docs_total: int | None
    chunks_done: int
    errors: list[dict[str, str]]
    error: str | None
    result: dict[str, Any] | None
    index_version_id: int | None
    created_version: bool
    activated: bool
    worker_id: str | None
    attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    @property
    def collection(self) -> str:
        """The collection the job writes."""
        return str(self.params.get("collection", DEFAULT_COLLECTION))

    @property
    def finished(self) -> bool:
        """Succeeded, failed or cancelled: nothing will change any more."""
        return self.status in FINISHED

    @property
    def elapsed_s(self) -> float | None:
        """Seconds from start to the last heartbeat (or the end)."""
        end = self.finished_at or self.heartbeat_at
        if self.started_at is None or end is None:
            return None
        return max((end - self.started_at).total_seconds(), 0.0)

    @property
    def docs_per_s(self) -> float | None:
        """Documents processed per second so far."""
        elapsed = self.elapsed_s
        return round(self.docs_done / elapsed, 2) if elapsed else None

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate, while running."""
        rate = self.docs_per_s
        if self.status != "running" or not rate or self.docs_total is None:
            return None
        return round(max(self.docs_total - self.docs_done, 0) / rate, 1)


_JOB_COLUMNS = (
    "id, kind, params, status, docs_done, docs_total, chunks_done, errors, error, result, index_version_id, "
    "created_version, activated, worker_id, attempts, cancel_requested, created_at, started_at, heartbeat_at, "
    "finished_at, updated_at"
)


def _one(conn: psycopg.Connection, query: str, params: Sequence[Any] | dict[str, Any]) -> Job | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query, params).fetchone()
    return Job(**row) if row else None


# ---------------------------------------------------------------- sources


# ---------------------------------------------------------------- the queue


def enqueue_reindex(
    conn: psycopg.Connection,
    settings: Settings,
    *,
    source: str | None = None,
    config: str | None = None,
    collection: str = DEFAULT_COLLECTION,
    mode: Literal["incremental", "full"] = "incremental",
    activate: bool | None = None,
    sync: bool = False,
    uploads: Sequence[str] = (),
) -> Job:
    """Validate a reindex request (config, sources under the allowed roots) and queue it.

    ``uploads``: the files an upload stored, so the job can report their document ids.

    No ``source``: every source the collection was ingested from before, so that a full
    build holds the whole collection before it can be activated.
    """
    if not NAME_PATTERN.match(collection):
        raise SourceError(f"collection {collection!r} must match {NAME_PATTERN.pattern}")
    loaded = load_config(config or settings.config, settings.configs_dir)  # ConfigError when unknown
    roots = settings.allowed_source_roots
    if source is not None:
        sources = [resolve_source(source, roots)]
    else:
        sources = default_sources(conn, collection, roots)
        if not sources:
            raise SourceError(
                f"no source given, and collection {collection!r} was never ingested from under the allowed roots; "
                "pass source"
            )
    if sync and len(sources) > 1:
        raise SourceError("sync needs one source (it deletes the collection's documents that source lacks)")
    params = ReindexParams(
        sources=[str(s) for s in sources], config=loaded.name, collection=collection, mode=mode,
        activate=activate, sync=sync, uploads=list(uploads),
    )  # fmt: skip
    job = _one(
        conn,
        f"INSERT INTO jobs (kind, params) VALUES ('reindex', %s) RETURNING {_JOB_COLUMNS}",
        (Jsonb(params.model_dump()),),
    )
    assert job is not None
    return job


def get_job(conn: psycopg.Connection, job_id: int) -> Job | None:
    """One job, or None."""
    return _one(conn, f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,))


def list_jobs(
    conn: psycopg.Connection,
    *,
    status: str | None = None,
    limit: int = 50,
    collections: frozenset[str] | None = None,
) -> list[Job]:
    """Jobs, newest first, optionally of one status and of some collections only (None: all)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""SELECT {_JOB_COLUMNS} FROM jobs
                WHERE (%(status)s::text IS NULL OR status = %(status)s)
                  AND (%(collections)s::text[] IS NULL OR params->>'collection' = ANY(%(collections)s::text[]))
                ORDER BY id DESC LIMIT %(limit)s""",
            {"status": status, "limit": limit, "collections": None if collections is None else sorted(collections)},
        ).fetchall()
    return [Job(**row) for row in rows]


def cancel_job(conn: psycopg.Connection, job_id: int) -> Job | None:
    """Cancel a queued job now, or ask a running one to stop at its next batch; a finished job is left as is."""
    with conn.transaction():
        job = _one(conn, f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
        if job is None or job.finished:
            return job
        if job.status == "queued":
            return _one(
                conn,
                f"""UPDATE jobs SET status = 'cancelled', cancel_requested = true, finished_at = now(),
                        updated_at = now() WHERE id = %s RETURNING {_JOB_COLUMNS}""",
                (job_id,),
            )
        return _one(
            conn,
            f"UPDATE jobs SET cancel_requested = true, updated_at = now() WHERE id = %s RETURNING {_JOB_COLUMNS}",
            (job_id,),
        )


def claim_job(conn: psycopg.Connection, worker_id: str) -> Job | None:
    """Take the oldest runnable queued job; concurrent claimers skip the row instead of waiting for it."""
    return _one(
        conn,
        f"""UPDATE jobs SET status = 'running', worker_id = %s, attempts = attempts + 1,
                started_at = coalesce(started_at, now()), heartbeat_at = now(), updated_at = now()
            WHERE id = (SELECT id FROM jobs WHERE status = 'queued' AND run_after <= now()
                        ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING {_JOB_COLUMNS}""",
        (worker_id,),
    )


def recover_stale_jobs(conn: psycopg.Connection, stale_after_s: float, max_attempts: int) -> list[Job]:
    """Requeue running jobs whose worker stopped heartbeating, or fail them after ``max_attempts`` runs.

    A failed full build's unfinished version is dropped: it was never activated and never will be.
    """
    recovered: list[Job] = []
    with conn.transaction():
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(
                f"""SELECT {_JOB_COLUMNS} FROM jobs WHERE status = 'running'
                        AND heartbeat_at < now() - make_interval(secs => %s)
                    FOR UPDATE SKIP LOCKED""",
                (stale_after_s,),
            ).fetchall()
        for job in (Job(**row) for row in rows):
            silent = f"worker {job.worker_id} stopped heartbeating (last at {job.heartbeat_at:%Y-%m-%d %H:%M:%S %Z})"
            if job.cancel_requested:
                status, note = "cancelled", f"{silent}; it had been asked to cancel"
            elif job.attempts < max_attempts:
                status, note = "queued", f"{silent}; resumed (run {job.attempts + 1} of at most {max_attempts})"
            else:
                status, note = "failed", f"{silent} on run {job.attempts} of {max_attempts}; failed"
            updated = _one(
                conn,
                f"""UPDATE jobs SET status = %(status)s, error = %(note)s, updated_at = now(),
                        worker_id = CASE WHEN %(status)s = 'queued' THEN NULL ELSE worker_id END,
                        finished_at = CASE WHEN %(status)s = 'queued' THEN NULL ELSE now() END
                    WHERE id = %(id)s RETURNING {_JOB_COLUMNS}""",
                {"status": status, "note": note, "id": job.id},
            )
            log.warning("job %s: %s", job.id, note)
            assert updated is not None
            recovered.append(updated)
    for job in recovered:
        if job.status in ("failed", "cancelled"):
            drop_unfinished_version(conn, job)
    return recovered


def drop_unfinished_version(conn: psycopg.Connection, job: Job) -> None:
    """Drop the version a full build created, unless it completed or is active."""
    if not job.created_version or job.index_version_id is None:
        return
    try:
        version = versions.get_index_version(conn, job.index_version_id)
        if version.status != "ready" and not version.is_active:
            versions.drop_index_version(conn, version.id)
            log.info("job %s: dropped unfinished index version %s", job.id, version.name)
    except (IndexVersionError, IngestBusy) as exc:
        log.warning("job %s: could not drop its unfinished version: %s", job.id, exc)


# ---------------------------------------------------------------- running a job
