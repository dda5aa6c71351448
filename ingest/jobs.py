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

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict

from ingest import store
from ingest.config import NAME_PATTERN, load_config
from ingest.db import Database
from ingest.embedding import get_embedder
from ingest.errors import IndexVersionError, IngestBusy, RagopsError, SourceError
from ingest.pipeline import DEFAULT_COLLECTION, IngestPipeline, IngestProgress, scan_source
from ingest.settings import Settings

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
HEARTBEAT_S = 1.0  # progress is committed at least this often (the issue asks for <= 2 s)
BUSY_RETRY_S = 5  # a job whose version another writer holds waits this long before it is tried again


class ReindexParams(BaseModel):
    """What a reindex job does; stored as the job's ``params``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: list[str]  # absolute, resolved, checked to lie under the allowed roots
    config: str
    collection: str = DEFAULT_COLLECTION
    mode: Literal["incremental", "full"] = "incremental"
    activate: bool | None = None  # None: only when no version is active yet
    sync: bool = False


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


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def resolve_source(raw: str, roots: Sequence[Path]) -> Path:
    """The real path of a reindex source, or :class:`SourceError` when it is not under an allowed root.

    Relative paths are looked up under each root, then under the working directory. ``..``
    is refused outright; symlinks are followed, and one leading out of the roots (the source
    itself or any entry below it) is refused.
    """
    allowed = [root.resolve() for root in roots]
    where = ", ".join(str(root) for root in allowed)
    if not raw.strip():
        raise SourceError("source must not be empty")
    path = Path(raw)
    if ".." in path.parts:
        raise SourceError(f"source {raw!r} must not contain '..'; give a path under the allowed roots ({where})")
    candidates = [path] if path.is_absolute() else [*(root / path for root in allowed), Path.cwd() / path]
    for candidate in candidates:
        if not candidate.exists():
            continue
        resolved = candidate.resolve()
        if not _inside(resolved, allowed):
            raise SourceError(f"source {raw!r} is outside the allowed roots ({where}) or a symlink leading out of them")
        _refuse_escaping_links(raw, resolved, allowed)
        return resolved
    if path.is_absolute() and not _inside(path.resolve(), allowed):
        raise SourceError(f"source {raw!r} is outside the allowed roots ({where})")
    raise SourceError(f"source {raw!r} does not exist under the allowed roots ({where})")


def _refuse_escaping_links(raw: str, resolved: Path, allowed: Sequence[Path]) -> None:
    if not resolved.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(resolved):
        for name in (*dirnames, *filenames):
            entry = Path(dirpath) / name
            if entry.is_symlink() and not _inside(entry.resolve(), allowed):
                raise SourceError(
                    f"source {raw!r} contains a symlink leading outside the allowed roots: "
                    f"{entry.relative_to(resolved).as_posix()}"
                )


def default_sources(conn: psycopg.Connection, collection: str, roots: Sequence[Path]) -> list[Path]:
    """Where ``collection`` was ingested from before (successful runs), still under the allowed roots."""
    rows = conn.execute(
        """SELECT source FROM ingest_runs WHERE collection = %s AND status = 'succeeded'
           GROUP BY source ORDER BY max(id)""",
        (collection,),
    ).fetchall()
    found: list[Path] = []
    for (source,) in rows:
        try:
            path = resolve_source(source, roots)
        except SourceError:
            continue
        if path not in found:
            found.append(path)
    return found


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
) -> Job:
    """Validate a reindex request (config, sources under the allowed roots) and queue it.

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
        activate=activate, sync=sync,
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


def list_jobs(conn: psycopg.Connection, *, status: str | None = None, limit: int = 50) -> list[Job]:
    """Jobs, newest first, optionally of one status."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE %(status)s::text IS NULL OR status = %(status)s "
            "ORDER BY id DESC LIMIT %(limit)s",
            {"status": status, "limit": limit},
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
            _drop_unfinished_version(conn, job)
    return recovered


def _drop_unfinished_version(conn: psycopg.Connection, job: Job) -> None:
    """Drop the version a full build created, unless it completed or is active."""
    if not job.created_version or job.index_version_id is None:
        return
    try:
        version = store.get_index_version(conn, job.index_version_id)
        if version.status != "ready" and not version.is_active:
            store.drop_index_version(conn, version.id)
            log.info("job %s: dropped unfinished index version %s", job.id, version.name)
    except (IndexVersionError, IngestBusy) as exc:
        log.warning("job %s: could not drop its unfinished version: %s", job.id, exc)


# ---------------------------------------------------------------- running a job


class JobCancelled(RagopsError):
    """The job was cancelled while it ran."""


class JobLost(RagopsError):
    """Another worker took the job over (this worker was presumed dead)."""


class WorkerStopping(RagopsError):
    """The worker is shutting down; the job goes back to the queue."""


@dataclass
class _Progress:
    """What the heartbeat commits: updated by the pipeline's callback, read by the heartbeat thread."""

    docs_done: int = 0
    docs_total: int | None = None
    chunks_done: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    version_id: int | None = None
    created_version: bool = False  # this job made its version (a full build): drop it if the job ends unfinished


class _Heartbeat:
    """Commits progress and the heartbeat every ``interval`` on its own connection; learns of cancellation."""

    def __init__(self, database: Database, job: Job, worker_id: str, progress: _Progress, interval: float) -> None:
        self.database, self.job_id, self.worker_id = database, job.id, worker_id
        self.progress, self.interval = progress, interval
        self.cancelled, self.lost, self._stop = threading.Event(), threading.Event(), threading.Event()
        self._conn = database.connect()
        self.beat()  # a cancel that came before the first batch is seen before the first batch
        self._thread = threading.Thread(target=self._run, name=f"job-{job.id}-heartbeat", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        """Write the counts and the heartbeat; note a cancel request or a lost job."""
        p = self.progress
        row = self._conn.execute(
            """UPDATE jobs SET docs_done = %s, docs_total = %s, chunks_done = %s, errors = %s,
                   heartbeat_at = now(), updated_at = now()
               WHERE id = %s AND worker_id = %s AND status = 'running' RETURNING cancel_requested""",
            (p.docs_done, p.docs_total, p.chunks_done, Jsonb(list(p.errors)), self.job_id, self.worker_id),
        ).fetchone()
        if row is None:
            self.lost.set()
        elif row[0]:
            self.cancelled.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except psycopg.Error as exc:  # a blip must not kill the job; staleness is the safety net
                log.warning("job %s: heartbeat failed: %s", self.job_id, exc)

    def close(self) -> None:
        """Stop beating (after one last beat with the final counts); closing twice is harmless."""
        if self._conn.closed:
            return
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(psycopg.Error):
            self.beat()
        self._conn.close()


class Worker:
    """Claims and runs jobs; one per process (``ragops worker``) or a thread of the API process."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        worker_id: str | None = None,
        poll_s: float = 0.5,
        heartbeat_s: float = HEARTBEAT_S,
        batch_documents: int = 256,
    ) -> None:
        self.database = database
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.batch_documents = batch_documents  # smaller batches: finer progress and cancellation, slower builds
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ loop

    def run_once(self, conn: psycopg.Connection | None = None) -> Job | None:
        """Recover stale jobs, then claim and run one job; returns it as it ended, or None when idle."""
        if conn is None:
            with self.database.connect() as own:
                return self.run_once(own)
        recover_stale_jobs(conn, self.settings.job_stale_after_s, self.settings.job_max_attempts)
        job = claim_job(conn, self.worker_id)
        if job is None:
            return None
        log.info("job %s: claimed by %s (run %s)", job.id, self.worker_id, job.attempts)
        self.run_job(job)
        return get_job(conn, job.id)

    def run_forever(self) -> None:
        """Run jobs until :meth:`stop` on one polling connection; database errors are logged and retried."""
        conn: psycopg.Connection | None = None
        while not self.stopping.is_set():
            job = None
            try:
                if conn is None or conn.closed:
                    conn = self.database.connect()
                job = self.run_once(conn)
            except (psycopg.Error, RagopsError) as exc:
                log.warning("worker %s: %s; retrying", self.worker_id, exc)
                if conn is not None:
                    conn.close()
                conn = None
            if job is None:
                self.stopping.wait(self.poll_s)
        if conn is not None:
            conn.close()

    def start(self) -> threading.Thread:
        """Run in a daemon thread (the API's in-process worker)."""
        self._thread = threading.Thread(target=self.run_forever, name="ragops-worker", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop after the current batch; a running job goes back to the queue."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # ------------------------------------------------------------ one job

    def run_job(self, job: Job) -> None:
        """Run a claimed job to its end state (or back to the queue)."""
        state = _Progress(version_id=job.index_version_id, created_version=job.created_version)
        try:
            self._execute(job, ReindexParams.model_validate(job.params), state)
        except JobCancelled:
            self._end(job, "cancelled", error="cancelled on request", progress=state)
            self._cleanup(job, state)
        except JobLost:
            log.warning("job %s: taken over by another worker; abandoning this run", job.id)
        except (WorkerStopping, IngestBusy) as exc:
            self._requeue(job, f"{exc}; queued again", BUSY_RETRY_S if isinstance(exc, IngestBusy) else 0)
        except psycopg.OperationalError as exc:  # the database restarted or cut us off: resumable, if it is back
            note = f"database connection lost on run {job.attempts} ({str(exc).strip()[:200]})"
            if job.attempts < self.settings.job_max_attempts:
                self._requeue(job, f"{note}; resumed", BUSY_RETRY_S, count_run=True)
            else:
                self._end(job, "failed", error=f"{note}; failed after {job.attempts} runs", progress=state)
                self._cleanup(job, state)
        except KeyboardInterrupt:
            self._requeue(job, "worker interrupted; queued again", 0)
            raise
        except Exception as exc:  # the job fails with its reason; the worker goes on
            log.warning("job %s failed: %s: %s", job.id, type(exc).__name__, exc)
            self._end(job, "failed", error=f"{type(exc).__name__}: {exc}"[:2000], progress=state)
            self._cleanup(job, state)

    def _execute(self, job: Job, params: ReindexParams, state: _Progress) -> None:
        # Beat from the start: loading a model can take longer than the staleness limit.
        heartbeat = _Heartbeat(self.database, job, self.worker_id, state, self.heartbeat_s)
        try:
            with self.database.connect() as conn:
                loaded = load_config(params.config, self.settings.configs_dir)
                roots = [resolve_source(s, self.settings.allowed_source_roots) for s in params.sources]
                if not roots:
                    raise SourceError("the job names no source")
                embedder = get_embedder(loaded.config.index.embedding)
                pipeline = IngestPipeline(
                    conn, loaded, embedder, collection=params.collection, batch_documents=self.batch_documents
                )
                version, created = self._target_version(conn, job, pipeline, params)
                state.version_id, state.created_version = version.id, state.created_version or created
                self._record_version(conn, job, version.id, state.created_version)
                state.docs_total = sum(f.estimated_documents() for root in roots for f in scan_source(root))
                counts: dict[str, int] = {}
                seconds = 0.0
                for root in roots:
                    self._check(heartbeat)
                    report = pipeline.run(
                        root,
                        sync=params.sync,
                        activate=False,
                        on_progress=self._progress_callback(state, heartbeat),
                        version=version,
                    )
                    version = report.index_version
                    counts = {k: counts.get(k, 0) + v for k, v in report.counts.items()}
                    seconds += report.total_seconds
                self._check(heartbeat)
                heartbeat.close()
                self._succeed(conn, job, params, version, counts, {"total": round(seconds, 3)})
        finally:
            heartbeat.close()

    def _progress_callback(self, progress: _Progress, heartbeat: _Heartbeat) -> Callable[[IngestProgress], None]:
        """Fold one source's counts into the job's (sources run one after another), then check for a stop."""
        done, chunks, errors = progress.docs_done, progress.chunks_done, list(progress.errors)

        def on_progress(p: IngestProgress) -> None:
            progress.docs_done, progress.chunks_done = done + p.docs_done, chunks + p.chunks_done
            progress.errors = [*errors, *p.skipped]
            self._check(heartbeat)

        return on_progress

    def _check(self, heartbeat: _Heartbeat) -> None:
        """Between batches: stop when the worker stops, the job is cancelled or it was taken over."""
        if self.stopping.is_set():
            raise WorkerStopping("worker stopping")
        if heartbeat.lost.is_set():
            raise JobLost("job taken over")
        if heartbeat.cancelled.is_set():
            raise JobCancelled("cancelled")

    def _target_version(
        self, conn: psycopg.Connection, job: Job, pipeline: IngestPipeline, params: ReindexParams
    ) -> tuple[store.IndexVersion, bool]:
        """The version to write: the one an earlier run of this job chose, a fresh one (full), or the config's."""
        if job.index_version_id is not None:
            try:
                return store.get_index_version(conn, job.index_version_id), False
            except IndexVersionError:
                if not job.created_version:
                    raise
        if params.mode == "full":
            settings = pipeline.config.config.index
            fresh = store.ensure_index_version(
                conn, settings, pipeline.embedder.dimension, pipeline.config.version, fresh=True
            )
            return fresh, True
        return pipeline.index_version(), False

    def _record_version(self, conn: psycopg.Connection, job: Job, version_id: int, created: bool) -> None:
        try:
            conn.execute(
                "UPDATE jobs SET index_version_id = %s, created_version = %s, updated_at = now() WHERE id = %s",
                (version_id, created, job.id),
            )
        except psycopg.errors.UniqueViolation:
            raise IngestBusy(f"another job is building index version {version_id}") from None

    def _succeed(
        self,
        conn: psycopg.Connection,
        job: Job,
        params: ReindexParams,
        version: store.IndexVersion,
        counts: dict[str, int],
        timings: dict[str, float],
    ) -> None:
        """Activate (when asked) and mark the job succeeded in ONE transaction, unless it was cancelled."""
        with conn.transaction():
            row = conn.execute(
                "SELECT cancel_requested FROM jobs WHERE id = %s AND worker_id = %s AND status = 'running' FOR UPDATE",
                (job.id, self.worker_id),
            ).fetchone()
            if row is None:
                raise JobLost("job taken over")
            if row[0]:
                raise JobCancelled("cancelled")
            activate = params.activate if params.activate is not None else store.active_index_version(conn) is None
            if activate and not version.is_active:
                version = store.activate_index_version(conn, version.id)
            conn.execute(
                """UPDATE jobs SET status = 'succeeded', activated = %s, result = %s,
                       finished_at = now(), updated_at = now() WHERE id = %s""",
                (
                    activate,
                    Jsonb({"counts": counts, "timings": timings, "index_version": version.name}),
                    job.id,
                ),
            )

    def _end(self, job: Job, status: JobStatus, *, error: str, progress: _Progress | None = None) -> None:
        with self.database.connect() as conn:
            conn.execute(
                """UPDATE jobs SET status = %s, error = %s, errors = coalesce(%s, errors),
                       finished_at = now(), updated_at = now()
                   WHERE id = %s AND worker_id = %s AND status = 'running'""",
                (status, error, Jsonb(progress.errors) if progress else None, job.id, self.worker_id),
            )

    def _requeue(self, job: Job, note: str, delay_s: float, *, count_run: bool = False) -> None:
        """Back to the queue; the run is not counted unless asked (it was interrupted, not crashed).

        When the database is still away this raises, and stale-job recovery requeues the job later.
        """
        with self.database.connect() as conn:
            conn.execute(
                """UPDATE jobs SET status = 'queued', worker_id = NULL,
                       attempts = CASE WHEN %s THEN attempts ELSE greatest(attempts - 1, 0) END,
                       error = %s, run_after = now() + make_interval(secs => %s), updated_at = now()
                   WHERE id = %s AND worker_id = %s AND status = 'running'""",
                (count_run, note, delay_s, job.id, self.worker_id),
            )

    def _cleanup(self, job: Job, state: _Progress) -> None:
        with self.database.connect() as conn:
            current = get_job(conn, job.id)
            if current is not None:
                _drop_unfinished_version(
                    conn,
                    Job(
                        **{
                            **current.__dict__,
                            "created_version": state.created_version,
                            "index_version_id": state.version_id,
                        }
                    ),
                )


def wait_for_job(conn: psycopg.Connection, job_id: int, timeout_s: float = 600.0, poll_s: float = 0.2) -> Job:
    """Poll until the job is finished (for the CLI, tests and benchmarks)."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = get_job(conn, job_id)
        if job is None:
            raise RagopsError(f"no job {job_id}")
        if job.finished:
            return job
        if time.monotonic() > deadline:
            raise RagopsError(f"job {job_id} is still {job.status} after {timeout_s:.0f} s")
        time.sleep(poll_s)
