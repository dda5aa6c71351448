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

import httpx
import numpy as np
import psycopg
import pytest
import yaml
from fastapi.testclient import TestClient

from app.drift_report import render_html
from app.generators.base import NOT_FOUND_ANSWER, Delta, Finished, GenerationRequest, Generator
from app.main import create_app
from app.metrics import DriftCollector
from core.config import DriftSettings
from core.db import Database
from core.drift import monitor, store
from core.drift.measures import AnswerMeasures, default_measures
from core.drift.signals import SIGNALS, judge
from core.errors import GenerationError
from ingest.drift_corpus import IndexCorpus
from ingest.worker import Worker
from tests.app.conftest import REPO, authed, make_settings
from tests.utils.accounts import new_key
from tests.utils.ledger import ledger_row, table_dump
from tests.utils.server import serve_in_thread, wait_for

WINDOW_S = 3600
DRIFT = {"enabled": True, "window": "1h", "min_questions": 20, "max_questions": 200, "consecutive": 2}
ANSWERED = "How many PTO days do new employees get in their first year?"
UNANSWERABLE = "What is the CEO's favourite ice cream flavour?"
# Made-up values in valid formats (Presidio rejects well-known sample numbers).
EMAIL = "odalys.brennan@example.org"


@pytest.fixture(scope="module")
def drift_configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's default configuration with drift recording on and small windows, and ``kept``: the same
    with the transcript store on and every question counted as a content gap."""
    folder = tmp_path_factory.mktemp("drift-configs")
    data = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    data["drift"] = DRIFT
    (folder / "default.yaml").write_text(yaml.safe_dump(data))
    data["drift"] = {**DRIFT, "gap_score": 10.0}
    data["feedback"]["transcripts"]["enabled"] = True
    (folder / "kept.yaml").write_text(yaml.safe_dump(data))
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
        conn.execute("TRUNCATE drift_observations, drift_blocks, drift_windows, drift_references CASCADE")
        yield conn


def test_no_drift_table_holds_question_or_answer_text(drift_client: TestClient, private_database: Database) -> None:
    marker = f"zq{uuid.uuid4().hex[:12]}x"
    response = drift_client.post("/v1/query", json={"question": f"How many PTO days do I get {marker}?"})
    assert response.status_code == 200, response.text
    request_id, answer = response.json()["request_id"], response.json()["answer"]
    with private_database.connect() as conn:
        row = conn.execute(
            "SELECT collection, config, vector_dims(embedding), top_score, hits, refused FROM drift_observations "
            "WHERE request_id = %s",
            (request_id,),
        ).fetchone()
        columns = conn.execute(
            """SELECT table_name, column_name, data_type FROM information_schema.columns
               WHERE table_schema = 'public' AND table_name LIKE 'drift%%'"""
        ).fetchall()
    assert row is not None and row[:3] == ("default", "default", 384) and row[3] > 0 and row[4] > 0
    assert row[5] is False  # the answer-side numbers are recorded beside it
    assert ledger_row(private_database, request_id, wait_s=5) is not None
    dump = table_dump(private_database, skip_index=True)
    assert marker not in dump
    sentences = [s.strip() for s in answer.replace("\n", " ").split(".") if len(s.strip()) > 30]
    assert sentences and not any(s in dump for s in sentences)  # the answer is not kept either
    # The only text columns of the drift tables are names and the reference's note (a file name and hash).
    text_columns = {(t, c) for t, c, kind in columns if kind in ("text", "character varying", "jsonb", "ARRAY")}
    assert text_columns == {
        ("drift_observations", "request_id"), ("drift_observations", "collection"), ("drift_observations", "config"),
        ("drift_blocks", "collection"), ("drift_blocks", "config"),
        ("drift_references", "collection"), ("drift_references", "config"), ("drift_references", "source"),
        ("drift_references", "note"), ("drift_reference_values", "signal"), ("drift_reference_values", "values"),
        ("drift_windows", "collection"), ("drift_windows", "config"), ("drift_windows", "signal"),
        ("drift_windows", "state"),
    }  # fmt: skip


def observation(database: Database, request_id: str) -> dict[str, Any] | None:
    with database.connect() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(
            "SELECT config, hits, answer_tokens, refused, support_share FROM drift_observations WHERE request_id = %s",
            (request_id,),
        ).fetchone()


def test_each_answer_records_its_length_refusal_and_support_share(
    drift_client: TestClient, private_database: Database
) -> None:
    answered = drift_client.post("/v1/query", json={"question": ANSWERED}).json()
    refused = drift_client.post("/v1/query", json={"question": UNANSWERABLE}).json()
    assert refused["answer"] == NOT_FOUND_ANSWER != answered["answer"]
    row = observation(private_database, answered["request_id"])
    assert row is not None and row["refused"] is False
    assert row["answer_tokens"] == answered["usage"]["completion_tokens"] > 0
    # The extractive generator answers with the cited chunks' own sentences: all of them are supported.
    assert row["support_share"] == 1.0
    row = observation(private_database, refused["request_id"])
    assert row is not None and row["refused"] is True and row["support_share"] is None


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
        assert monitor.judge_window(conn, "default", "default", settings, base, default_measures())
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
    bad = ({"collection": "de\x00fault"}, {"config": "x\x00"}, {"since": "yesterday"}, {"since": "60.0"}, {"limit": 0})
    for params in bad:  # "60.0" was read as a Unix time (bench hostile's negative mode found it)
        assert drift_client.get("/v1/admin/drift", params=params).status_code == 422, params
    recent = drift_client.get("/v1/admin/drift", params={"since": "3h"}).json()["windows"]  # read as feedback's since
    assert recent and {datetime.fromisoformat(w["window_start"]) for w in recent} == {base + timedelta(hours=1)}

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


def observe_answers(
    conn: psycopg.Connection, rng: np.random.Generator, at: datetime, n: int, refusal_rate: float
) -> None:
    """``n`` recorded answers at ``at`` of which a ``refusal_rate`` share refused (question vectors unchanged)."""
    home = np.ones(16)
    for i, v in enumerate(unit(rng, n, home)):
        was_refused = i < round(n * refusal_rate)
        request_id = f"t-{uuid.uuid4().hex}"
        store.record_observation(conn, store.Observation(
            request_id, "default", "default", v, [0.8, 0.6], answer_tokens=int(rng.integers(40, 60)),
            refused=was_refused, support_share=None if was_refused else float(rng.uniform(0.8, 1.0)),
        ))  # fmt: skip
        conn.execute("UPDATE drift_observations SET created_at = %s WHERE request_id = %s", (at, request_id))


@pytest.mark.parametrize(("refusal_rate", "state"), [(1.0, "drift"), (0.1, "ok")])
def test_refusal_rate_drifts_when_a_window_refuses_everything_not_when_unchanged(
    drift_client: TestClient, clean: psycopg.Connection, drift_configs: Path, refusal_rate: float, state: str
) -> None:
    from app.drift import pin_window
    from core.config import load_config

    rng = np.random.default_rng(3)
    now = datetime.now(UTC)
    observe_answers(clean, rng, now - timedelta(hours=1), 60, 0.1)
    pinned = pin_window(clean, "default", load_config("default", drift_configs), "1d", now=now)
    assert {"refusal", "support_share", "answer_tokens"} <= set(pinned.signals)
    base = monitor.window_floor(now, WINDOW_S) + timedelta(hours=2)
    observe_answers(clean, rng, base + timedelta(minutes=1), 40, refusal_rate)
    monitor.run_due(clean, drift_configs, now=base + timedelta(hours=1, minutes=5))
    rows = {r.signal: r for r in store.read_windows(clean, collections=None) if r.window_start == base}
    assert rows["refusal"].state == state and rows["refusal"].n == 40 and rows["refusal"].reference_n == 60
    assert rows["refusal"].reference_value == pytest.approx(0.1)
    assert rows["refusal"].window_value == pytest.approx(refusal_rate)
    assert rows["answer_tokens"].state == "ok" and rows["question_embedding"].state == "ok"
    assert rows["support_share"].n == round(40 * (1 - refusal_rate))  # refusals have no support share

    body = drift_client.get("/v1/admin/drift", params={"collection": "default"}).json()
    assert {w["signal"]: w["state"] for w in body["latest"]}["refusal"] == state
    app_state = drift_client.app.state  # type: ignore[attr-defined]
    gauges = {
        (s.name, s.labels["signal"], s.labels.get("state")): s.value
        for family in DriftCollector(app_state.pool, app_state.catalog).collect()
        for s in family.samples
    }
    assert gauges[("ragops_drift_state", "refusal", state)] == 1.0
    assert gauges[("ragops_drift_p_threshold", "refusal", None)] == pytest.approx(0.01 / 6)  # the answer group
    page = render_html(store.read_windows(clean, collections=None), {"default": DriftSettings(**DRIFT)})
    assert "refusal" in page and "support_share" in page


def test_a_blocked_question_is_counted_for_drift_and_nothing_of_it_kept(
    drift_client: TestClient, clean: psycopg.Connection, private_database: Database
) -> None:
    card = "4487 5749 1186 2520"
    response = drift_client.post("/v1/query", json={"question": f"My card is {card}, can I expense it?"})
    assert response.status_code == 422 and "CREDIT_CARD" in response.text
    wait_for(lambda: clean.execute("SELECT count(*) FROM drift_blocks").fetchone() == (1,))
    row = clean.execute("SELECT collection, config FROM drift_blocks").fetchone()
    assert row == ("default", "default")
    assert card not in table_dump(private_database, skip_index=True)


@pytest.mark.parametrize(("blocked", "state"), [(20, "drift"), (1, "ok")])
def test_pii_block_rate_drifts_when_blocks_surge_not_when_unchanged(
    clean: psycopg.Connection, drift_configs: Path, blocked: int, state: str
) -> None:
    from app.drift import pin_window
    from core.config import load_config

    rng = np.random.default_rng(5)
    now = datetime.now(UTC)
    observe_answers(clean, rng, now - timedelta(hours=1), 60, 0.1)
    for _ in range(2):  # the reference: 2 of 62 questions blocked
        store.record_block(clean, "default", "default")
    clean.execute("UPDATE drift_blocks SET created_at = %s", (now - timedelta(hours=1),))
    pinned = pin_window(clean, "default", load_config("default", drift_configs), "1d", now=now)
    assert "pii_blocked" in pinned.signals
    base = monitor.window_floor(now, WINDOW_S) + timedelta(hours=2)
    observe_answers(clean, rng, base + timedelta(minutes=1), 40, 0.1)
    for _ in range(blocked):
        store.record_block(clean, "default", "default")
    clean.execute("UPDATE drift_blocks SET created_at = %s WHERE created_at > %s",
                  (base + timedelta(minutes=2), now - timedelta(minutes=30)))  # fmt: skip
    monitor.run_due(clean, drift_configs, now=base + timedelta(hours=1, minutes=5))
    rows = {r.signal: r for r in store.read_windows(clean, collections=None) if r.window_start == base}
    assert rows["pii_blocked"].state == state and rows["pii_blocked"].n == 40 + blocked
    assert rows["pii_blocked"].reference_value == pytest.approx(2 / 62)
    assert rows["refusal"].state == "ok"


def test_a_reference_of_questions_only_has_no_answer_reference(clean: psycopg.Connection) -> None:
    rng = np.random.default_rng(4)
    home = np.ones(16)
    store.create_reference(clean, "default", "default", "questions", unit(rng, 40, home),
                           {"top_score": rng.normal(0.8, 0.05, 40)})  # fmt: skip
    base = monitor.window_floor(datetime.now(UTC), WINDOW_S) - timedelta(hours=3)
    observe_answers(clean, rng, base + timedelta(minutes=1), 30, 1.0)
    with clean.transaction():
        monitor.judge_window(clean, "default", "default", DriftSettings(**DRIFT), base, default_measures())
    rows = {r.signal: r for r in store.read_windows(clean, collections=None)}
    for signal in ("refusal", "answer_tokens", "support_share", "cost_usd", "pii_entities", "pii_blocked"):
        assert rows[signal].state == "no_reference" and not rows[signal].alarm, signal
    assert rows["question_embedding"].state == "ok"


def test_content_gaps_show_filtered_questions_only_with_the_transcript_store(
    drift_client: TestClient, private_database: Database, clean: psycopg.Connection, drift_configs: Path
) -> None:
    from app.drift import content_gaps

    asked = [f"My email is {EMAIL}. Is there a team offsite in {city}?" for city in ("Lisbon", "Oslo", "Quito")]
    asked.append(UNANSWERABLE)
    for question in asked:
        response = drift_client.post("/v1/query", json={"question": question, "config": "kept"})
        assert response.status_code == 200, response.text
    kept = DriftSettings(**{**DRIFT, "gap_score": 10.0})
    [gap] = content_gaps(clean, "default", "kept", kept, examples=True)  # four questions: one cluster
    assert gap.questions == 4 and len(gap.examples) == 3 and len(set(gap.examples)) == 3
    assert set(gap.examples) <= {q.replace(EMAIL, "<EMAIL_ADDRESS>") for q in asked}  # as filtered, never raw
    assert not any(EMAIL in e for e in gap.examples)
    examples = gap.examples
    assert all(g.examples == [] for g in content_gaps(clean, "default", "kept", kept))  # the store is off: counts
    body = drift_client.get("/v1/admin/drift", params={"collection": "default", "config": "kept"}).json()
    assert sorted(e for g in body["content_gaps"] for e in g["examples"]) == sorted(examples)
    body = drift_client.get("/v1/admin/drift", params={"collection": "default", "config": "default"}).json()
    assert all(g["examples"] == [] for g in body["content_gaps"])


class FailingGenerator(Generator):
    """The real extractive generator, failing after its first delta.

    A fake in one respect only: a backend dying mid-stream needs the vLLM tier (tests/app/test_faults.py).
    """

    name = "extractive"

    def __init__(self, inner: Generator) -> None:
        self.inner = inner

    def stream(self, request: GenerationRequest) -> Iterator[Delta | Finished]:
        for event in self.inner.stream(request):
            yield event
            raise GenerationError("the model server went away")

    def model_for(self, request: GenerationRequest) -> str:
        return self.inner.model_for(request)


def test_a_streamed_answer_leaves_its_records_after_done_even_if_the_client_hangs_up(
    drift_client: TestClient, private_database: Database
) -> None:
    pipeline = drift_client.app.state.pipeline  # type: ignore[attr-defined]
    headers = {"Authorization": drift_client.headers["Authorization"]}
    payload = {"question": ANSWERED, "config": "kept", "stream": True}
    with serve_in_thread(drift_client.app, lifespan=False) as url, httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{url}/v1/query", json=payload, headers=headers) as response:
            answered = response.headers["X-Request-Id"]
            for line in response.iter_lines():
                if line.startswith("event: done"):
                    break  # hang up as soon as the answer is done, before the stream's end
        slot = f"extractive:{pipeline.catalog.config('kept').name}"
        real = pipeline.generator(pipeline.catalog.config("kept"))
        pipeline._generators[slot] = FailingGenerator(real)
        try:
            with http.stream("POST", f"{url}/v1/query", json=payload, headers=headers) as response:
                failed = response.headers["X-Request-Id"]
                events = [line for line in response.iter_lines() if line.startswith("event: ")]
        finally:
            pipeline._generators[slot] = real
    assert "event: error" in events and "event: done" not in events
    wait_for(lambda: observation(private_database, answered) is not None)
    with private_database.connect() as conn:
        kept = conn.execute("SELECT count(*) FROM transcripts WHERE request_id = %s", (answered,)).fetchone()
        assert kept == (1,)
        failed_row = ledger_row(private_database, failed, wait_s=10)
        assert failed_row is not None and (failed_row["status"], failed_row["error_kind"]) == (502, "GenerationError")
        for table in ("drift_observations", "transcripts"):
            left = conn.execute(f"SELECT count(*) FROM {table} WHERE request_id = %s", (failed,)).fetchone()
            assert left == (0,), table
