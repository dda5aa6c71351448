"""Reindex jobs on the real PostgreSQL with the real embedder: queue, worker, cancel, crash recovery, sources."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from core.access import DEFAULT_COLLECTION
from core.db import Database
from core.embedding import Embedder
from core.errors import SourceError
from core.settings import Settings
from ingest import jobs, sources, versions
from ingest.worker import Worker
from tests.conftest import REPO
from tests.utils.corpus import corpus_document_count, write_corpus
from tests.utils.jobs import job_settings, write_many


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    """The allowed root, holding the small known corpus."""
    return write_corpus(tmp_path / "docs")


@pytest.fixture
def settings(database: Database, tmp_path: Path, docs: Path) -> Settings:
    return job_settings(database, tmp_path, [docs])


def run(conn: psycopg.Connection, settings: Settings, database: Database, **request: object) -> jobs.Job:
    """Queue one reindex job and run it with an in-process worker."""
    job = jobs.enqueue_reindex(conn, settings, **request)  # type: ignore[arg-type]
    done = Worker(database, settings, batch_documents=3).run_once()
    assert done is not None and done.id == job.id
    return done


def chunk_consistency(conn: psycopg.Connection, version_id: int) -> tuple[int, int, int]:
    """(documents, chunks in the table, chunks the version's documents claim): equal counts mean no duplicates."""
    version = versions.get_index_version(conn, version_id)
    rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(version.table)).fetchone()
    docs, claimed = conn.execute(
        "SELECT count(*), coalesce(sum(chunk_count), 0) FROM index_documents WHERE index_version_id = %s",
        (version_id,),
    ).fetchone()  # type: ignore[misc]
    assert rows is not None
    return int(docs), int(rows[0]), int(claimed)


def test_incremental_then_full_builds(
    conn: psycopg.Connection, database: Database, settings: Settings, docs: Path, embedder: Embedder
) -> None:
    first = run(conn, settings, database, source=str(docs))
    assert first.status == "succeeded", first.error
    assert first.result and first.result["counts"]["added"] == corpus_document_count()
    assert first.result["counts"]["chunks_truncated"] == 0
    assert first.activated and first.docs_done == first.docs_total == corpus_document_count()
    live = versions.active_index_version(conn)
    assert live is not None and live.id == first.index_version_id

    embedded_before = embedder.texts_embedded
    again = run(conn, settings, database)  # no source: the collection's earlier source
    assert again.status == "succeeded" and again.result
    assert again.result["counts"]["unchanged"] == corpus_document_count()
    assert embedder.texts_embedded == embedded_before and not again.activated

    rebuild = run(conn, settings, database, mode="full")  # same settings: a fresh version, left inactive
    assert rebuild.status == "succeeded" and rebuild.index_version_id not in (None, live.id)
    assert not rebuild.activated and versions.active_index_version(conn) == live
    assert rebuild.index_version_id is not None
    assert versions.get_index_version(conn, rebuild.index_version_id).status == "ready"

    small = run(conn, settings, database, mode="full", config="small", activate=True)
    assert small.status == "succeeded" and small.activated
    active = versions.active_index_version(conn, DEFAULT_COLLECTION)  # the job's collection switched...
    assert active is not None and active.id == small.index_version_id and active.settings["chunk_size"] == 24
    assert versions.active_index_version(conn) == live  # ...and the default, for every other one, stayed
    n_docs, n_chunks, claimed = chunk_consistency(conn, active.id)
    assert n_docs == corpus_document_count() and n_chunks == claimed > chunk_consistency(conn, live.id)[1]


def test_cancel_queued_and_running(
    conn: psycopg.Connection, database: Database, settings: Settings, docs: Path
) -> None:
    queued = jobs.enqueue_reindex(conn, settings, source=str(docs))
    cancelled = jobs.cancel_job(conn, queued.id)
    assert cancelled is not None and cancelled.status == "cancelled"
    worker = Worker(database, settings)
    assert worker.run_once() is None  # nothing left to run

    job = jobs.enqueue_reindex(conn, settings, source=str(docs), mode="full", activate=True)
    claimed = jobs.claim_job(conn, worker.worker_id)
    assert claimed is not None and claimed.id == job.id
    jobs.cancel_job(conn, job.id)  # the worker sees it before its first batch
    worker.run_job(claimed)
    ended = jobs.get_job(conn, job.id)
    assert ended is not None and ended.status == "cancelled" and not ended.activated
    assert versions.active_index_version(conn) is None
    assert versions.list_index_versions(conn) == []  # the unfinished fresh version was dropped


def test_two_workers_racing_claim_each_job_once(database: Database, settings: Settings, docs: Path) -> None:
    with database.connect() as conn:
        for _ in range(3):
            jobs.enqueue_reindex(conn, settings, source=str(docs))
    claims: dict[str, list[int]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)

    def claimer(name: str) -> None:
        with database.connect() as own:
            barrier.wait()
            while (job := jobs.claim_job(own, name)) is not None:
                claims[name].append(job.id)

    threads = [threading.Thread(target=claimer, args=(name,)) for name in claims]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = claims["a"] + claims["b"]
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 3


@pytest.mark.parametrize(("attempts", "status"), [(1, "queued"), (3, "failed")])
def test_stale_job_is_resumed_or_failed_with_its_reason(
    conn: psycopg.Connection, settings: Settings, docs: Path, attempts: int, status: str
) -> None:
    job = jobs.enqueue_reindex(conn, settings, source=str(docs))
    conn.execute(
        """UPDATE jobs SET status = 'running', worker_id = 'gone', attempts = %s,
               heartbeat_at = now() - interval '1 minute' WHERE id = %s""",
        (attempts, job.id),
    )
    (recovered,) = jobs.recover_stale_jobs(conn, stale_after_s=30, max_attempts=3)
    assert recovered.status == status
    assert recovered.error is not None and "worker gone stopped heartbeating" in recovered.error


def test_killed_worker_process_resumes_without_partial_activation_or_duplicates(
    conn: psycopg.Connection, database: Database, tmp_path: Path
) -> None:
    """A real `ragops worker` process is SIGKILLed mid-build; another worker resumes the job."""
    root = tmp_path / "big"
    write_many(root / "corpus.jsonl", 300)
    settings = job_settings(database, tmp_path, [root], job_stale_after_s=1.0)
    job = jobs.enqueue_reindex(conn, settings, source=str(root), mode="full", activate=True)
    env = {
        **os.environ,
        "RAGOPS_DATABASE_URL": database.url,
        "RAGOPS_CONFIGS_DIR": str(settings.configs_dir),
        "RAGOPS_DATA_DIR": str(settings.data_dir),
        "RAGOPS_SOURCE_ROOTS": f'["{root}"]',
    }
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--batch-documents", "10"], env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 180
        while True:
            current = jobs.get_job(conn, job.id)
            assert current is not None and current.status in ("queued", "running"), current
            if current.docs_done >= 20:
                break
            assert time.monotonic() < deadline, "the worker made no progress"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = jobs.get_job(conn, job.id)
    assert killed is not None and killed.status == "running" and killed.index_version_id is not None
    half = versions.get_index_version(conn, killed.index_version_id)
    assert half.status == "building" and versions.active_index_version(conn) is None  # nothing half-built is live
    docs_half, chunks_half, claimed_half = chunk_consistency(conn, half.id)
    assert 0 < docs_half < 300 and chunks_half == claimed_half  # whole batches only

    time.sleep(1.5)  # let the heartbeat go stale
    resumed = Worker(database, settings, batch_documents=50).run_once()
    assert resumed is not None and resumed.id == job.id
    assert resumed.status == "succeeded" and resumed.attempts == 2 and resumed.activated
    assert resumed.error is not None and "stopped heartbeating" in resumed.error
    assert resumed.result and resumed.result["counts"]["unchanged"] == docs_half  # the finished batches were kept
    assert resumed.index_version_id == half.id
    assert chunk_consistency(conn, half.id) == (300, 300, 300)
    live = versions.active_index_version(conn)
    assert live is not None and live.id == half.id and live.status == "ready"


def test_worker_and_jobs_watch_commands(database: Database, settings: Settings, docs: Path) -> None:
    with database.connect() as conn:
        cancelled = jobs.cancel_job(conn, jobs.enqueue_reindex(conn, settings, source=str(docs)).id)
        job = jobs.enqueue_reindex(conn, settings, source=str(docs))
    assert cancelled is not None
    env = {
        **os.environ,
        "RAGOPS_DATABASE_URL": database.url,
        "RAGOPS_CONFIGS_DIR": str(settings.configs_dir),
        "RAGOPS_SOURCE_ROOTS": f'["{docs}"]',
        "COLUMNS": "200",
    }

    def ragops(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "app.cli", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False)

    assert ragops("worker", "--once").returncode == 0
    watched = ragops("jobs", "watch", str(job.id))
    assert watched.returncode == 0 and f"job {job.id} succeeded" in watched.stdout, watched.stderr
    failed = ragops("jobs", "watch", str(cancelled.id))
    assert failed.returncode == 1 and f"job {cancelled.id} cancelled" in failed.stdout


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root, out: "../outside", "must not contain '..'"),
        (lambda root, out: str(out), "outside the allowed roots"),
        (lambda root, out: "/etc", "outside the allowed roots"),
        (lambda root, out: "missing-folder", "does not exist"),
        (lambda root, out: (root / "escape").symlink_to(out) or "escape", "outside the allowed roots"),
        (
            lambda root, out: (
                (root / "sub").mkdir() or (root / "sub" / "leak.md").symlink_to(out / "secret.md") or "sub"
            ),
            "contains a symlink leading outside the allowed roots: leak.md",
        ),
    ],
    ids=["dotdot", "absolute-outside", "etc", "missing", "symlinked-folder", "symlinked-file-inside"],
)
def test_sources_outside_the_allowed_roots_are_refused(tmp_path: Path, make: object, message: str) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.md").write_text("# secret\n\nnot for the index\n")
    with pytest.raises(SourceError, match=message):
        sources.resolve_source(make(root, outside), [root])  # type: ignore[operator]


def test_sources_inside_the_roots_resolve(tmp_path: Path) -> None:
    root = write_corpus(tmp_path / "root")
    (root / "inner-link").symlink_to(root / "guide")  # a link that stays inside is fine
    assert sources.resolve_source("guide", [root]) == (root / "guide").resolve()
    assert sources.resolve_source(str(root / "kb.jsonl"), [root]) == (root / "kb.jsonl").resolve()
    assert sources.resolve_source("inner-link", [root]) == (root / "guide").resolve()
