"""Drift monitoring end to end: recording without text, windows judged once each, the admin route, gauges, report.

Real PostgreSQL, embeddings and Presidio (the samples' default configuration with its drift section on).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
import yaml
from fastapi.testclient import TestClient

from app.drift_report import render_html
from app.main import create_app
from core.config import DriftSettings
from core.db import Database
from core.drift import monitor, store
from core.drift.measures import AnswerMeasures, LedgerMeasures
from core.drift.signals import SIGNALS, judge
from ingest.drift_corpus import IndexCorpus
from ingest.worker import Worker
from tests.app.conftest import REPO, authed, make_settings
from tests.utils.accounts import new_key
from tests.utils.ledger import ledger_row, table_dump

WINDOW_S = 3600
DRIFT = {"enabled": True, "window": "1h", "min_questions": 20, "max_questions": 200, "consecutive": 2}


@pytest.fixture(scope="module")
def drift_configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's default configuration with drift recording on and small windows."""
    folder = tmp_path_factory.mktemp("drift-configs")
    data = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    data["drift"] = DRIFT
    (folder / "default.yaml").write_text(yaml.safe_dump(data))
    shutil.copy(REPO / "configs" / "pricing.yaml", folder / "pricing.yaml")
    return folder


@pytest.fixture(scope="module")
def drift_client(
    private_database: Database, drift_configs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    settings = make_settings(
        private_database, tmp_path_factory.mktemp("drift"), configs_dir=drift_configs, vllm_url=None
    )
    key = new_key(private_database, ["query", "admin"])
    with authed(TestClient(create_app(settings)), key) as client:
        yield client


@pytest.fixture
def clean(private_database: Database) -> Iterator[psycopg.Connection]:
    """A connection to the module's database with the drift tables emptied before the test."""
    with private_database.connect() as conn:
        conn.execute("TRUNCATE drift_observations, drift_windows, drift_references CASCADE")
        yield conn


def test_no_drift_table_holds_question_text(drift_client: TestClient, private_database: Database) -> None:
    marker = f"zq{uuid.uuid4().hex[:12]}x"
    response = drift_client.post("/v1/query", json={"question": f"How many PTO days do I get {marker}?"})
    assert response.status_code == 200, response.text
    request_id = response.json()["request_id"]
    with private_database.connect() as conn:
        row = conn.execute(
            "SELECT collection, config, vector_dims(embedding), top_score, hits FROM drift_observations "
            "WHERE request_id = %s",
            (request_id,),
        ).fetchone()
    assert row is not None and row[:3] == ("default", "default", 384) and row[3] > 0 and row[4] > 0
    assert ledger_row(private_database, request_id, wait_s=5) is not None
    assert marker not in table_dump(private_database, skip_index=True)


def test_answers_are_not_recorded_where_drift_is_off(client: TestClient, served_database: Database) -> None:
    response = client.post("/v1/query", json={"question": "How many PTO days do new employees get?"})
    assert response.status_code == 200
    with served_database.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM drift_observations WHERE request_id = %s", (response.json()["request_id"],)
        ).fetchone()
    assert row == (0,)


def observe(
    conn: psycopg.Connection, vectors: np.ndarray, at: datetime, scores: tuple[float, ...] = (0.8, 0.6)
) -> None:
    """Recorded answers at ``at`` (as the answering path would leave them, with their time set)."""
    for v in vectors:
        request_id = f"t-{uuid.uuid4().hex}"
        store.record_observation(conn, store.Observation(request_id, "default", "default", v, list(scores)))
        conn.execute("UPDATE drift_observations SET created_at = %s WHERE request_id = %s", (at, request_id))


def unit(rng: np.random.Generator, n: int, center: np.ndarray) -> np.ndarray:
    v = center + 0.35 * rng.normal(size=(n, len(center)))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def window_counts(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT window_start, count(*), count(DISTINCT signal) FROM drift_windows GROUP BY 1 ORDER BY 1"
    ).fetchall()


def test_windows_are_judged_once_even_across_a_crash_and_a_restart(
    clean: psycopg.Connection, drift_configs: Path
) -> None:
    conn = clean
    rng = np.random.default_rng(0)
    home, away = rng.normal(size=32), rng.normal(size=32)
    store.create_reference(conn, "default", "default", "questions", unit(rng, 80, home),
                           {"top_score": rng.normal(0.8, 0.05, 80)})  # fmt: skip
    base = monitor.window_floor(datetime.now(UTC), WINDOW_S) - timedelta(hours=5)
    observe(conn, unit(rng, 30, home), base + timedelta(minutes=5))
    observe(conn, unit(rng, 5, home), base + timedelta(hours=1, minutes=5))  # too few
    observe(conn, unit(rng, 30, away), base + timedelta(hours=2, minutes=5))
    observe(conn, unit(rng, 30, away), base + timedelta(hours=3, minutes=5))
    now = base + timedelta(hours=4, minutes=2)  # the window of hour 3 ended, its grace too

    class Crashing(AnswerMeasures):
        signals = ("answer_tokens",)

        def window(self, *args: Any) -> dict[str, np.ndarray]:
            raise RuntimeError("worker killed mid-window")

    settings = DriftSettings(**DRIFT)
    with conn.transaction():
        assert monitor.judge_window(conn, "default", "default", settings, base, LedgerMeasures())
    with pytest.raises(RuntimeError):  # the second window dies half-way: nothing of it may stay
        monitor.judge_due(conn, "default", "default", settings, now=now, measures=Crashing())
    assert [r[0] for r in window_counts(conn)] == [base]

    worker = Worker(Database(url=conn.info.dsn), make_settings(Database(url=conn.info.dsn), Path("/tmp"),
                                                              configs_dir=drift_configs))  # fmt: skip
    report = monitor.run_due(conn, drift_configs, now=now)
    assert report.windows == 3
    again = monitor.run_due(conn, drift_configs, now=now + timedelta(minutes=30))  # a restarted worker
    assert again.windows == 0
    counts = window_counts(conn)
    assert [r[0] for r in counts] == [base + timedelta(hours=h) for h in range(4)]
    assert len({r[1] for r in counts}) == 1 and counts[0][1] == counts[0][2]  # each signal once per window
    worker.run_chores(conn)  # the worker's own schedule (the chore is due at start), at the real time: the hour since
    later = window_counts(conn)
    assert later[:4] == counts and [r[0] for r in later[4:]] == [base + timedelta(hours=4)]
    rows = {(r.window_start, r.signal): r for r in store.read_windows(conn, collections=None)}
    question = [rows[(base + timedelta(hours=h), "question_embedding")] for h in range(4)]
    assert [q.state for q in question] == ["ok", "not_enough_data", "drift", "drift"]
    assert [q.alarm for q in question] == [False, False, False, True]  # two in a row; the gap broke the first run
    assert question[1].p_value is None and question[1].n == 5
    assert rows[(base, "score_margin")].state == "no_reference"  # the reference has no margins


def test_pin_window_and_content_gaps(clean: psycopg.Connection, drift_configs: Path) -> None:
    from app.drift import content_gaps, pin_window
    from core.config import load_config

    rng = np.random.default_rng(1)
    now = datetime.now(UTC)
    a, b = rng.normal(size=16), rng.normal(size=16)
    observe(clean, unit(rng, 30, a), now - timedelta(hours=2), scores=(0.2, 0.1))
    observe(clean, unit(rng, 12, b), now - timedelta(hours=2), scores=(0.1,))
    observe(clean, unit(rng, 10, b), now - timedelta(hours=1), scores=(0.9, 0.5))
    loaded = load_config("default", drift_configs)
    pinned = pin_window(clean, "default", loaded, "1d")
    assert pinned.questions == 52 and "question_embedding" in pinned.signals
    reference = store.latest_reference(clean, "default", "default")
    assert reference is not None and reference.id == pinned.id and reference.vectors is not None
    assert reference.vectors.shape == (52, 16) and len(reference.values["top_score"]) == 52
    gaps = content_gaps(clean, "default", "default", DriftSettings(gap_score=0.5))
    assert sum(g.questions for g in gaps) == 42 and all(g.mean_top_score < 0.5 for g in gaps)
    assert gaps[0].questions >= 12 and all(g.examples == [] for g in gaps)


def test_drift_route_tenancy_gauges_and_report(
    drift_client: TestClient, private_database: Database, clean: psycopg.Connection, drift_configs: Path
) -> None:
    rng = np.random.default_rng(2)
    home = rng.normal(size=16)
    store.create_reference(clean, "default", "default", "questions", unit(rng, 60, home), {})
    base = monitor.window_floor(datetime.now(UTC), WINDOW_S) - timedelta(hours=3)
    for h in range(2):
        observe(clean, unit(rng, 25, rng.normal(size=16)), base + timedelta(hours=h, minutes=1))
    monitor.run_due(clean, drift_configs, now=base + timedelta(hours=2, minutes=5))

    body = drift_client.get("/v1/admin/drift", params={"collection": "default"}).json()
    assert body["alarms"] == ["question_embedding"]
    assert {w["signal"] for w in body["latest"]} >= {"question_embedding", "top_score"}
    assert len([w for w in body["windows"] if w["signal"] == "question_embedding"]) == 2

    hr_admin = {"Authorization": f"Bearer {new_key(private_database, ['admin'], collections=['hr'])}"}
    messages = {}
    for name in ("default", "no-such-collection"):
        response = drift_client.get("/v1/admin/drift", params={"collection": name}, headers=hr_admin)
        assert response.status_code == 403, response.text
        messages[name] = response.json()["error"]["message"].replace(name, "NAME")
    assert messages["default"] == messages["no-such-collection"]
    query_only = {"Authorization": f"Bearer {new_key(private_database, ['query'])}"}
    assert drift_client.get("/v1/admin/drift", headers=query_only).status_code == 403
    unknown = drift_client.get("/v1/admin/drift", params={"collection": "suport"})
    assert unknown.status_code == 404 and "default" in unknown.json()["error"]["message"]
    for params in ({"collection": "de\x00fault"}, {"config": "x\x00"}, {"since": "yesterday"}, {"limit": 0}):
        assert drift_client.get("/v1/admin/drift", params=params).status_code == 422, params

    metrics = drift_client.get("/metrics").text
    assert 'ragops_drift_alert{collection="default",config="default",signal="question_embedding"} 1.0' in metrics
    assert 'ragops_drift_p_threshold{collection="default",config="default",signal="question_embedding"} 0.01' in metrics

    page = render_html(store.read_windows(clean, collections=None), {"default": DriftSettings(**DRIFT)})
    assert page.count("<svg") == len({w["signal"] for w in body["windows"]}) and "<script" not in page
    assert "ALARM" in page


def test_corpus_drift_compares_newly_ingested_chunks_with_the_index(clean: psycopg.Connection) -> None:
    now = datetime.now(UTC)
    with clean.transaction(force_rollback=True):
        added, indexed = IndexCorpus().window(clean, "default", now - timedelta(days=1), now + timedelta(hours=1), 500)
        assert len(added) > 20 and len(indexed) == 0  # everything was ingested today
        verdict = judge(SIGNALS["corpus_embedding"], None, added, DriftSettings(min_questions=5))
        assert verdict.state == "no_reference"
        total = len(added)
        newest = clean.execute("SELECT max(id) FROM documents").fetchone()
        assert newest is not None
        clean.execute("UPDATE documents SET updated_at = now() - interval '2 days' WHERE id <> %s", (newest[0],))
        added, indexed = IndexCorpus().window(clean, "default", now - timedelta(days=1), now + timedelta(hours=1), 500)
        assert 0 < len(added) < total and len(indexed) == total - len(added)
        assert added.shape[1] == indexed.shape[1] == 384
        verdict = judge(SIGNALS["corpus_embedding"], indexed, added, DriftSettings(min_questions=5))
        assert verdict.reference_n == len(indexed)
        assert (verdict.state == "not_enough_data") is (len(added) < 5)
