"""Online evaluation end to end: sampled answers queued after the response, measured by the worker.

Real PostgreSQL, real retrieval, real Presidio: answers are requested over the API, their queue rows
are checked for what they keep (no question, only the PII-filtered answer), and the worker's claim is
interrupted by killing its database session mid-batch (what a crash or restart does): nothing is
lost and nothing is counted twice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from app.keys import create_key
from app.main import create_app
from app.online_eval import OnlineEvaluator, online_evaluator
from core.catalog import Catalog
from core.db import Database
from tests.app.conftest import authed, make_settings
from tests.conftest import REPO
from tests.utils.server import wait_for

MARKER = "zqxonlinemarker93"
EMAIL = "ines.varga@example.org"
QUESTIONS = [
    f"My email is {EMAIL}. How many weeks of paid parental leave do I get? {MARKER}",
    f"Which days do hybrid employees have to be in the office? {MARKER}",
    f"How long do we retain API request logs? {MARKER}",
    f"When is the yearly production change freeze? {MARKER}",
]


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """default with every answer sampled; ``numbers``: answers not PII-filtered; ``unsampled``: rate 0."""
    folder = tmp_path_factory.mktemp("online-configs")
    shutil.copy(REPO / "configs" / "pricing.yaml", folder / "pricing.yaml")
    default = (REPO / "configs" / "default.yaml").read_text()
    assert default.count("\n  sample_rate: 0.1\n") == 1
    everything = default.replace("\n  sample_rate: 0.1\n", "\n  sample_rate: 1.0\n")
    (folder / "default.yaml").write_text(everything)
    assert "    answer: true" in everything
    (folder / "numbers.yaml").write_text(everything.replace("    answer: true", "    answer: false"))
    (folder / "unsampled.yaml").write_text(default.replace("\n  sample_rate: 0.1\n", "\n  sample_rate: 0.0\n"))
    return folder


@pytest.fixture(scope="module")
def keys(private_database: Database) -> dict[str, str]:
    with private_database.connect() as conn:
        return {
            "admin": create_key(conn, "all", ["query", "admin"], collections=["*"], configs=["*"])[1],
            "other": create_key(conn, "other", ["query", "admin"], collections=["other"], configs=["*"])[1],
        }


def queue(database: Database) -> list[dict[str, Any]]:
    with database.connect() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute("SELECT * FROM online_eval_queue ORDER BY id").fetchall()


def quality_rows(database: Database) -> list[dict[str, Any]]:
    with database.connect() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute("SELECT * FROM online_quality ORDER BY config_version").fetchall()


@pytest.fixture(scope="module")
def answered(
    private_database: Database, configs: Path, keys: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    """Answers of each configuration over the API (no worker runs): their queue rows."""
    settings = make_settings(private_database, tmp_path_factory.mktemp("online"), configs_dir=configs, vllm_url=None)
    with authed(TestClient(create_app(settings)), keys["admin"]) as client:
        for question in QUESTIONS:
            assert client.post("/v1/query", json={"question": question}).status_code == 200
        streamed = client.post("/v1/query", json={"question": QUESTIONS[1], "stream": True})
        assert streamed.status_code == 200 and "event: done" in streamed.text
        for config in ("numbers", "unsampled"):
            assert client.post("/v1/query", json={"question": QUESTIONS[2], "config": config}).status_code == 200
        wait_for(lambda: len(queue(private_database)) == len(QUESTIONS) + 2)  # written after each response
    return queue(private_database)


def test_sampled_answers_are_queued_without_the_question(answered: list[dict[str, Any]]) -> None:
    by_config: dict[str, int] = {}
    for row in answered:
        by_config[row["config_version"].split("@")[0]] = by_config.get(row["config_version"].split("@")[0], 0) + 1
        assert row["collection"] == "default" and row["index_version"].startswith("v")
        assert row["chunk_ids"] and len(row["scores"]) == len(row["chunk_ids"])
        assert row["latency_ms"] > 0 and not row["refused"]
    assert by_config == {"default": len(QUESTIONS) + 1, "numbers": 1}  # unsampled: rate 0, nothing queued
    everything = repr(answered).lower()
    assert MARKER not in everything and EMAIL not in everything and "ines" not in everything
    defaults = [r for r in answered if r["config_version"].startswith("default@")]
    assert all(r["answer"] and "[1]" in r["answer"] for r in defaults)  # the PII-filtered answer, with citations
    assert defaults[0]["pii_entities"] >= 1  # the e-mail address was filtered
    numbers = next(r for r in answered if r["config_version"].startswith("numbers@"))
    assert numbers["answer"] is None  # answers not filtered: only numbers are kept


def test_a_killed_worker_loses_nothing_and_counts_nothing_twice(
    private_database: Database, configs: Path, answered: list[dict[str, Any]], pg_server: str
) -> None:
    evaluator = online_evaluator(Catalog.load(configs, REPO / "prompts", "default"))
    claimed, release = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    class Stalling(OnlineEvaluator):
        """Claims its batch, then hangs mid-evaluation until its session is killed."""

        def measure(self, conn: psycopg.Connection, row: Any) -> Any:
            claimed.set()
            release.wait(30)
            return super().measure(conn, row)

    doomed = private_database.connect()
    stalling = Stalling(evaluator.settings_of, batch=3)

    def run() -> None:
        try:
            stalling.run_once(doomed)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert claimed.wait(30)
    total = len(answered)
    with private_database.connect() as conn:
        assert evaluator.run_once(conn) == total - 3  # the rest; never the rows another worker holds
        assert evaluator.run_once(conn) == 0
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (doomed.info.backend_pid,))
        release.set()
        thread.join(30)
        assert failures and isinstance(failures[0], psycopg.OperationalError)
        assert len(queue(private_database)) == 3  # back in the queue, not lost
        assert evaluator.run_once(conn) == 3
        assert evaluator.run_once(conn) == 0
    rows = quality_rows(private_database)
    assert sum(r["answers"] for r in rows) == total  # each answer counted once
    default = next(r for r in rows if r["config_version"].startswith("default@"))
    assert default["support_n"] == len(QUESTIONS) + 1 and default["support_sum"] / default["support_n"] > 0.8
    assert default["top_score_n"] == len(QUESTIONS) + 1 and default["refused"] == 0
    numbers = next(r for r in rows if r["config_version"].startswith("numbers@"))
    assert numbers["answers"] == 1 and numbers["support_n"] == 0 and numbers["top_score_n"] == 1
    assert MARKER not in repr(rows)


@pytest.fixture(scope="module")
def restarted(
    private_database: Database, configs: Path, keys: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """The app again, with its in-process worker: what was queued before the restart is evaluated."""
    settings = make_settings(
        private_database, tmp_path_factory.mktemp("again"), configs_dir=configs, vllm_url=None, worker_in_process=True
    )
    with authed(TestClient(create_app(settings)), keys["admin"]) as client:
        yield client


def test_queued_evaluations_survive_a_restart_and_the_worker_takes_them(
    private_database: Database, restarted: TestClient
) -> None:
    before = sum(r["answers"] for r in quality_rows(private_database))
    assert restarted.post("/v1/query", json={"question": QUESTIONS[3]}).status_code == 200
    wait_for(lambda: sum(r["answers"] for r in quality_rows(private_database)) == before + 1, timeout_s=60)
    assert queue(private_database) == []


def test_quality_route_figures_and_tenancy(restarted: TestClient, keys: dict[str, str]) -> None:
    body = restarted.get("/v1/admin/quality", params={"collection": "default", "since": "7d"}).json()
    default = next(r for r in body["rows"] if r["config_version"].startswith("default@"))
    assert default["answers"] >= len(QUESTIONS) + 1 and default["support"] > 0.8 and default["top_score"] > 0
    assert default["refusal_rate"] == 0 and default["citations_mean"] >= 1 and default["latency_ms_mean"] > 0
    other = {"Authorization": f"Bearer {keys['other']}"}
    denied = restarted.get("/v1/admin/quality", params={"collection": "default"}, headers=other)
    assert denied.status_code == 403 and "may not use the collection 'default'" in denied.json()["error"]["message"]
    assert restarted.get("/v1/admin/quality", headers=other).json()["rows"] == []  # only its own collections
    unknown = restarted.get("/v1/admin/quality", params={"collection": "nope"})
    assert unknown.status_code == 404
    bad = restarted.get("/v1/admin/quality", params={"since": "last week"})
    assert bad.status_code == 422 and "since" in bad.json()["error"]["message"]


def test_gauges_show_todays_figures(restarted: TestClient) -> None:
    text = restarted.get("/metrics").text
    assert 'ragops_online_quality{collection="default"' in text and 'measure="support"' in text
    assert "ragops_online_evaluated_answers{" in text and "ragops_online_eval_queued 0.0" in text


def test_cli_report(private_database: Database, restarted: TestClient, tmp_path: Path) -> None:
    env = {**os.environ, "RAGOPS_DATABASE_URL": private_database.url, "COLUMNS": "250"}
    done = subprocess.run([sys.executable, "-m", "app.cli", "quality", "report", "--collection", "default"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "default@" in done.stdout and "support" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "app.cli", "quality", "report", "--since", "soon"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False)  # fmt: skip
    assert bad.returncode != 0 and "since must be a date" in bad.stdout + bad.stderr
