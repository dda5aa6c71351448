"""The job worker: claims queued jobs, runs them with a heartbeat, and ends or requeues them.

Workers claim with ``FOR UPDATE SKIP LOCKED`` (never two on one job); a heartbeat thread commits
progress every second; a job whose heartbeat went stale is queued again (re-running is idempotent:
unchanged documents are skipped by content hash) or, after ``job_max_attempts`` runs, failed with
its reason. An index version is activated only after its build completed, in the same transaction
that marks the job succeeded.
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
from importlib.metadata import entry_points
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from core.config import load_config
from core.db import Database
from core.drift import monitor as drift_monitor
from core.embedding import get_embedder
from core.errors import IndexVersionError, IngestBusy, JobCancelled, JobLost, RagopsError, SourceError, WorkerStopping
from core.runtime import Runtime
from core.settings import Settings
from ingest import versions
from ingest.drift_corpus import IndexCorpus
from ingest.jobs import Job, JobStatus, ReindexParams, claim_job, drop_unfinished_version, get_job, recover_stale_jobs
from ingest.pipeline import IngestPipeline, IngestProgress
from ingest.sources import quarantine_skipped, resolve_source, scan_source

log = logging.getLogger(__name__)
ACTIVATION_CHECKS = "ragops.activation_checks"
# (runtime, configuration name, collection) -> (passed, why): may a full build of this configuration be activated?
ActivationCheck = Callable[[Runtime, str, str], tuple[bool, str]]


def activation_checks() -> list[tuple[str, ActivationCheck]]:
    """The installed activation checks (entry point group ``ragops.activation_checks``), by name."""
    return [(entry.name, entry.load()) for entry in sorted(entry_points(group=ACTIVATION_CHECKS), key=lambda e: e.name)]


HEARTBEAT_S = 1.0  # progress is committed at least this often, so watchers see it move every second or two


BUSY_RETRY_S = 5  # a job whose version another writer holds waits this long before it is tried again


@dataclass(frozen=True)
class Chore:
    """Work the worker does between jobs, every ``every_s`` seconds (0: on every pass of its loop).

    Housekeeping (expired transcripts, drift windows) and the queues of the layers above (online
    evaluation) alike: those layers hand theirs in, so the worker imports none of them. ``run`` returns
    how many items it finished (0: nothing to do), so a drained queue lets the worker rest.
    """

    name: str
    every_s: float
    run: Callable[[psycopg.Connection], int]


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
        chores: Sequence[Chore] = (),
    ) -> None:
        self.database = database
        # Drift windows are this layer's own chore; the layers above hand theirs in.
        self.chores = (*chores, Chore("drift windows", settings.drift_interval_s, self.judge_drift))
        self._chores_due: dict[str, float] = {}  # chore name -> monotonic time it is next due
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
                done = self.run_chores(conn)
            except (psycopg.Error, RagopsError) as exc:
                log.warning("worker %s: %s; retrying", self.worker_id, exc)
                if conn is not None:
                    conn.close()
                conn = None
                done = 0
            if job is None and not done:
                self.stopping.wait(self.poll_s)
        if conn is not None:
            conn.close()

    def run_chores(self, conn: psycopg.Connection, *, force: bool = False) -> int:
        """Run the chores that are due (all of them with ``force``); returns the items they finished.

        A chore's failure is logged and retried when it is next due: it never stops the worker's jobs.
        """
        now, done = time.monotonic(), 0
        for chore in self.chores:
            if not force and self._chores_due.get(chore.name, 0.0) > now:
                continue
            self._chores_due[chore.name] = now + chore.every_s
            try:
                done += chore.run(conn)
            except Exception as exc:
                log.warning("worker %s: chore %s failed: %s", self.worker_id, chore.name, type(exc).__name__)
                if conn.closed or conn.broken:
                    raise  # the loop reconnects
        return done

    def judge_drift(self, conn: psycopg.Connection) -> int:
        """Judge the finished drift windows of every configuration with drift on (a chore); windows judged."""
        report = drift_monitor.run_due(conn, self.settings.configs_dir, corpus=IndexCorpus())
        if report.windows or report.deleted:
            log.info("drift: %d windows judged, %d expired answers deleted", report.windows, report.deleted)
        return report.windows

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
                    errors_before = list(state.errors)
                    report = pipeline.run(
                        root,
                        sync=params.sync,
                        activate=False,
                        on_progress=self._progress_callback(state, heartbeat),
                        version=version,
                    )
                    quarantine_skipped(root, report.skipped, self.settings.uploads_dir, self.settings.quarantine_dir)
                    state.errors = [*errors_before, *report.skipped]
                    version = report.index_version
                    counts = {k: counts.get(k, 0) + v for k, v in report.counts.items()}
                    seconds += report.total_seconds
                self._check(heartbeat)
                gate = self._activation_gate(conn, params)  # while the heartbeat beats: a gate takes minutes
                self._check(heartbeat)
                heartbeat.close()
                self._succeed(conn, job, params, version, counts, {"total": round(seconds, 3)}, gate)
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
    ) -> tuple[versions.IndexVersion, bool]:
        """The version to write: the one an earlier run of this job chose, a fresh one (full), or the config's."""
        if job.index_version_id is not None:
            try:
                return versions.get_index_version(conn, job.index_version_id), False
            except IndexVersionError:
                if not job.created_version:
                    raise
        if params.mode == "full":
            settings = pipeline.config.config.index
            fresh = versions.ensure_index_version(
                conn, settings, pipeline.embedder.dimension, pipeline.config.version, fresh=True
            )
            return fresh, True
        return pipeline.index_version(), False

    def _activation_gate(self, conn: psycopg.Connection, params: ReindexParams) -> dict[str, Any] | None:
        """For a full build asked to activate: every installed activation check's verdict; None otherwise.

        Checks come from the ``ragops.activation_checks`` entry point group (the eval gate registers
        one), so ingest never imports evals; with none installed, the job says activation was not gated.
        """
        if params.mode != "full" or params.activate is not True:
            return None
        checks = activation_checks() if self.settings.activation_checks else []
        if not checks:
            why = "installed" if self.settings.activation_checks else "enabled (RAGOPS_ACTIVATION_CHECKS=false)"
            return {"gated": False, "passed": True, "reason": f"activation was not gated: no activation check {why}"}
        runtime = Runtime(settings=self.settings, database=self.database, conn=conn)
        reasons = []
        for name, check in checks:
            try:
                passed, why = check(runtime, params.config, params.collection)
            except RagopsError as exc:
                passed, why = False, f"{name}: {exc}"
            if not passed:
                return {"gated": True, "passed": False, "reason": why}
            reasons.append(why)
        return {"gated": True, "passed": True, "reason": "; ".join(reasons)}

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
        version: versions.IndexVersion,
        counts: dict[str, int],
        timings: dict[str, float],
        gate: dict[str, Any] | None = None,
    ) -> None:
        """Activate (when asked, and the activation checks passed) and mark the job succeeded in ONE transaction.

        A build that failed its activation check is kept, not activated; the job's ``error`` says why.
        """
        with conn.transaction():
            row = conn.execute(
                "SELECT cancel_requested FROM jobs WHERE id = %s AND worker_id = %s AND status = 'running' FOR UPDATE",
                (job.id, self.worker_id),
            ).fetchone()
            if row is None:
                raise JobLost("job taken over")
            if row[0]:
                raise JobCancelled("cancelled")
            refused = gate is not None and not gate["passed"]
            activate = False if refused else params.activate
            version, activated = versions.activate_as_asked(conn, version, activate, params.collection)
            result: dict[str, Any] = {"counts": counts, "timings": timings, "index_version": version.name}
            if gate is not None:
                result["activation_gate"] = gate
            conn.execute(
                """UPDATE jobs SET status = 'succeeded', activated = %s, result = %s, error = coalesce(%s, error),
                       finished_at = now(), updated_at = now() WHERE id = %s""",
                (activated, Jsonb(result), f"not activated: {gate['reason']}" if refused and gate else None, job.id),
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
                drop_unfinished_version(
                    conn,
                    Job(
                        **{
                            **current.__dict__,
                            "created_version": state.created_version,
                            "index_version_id": state.version_id,
                        }
                    ),
                )
