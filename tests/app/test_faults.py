"""Faults of the service's dependencies, injected into the real things.

PostgreSQL: an embedded server of its own, stopped and started on its data folder while queries run.
vLLM: a real tiny CPU vLLM of its own, frozen with SIGSTOP (a hung engine) and killed mid-stream.
The embedding model: a configuration naming a model folder that does not exist.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.conninfo import make_conninfo

from app.keys import create_key
from app.main import create_app
from core.access import DEFAULT_COLLECTION
from core.config import load_config
from core.db import Database, EmbeddedPostgres
from core.embedding import Embedder
from core.errors import EmbeddingError, RagopsError
from core.migrations import migrate
from ingest import jobs, versions
from ingest.pipeline import IngestPipeline
from ingest.worker import Worker
from tests.app.conftest import authed, make_settings
from tests.conftest import REPO
from tests.ingest.test_jobs import chunk_consistency
from tests.utils.jobs import job_settings, write_many
from tests.utils.sse import parse_sse
from tests.utils.tiny_llama import write_tiny_llama
from tests.utils.vllm_server import VllmServer, require_vllm_python

QUESTION = {"question": "How many PTO days do new employees get?"}
JOB_DOCS = 1200


def assert_unavailable(response: object) -> None:
    """A clean 503: the error shape and a Retry-After."""
    assert response.status_code == 503, response.text  # type: ignore[attr-defined]
    assert response.headers["Retry-After"].isdigit()  # type: ignore[attr-defined]
    error = response.json()["error"]  # type: ignore[attr-defined]
    assert error["code"] == 503 and error["message"]


# ---------------------------------------------------------------- PostgreSQL restarted


@pytest.fixture
def own_postgres(tmp_path: Path, embedder: Embedder) -> Iterator[tuple[EmbeddedPostgres, Database, str]]:
    """A PostgreSQL only this test stops and starts, with two documents and a key."""
    server = EmbeddedPostgres(tmp_path / "pgdata")
    uri = server.start()
    with psycopg.connect(uri, autocommit=True) as admin:
        admin.execute("CREATE DATABASE faults")
    database = Database(url=make_conninfo(uri, dbname="faults"))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pto.md").write_text("# PTO\n\nNew employees get 20 PTO days per year.\n")
    (docs / "office.md").write_text("# Office\n\nOffice days are Tuesday and Thursday.\n")
    with database.connect() as conn:
        migrate(conn)
        IngestPipeline(conn, load_config("default", REPO / "configs"), embedder).run(docs)
        key = create_key(conn, "faults", ["query"], collections=["*"], configs=["*"])[1]
    try:
        yield server, database, key
    finally:
        server.stop()


def test_postgres_restart_is_503_then_recovers_without_a_restart(
    own_postgres: tuple[EmbeddedPostgres, Database, str], tmp_path: Path
) -> None:
    server, database, key = own_postgres
    settings = make_settings(database, tmp_path / "app", vllm_url=None, db_pool_timeout_s=2.0, readiness_cache_s=0)
    statuses: list[int] = []
    stop = threading.Event()
    with authed(TestClient(create_app(settings)), key) as client:
        assert client.post("/v1/query", json=QUESTION).status_code == 200

        def keep_asking() -> None:  # queries in flight while the server goes away and comes back
            while not stop.is_set():
                statuses.append(client.post("/v1/query", json=QUESTION).status_code)

        worker = threading.Thread(target=keep_asking)
        worker.start()
        try:
            time.sleep(0.5)
            server.stop()
            started = time.monotonic()
            down = client.post("/v1/query", json=QUESTION)
            assert_unavailable(down)
            assert time.monotonic() - started < 10  # fails fast, does not hang on the pool
            assert client.get("/readyz").status_code == 503
            restarted = EmbeddedPostgres(server.pgdata)
            restarted.start()
            server._server = restarted._server  # the fixture stops whichever runs now
            deadline = time.monotonic() + 20
            while (answer := client.post("/v1/query", json=QUESTION)).status_code != 200:
                assert time.monotonic() < deadline, answer.text
                time.sleep(0.2)
            assert "20 PTO days" in answer.json()["answer"]
            assert client.get("/readyz").status_code == 200
        finally:
            stop.set()
            worker.join(30)
    assert set(statuses) <= {200, 503}, statuses  # nothing but answers and clean refusals
    assert 503 in statuses or len(statuses) < 3
    with database.connect() as conn:  # requests after the restart are in the ledger again
        row = conn.execute("SELECT count(*) FROM ledger WHERE status = 200").fetchone()
    assert row and row[0] >= 2


def restart(server: EmbeddedPostgres, down_s: float, database: Database) -> None:
    """Stop the server, keep it down ``down_s``, start it again on the same data folder.

    ``down_s`` 0: a restart faster than the client notices, i.e. every connection is cut and the server
    answers again at once (what a quick restart or a failover looks like to the worker).
    """
    if down_s == 0:
        with database.connect() as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()")
        return
    server.stop()
    time.sleep(down_s)
    restarted = EmbeddedPostgres(server.pgdata)
    restarted.start()
    server._server = restarted._server  # the fixture stops whichever runs now


def job_when_back(database: Database, job_id: int, timeout_s: float = 240) -> jobs.Job:
    """The job once finished, asking through connection failures while the server comes back."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with database.connect() as conn:
                job = jobs.get_job(conn, job_id)
            if job is not None and job.finished:
                return job
        except (psycopg.OperationalError, RagopsError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s} s")


@pytest.mark.parametrize("down_s", [0, 0.5, 4.0], ids=["instant", "blip", "outage"])
def test_postgres_restart_during_a_full_reindex_job_resumes_it_without_loss_or_duplicates(
    own_postgres: tuple[EmbeddedPostgres, Database, str], tmp_path: Path, down_s: float
) -> None:
    """The worker's connections die mid-build; the job is resumed (same version, finished batches kept)."""
    server, database, _ = own_postgres
    # Enough documents that the build is still running when the server goes away, even on a fast machine.
    root = write_many(tmp_path / "big" / "corpus.jsonl", JOB_DOCS).parent
    settings = job_settings(database, tmp_path, [root], job_stale_after_s=2.0)
    with database.connect() as conn:
        job = jobs.enqueue_reindex(conn, settings, source=str(root), mode="full", activate=True)
    worker = Worker(database, settings, batch_documents=10, poll_s=0.2)
    worker.start()
    try:
        deadline = time.monotonic() + 120
        with database.connect() as conn:
            while (current := jobs.get_job(conn, job.id)) is not None and current.docs_done < 30:
                assert current.status in ("queued", "running") and time.monotonic() < deadline, current
                time.sleep(0.05)
        assert current is not None and current.docs_done < JOB_DOCS, "the build ended before the restart"
        restart(server, down_s, database)
        ended = job_when_back(database, job.id)
    finally:
        worker.stop()
    assert ended.status == "succeeded", ended.error
    assert ended.activated and ended.attempts >= 2 and ended.error  # it says what happened
    with database.connect() as conn:
        # Nothing lost or doubled.
        assert chunk_consistency(conn, ended.index_version_id or 0) == (JOB_DOCS, JOB_DOCS, JOB_DOCS)
        live = versions.active_index_version(conn, DEFAULT_COLLECTION)  # the job switched its collection
        assert live is not None and live.id == ended.index_version_id and live.status == "ready"
        all_versions = versions.list_index_versions(conn)
    assert len(all_versions) == 2  # the first build and this one: no orphan from the interrupted run


# ---------------------------------------------------------------- embedding model missing


def bad_model_configs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "default.yaml").write_text("index:\n  embedding:\n    model: /no/such/model\n")
    shutil.copy(REPO / "configs" / "pricing.yaml", folder / "pricing.yaml")
    return folder


def test_app_refuses_to_start_without_its_embedding_model(served_database: Database, tmp_path: Path) -> None:
    configs = bad_model_configs(tmp_path / "configs")
    app = create_app(make_settings(served_database, tmp_path, configs_dir=configs, vllm_url=None))
    with pytest.raises(EmbeddingError, match="/no/such/model"), TestClient(app):
        pass


def test_serve_exits_with_a_clear_message_without_its_embedding_model(tmp_path: Path) -> None:
    configs = bad_model_configs(tmp_path / "configs")
    env = {**os.environ, "RAGOPS_CONFIGS_DIR": str(configs), "RAGOPS_DATA_DIR": str(tmp_path / "data")}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", "1"], capture_output=True, text=True, env=env,
        cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "error: embedding model '/no/such/model'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "pgdata").exists()  # refused before starting anything


# ---------------------------------------------------------------- vLLM hung, vLLM killed


@pytest.fixture(scope="module")
def fault_vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """A vLLM of this module's own: the tests freeze and kill it."""
    python = require_vllm_python()
    model_dir = write_tiny_llama(tmp_path_factory.mktemp("fault-llama"))
    server = VllmServer(model_dir, python=python, served_model_name="ragops-llm", max_model_len=2048)
    server.start()
    try:
        yield server
    finally:
        if server.is_running() and server.pid:
            os.killpg(server.pid, signal.SIGCONT)  # a failed hang test must not leave it frozen
        server.stop()


@pytest.fixture(scope="module")
def vllm_fault_client(
    fault_vllm: VllmServer, served_database: Database, api_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    configs = tmp_path_factory.mktemp("fault-configs")
    # Long answers (the random model rarely stops early), so there is a stream to cut. PII filtering
    # is off: it releases text in batches, so the tiny model could finish before the third delta
    # reached the client and there would be nothing left to cut (tests/app/test_pii.py covers it).
    (configs / "default.yaml").write_text(
        "generation:\n  backend: vllm\n  model: ragops-llm\n  max_tokens: 1500\n  context_tokens: 200\n"
        "pii:\n  enabled: false\n"
    )
    shutil.copy(REPO / "configs" / "pricing.yaml", configs / "pricing.yaml")
    settings = make_settings(
        served_database, tmp_path_factory.mktemp("fault-app"), configs_dir=configs, vllm_url=fault_vllm.base_url,
        vllm_read_timeout_s=2.0, readiness_timeout_s=2.0, readiness_cache_s=0,
    )  # fmt: skip
    with authed(TestClient(create_app(settings)), api_key) as client:
        yield client


def test_hung_vllm_times_out_as_503_and_readiness_turns_false(
    fault_vllm: VllmServer, vllm_fault_client: TestClient
) -> None:
    assert vllm_fault_client.get("/readyz").status_code == 200
    assert fault_vllm.pid is not None
    os.killpg(fault_vllm.pid, signal.SIGSTOP)  # the process is there, the port accepts, nothing answers
    try:
        started = time.monotonic()
        assert_unavailable(vllm_fault_client.post("/v1/query", json=QUESTION))
        assert time.monotonic() - started < 10
        ready = vllm_fault_client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["generator"] == "failing"
    finally:
        os.killpg(fault_vllm.pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while vllm_fault_client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "readiness did not come back after the engine resumed"
        time.sleep(0.5)


def test_vllm_killed_mid_stream_ends_with_an_error_event_and_ledgers_partial_tokens(
    fault_vllm: VllmServer, vllm_fault_client: TestClient, served_database: Database
) -> None:
    body = {"question": "Describe the deployment process in detail.", "stream": True}
    lines: list[str] = []
    with vllm_fault_client.stream("POST", "/v1/query", json=body) as response:
        assert response.status_code == 200
        request_id = response.headers["X-Request-Id"]
        deltas = 0
        for line in response.iter_lines():
            lines.append(line)
            if line.startswith("event: delta"):
                deltas += 1
                if deltas == 1:  # at once: the random model may end its answer (EOS) a few tokens later
                    fault_vllm.kill()  # mid-answer
    frames = parse_sse("\n".join(lines) + "\n\n")
    events = [event for event, _ in frames]
    assert events[0] == "citations" and "delta" in events
    assert events[-1] == "error" and "done" not in events, events[-5:]
    with served_database.connect() as conn:
        row = conn.execute(
            "SELECT status, error_kind, completion_tokens FROM ledger WHERE request_id = %s", [request_id]
        ).fetchone()
    assert row is not None
    status, error_kind, completion_tokens = row
    assert status >= 500 and error_kind
    assert completion_tokens >= 1  # the tokens that were produced and sent are accounted
