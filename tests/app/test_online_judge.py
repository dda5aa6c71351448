"""The online LLM judge: ragas Faithfulness and AnswerRelevancy on a sample of the online queue, within a daily cap.

Real PostgreSQL, real retrieval, real Presidio, real embeddings; answers are requested over the API and
the worker's online-evaluation chore judges them. The judge itself is a fake at the network
(tests/utils/fake_judge.py, an OpenAI-compatible HTTP server answering well-formed ragas JSON): no
capable model runs on these machines. The real tiny vLLM's garbage judgements are the failure path
(last test, integration tier).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from app.keys import create_key
from app.main import create_app, worker_chores
from app.online_eval import OnlineEvaluator, online_evaluator
from app.online_judge import OnlineJudges
from app.pricing import load_pricing
from core.catalog import Catalog
from core.config import RagConfig
from core.db import Database
from core.errors import ConfigError
from core.settings import Settings
from tests.app.conftest import authed, make_settings
from tests.conftest import REPO
from tests.utils.fake_judge import FakeJudge, fake_judge
from tests.utils.server import free_port, wait_for
from tests.utils.vllm_server import VllmServer

MARKER = "zqxjudgemarker57"
EMAIL = "oskar.lindqvist@example.org"
QUESTIONS = [
    f"My email is {EMAIL}. How many weeks of paid parental leave do I get? {MARKER}",
    f"Which days do hybrid employees have to be in the office? {MARKER}",
    f"How long do we retain API request logs? {MARKER}",
]
# Configuration -> (judge model, its judge section); each judge model has its own price, so the fake
# server's requests tell the configurations apart.
JUDGES = {
    "judged": ("judge-cheap", "sample_rate: 1.0\n    daily_cap_usd: 100"),
    "capped": ("judge-dear", "sample_rate: 1.0\n    daily_cap_usd: 1.0"),  # $1 a token: one answer passes it
    "unsampled": ("judge-unsampled", "sample_rate: 0.0"),
    "down": ("judge-down", "sample_rate: 1.0"),
}
PRICES = """
  judge-cheap: {prompt_usd_per_million: 1.0, completion_usd_per_million: 2.0}
  judge-dear: {prompt_usd_per_million: 1000000, completion_usd_per_million: 1000000}
  judge-unsampled: {prompt_usd_per_million: 1.0, completion_usd_per_million: 1.0}
  judge-down: {prompt_usd_per_million: 1.0, completion_usd_per_million: 1.0}
"""


@pytest.fixture(scope="module")
def judge_server() -> Iterator[FakeJudge]:
    with fake_judge() as server:
        yield server


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory, judge_server: FakeJudge) -> Path:
    """One configuration per judge case, every answer queued; the default has no judge."""
    folder = tmp_path_factory.mktemp("judge-configs")
    pricing = (REPO / "configs" / "pricing.yaml").read_text()
    assert "\nembeddings:" in pricing
    (folder / "pricing.yaml").write_text(pricing.replace("\nembeddings:", PRICES + "\nembeddings:"))
    default = (REPO / "configs" / "default.yaml").read_text()
    default = default.replace("\n  sample_rate: 0.1\n", "\n  sample_rate: 1.0\n")
    (folder / "default.yaml").write_text(default)
    down = f"http://127.0.0.1:{free_port()}/v1"
    for name, (model, section) in {**JUDGES, "viavllm": ("ragops-llm", "sample_rate: 1.0")}.items():
        url = {"down": down, "viavllm": "vllm"}.get(name, judge_server.url)
        judge = f"\n  judge:\n    url: {url}\n    model: {model}\n    timeout_s: 5\n    {section}\n"
        (folder / f"{name}.yaml").write_text(default.replace("\n  sample_rate: 1.0\n", f"\n  sample_rate: 1.0{judge}"))
    return folder


@pytest.fixture(scope="module")
def key(private_database: Database) -> str:
    with private_database.connect() as conn:
        return create_key(conn, "all", ["query", "admin"], collections=["*"], configs=["*"])[1]


@pytest.fixture(scope="module")
def settings(private_database: Database, configs: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(private_database, tmp_path_factory.mktemp("judge"), configs_dir=configs, vllm_url=None)


@pytest.fixture(scope="module")
def client(settings: Settings, key: str) -> Iterator[TestClient]:
    """The app without its worker: the tests run the worker's chore themselves."""
    with authed(TestClient(create_app(settings)), key) as client:
        yield client


def ask(client: TestClient, database: Database, configs: list[str]) -> list[dict[str, Any]]:
    """Every question with each configuration over the API; the queue once all rows are written."""
    before = len(queue(database))
    for config in configs:
        for question in QUESTIONS:
            assert client.post("/v1/query", json={"question": question, "config": config}).status_code == 200
    wait_for(lambda: len(queue(database)) == before + len(configs) * len(QUESTIONS))
    return queue(database)


def queue(database: Database) -> list[dict[str, Any]]:
    with database.connect() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute("SELECT * FROM online_eval_queue ORDER BY id").fetchall()


def quality(database: Database) -> dict[str, dict[str, Any]]:
    """online_quality per configuration name (one group each here)."""
    with database.connect() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows = cur.execute("SELECT * FROM online_quality").fetchall()
    return {r["config_version"].partition("@")[0]: r for r in rows}


def evaluator(settings: Settings, configs: Path) -> OnlineEvaluator:
    catalog = Catalog.load(configs, REPO / "prompts", "default")
    return online_evaluator(catalog, OnlineJudges(catalog, settings, load_pricing(configs)))


def drain(evaluator: OnlineEvaluator, database: Database) -> int:
    done = 0
    with database.connect() as conn:
        while n := evaluator.run_once(conn):
            done += n
    return done


def calls(server: FakeJudge, model: str) -> int:
    return sum(1 for r in server.requests if r["model"] == model)


def everything_stored(database: Database) -> str:
    """Every row of every table, as text: what a leak scan reads."""
    with database.connect() as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()]
        return "\n".join(
            str(conn.execute(sql.SQL("SELECT array_agg(t::text) FROM {} t").format(sql.Identifier(t))).fetchone())
            for t in tables
        )


@pytest.fixture(scope="module")
def queued(client: TestClient, private_database: Database) -> list[dict[str, Any]]:
    return ask(client, private_database, ["default", *JUDGES])


def test_only_answers_the_judge_samples_queue_their_question_and_only_filtered(queued: list[dict[str, Any]]) -> None:
    by_config: dict[str, list[str | None]] = {}
    for row in queued:
        by_config.setdefault(row["config_version"].partition("@")[0], []).append(row["question"])
    assert all(q is None for q in by_config["default"] + by_config["unsampled"])  # no judge, or its rate 0
    for name in ("judged", "capped", "down"):
        assert all(q and MARKER in q for q in by_config[name]), name  # the question, as the filter left it
    assert EMAIL not in repr(queued) and "oskar" not in repr(queued).lower()


def test_the_judge_scores_within_its_cap_and_counts_every_failure(
    queued: list[dict[str, Any]], private_database: Database, settings: Settings, configs: Path,
    judge_server: FakeJudge,
) -> None:  # fmt: skip
    n = len(QUESTIONS)
    assert drain(evaluator(settings, configs), private_database) == len(queued)
    assert queue(private_database) == []  # judged rows are deleted with their question
    groups = quality(private_database)
    assert {name: g["answers"] for name, g in groups.items()} == dict.fromkeys(["default", *JUDGES], n)

    judged = groups["judged"]
    assert judged["faithfulness_n"] == n and judged["faithfulness_sum"] / n == pytest.approx(0.5)
    assert judged["relevancy_n"] == n and 0.0 < judged["relevancy_sum"] / n <= 1.0
    per_answer = calls(judge_server, "judge-cheap") / n
    assert per_answer >= 2 and per_answer == int(per_answer)
    assert float(judged["judge_cost_usd"]) == pytest.approx(n * per_answer * 3 / 1_000_000)  # 1 + 1 tokens a call
    assert all(EMAIL not in str(r) for r in judge_server.requests)  # the judge only ever saw filtered text

    capped = groups["capped"]  # the first answer spent past the cap: no more judge calls today
    assert calls(judge_server, "judge-dear") == per_answer
    assert capped["faithfulness_n"] == 1 and float(capped["judge_cost_usd"]) == pytest.approx(per_answer * 2)

    assert calls(judge_server, "judge-unsampled") == 0 and groups["unsampled"]["faithfulness_n"] == 0
    down = groups["down"]  # the rest of its measures are aggregated all the same
    assert down["faithfulness_n"] == 0 and down["support_n"] == n and down["top_score_n"] == n

    with private_database.connect() as conn:
        outcomes = dict(conn.execute(
            "SELECT split_part(config_version, '@', 1) || ' ' || outcome, n FROM online_judge_outcomes"
        ).fetchall())  # fmt: skip
        spend = {r[0]: (float(r[1]), r[2]) for r in conn.execute("SELECT config, usd, answers FROM online_judge_spend")}
    assert outcomes == {
        "capped skipped:cap": n - 1,
        "down faithfulness:unreachable": n,
        "down answer_relevancy:unreachable": n,
    }
    assert spend["capped"] == (pytest.approx(per_answer * 2), 1)
    assert spend["judged"][1] == n and spend["down"] == (0.0, n)

    stored = everything_stored(private_database)
    assert MARKER not in stored and EMAIL not in stored  # the question went with its row; no raw text anywhere


def test_the_cap_holds_for_the_rest_of_the_day(
    queued: list[dict[str, Any]], client: TestClient, private_database: Database, settings: Settings, configs: Path,
    judge_server: FakeJudge,
) -> None:  # fmt: skip
    before = calls(judge_server, "judge-dear")
    ask(client, private_database, ["capped"])
    drain(evaluator(settings, configs), private_database)  # a new worker: the cap is read from the database
    assert calls(judge_server, "judge-dear") == before
    assert quality(private_database)["capped"]["faithfulness_n"] == 1


def test_no_transaction_stays_open_while_the_judge_is_called(
    client: TestClient, private_database: Database, settings: Settings, configs: Path, pg_server: str
) -> None:
    ask(client, private_database, ["judged"])
    states: list[str] = []
    base = evaluator(settings, configs)
    assert base.judges is not None

    class Watched(OnlineJudges):
        def judge(self, conn: psycopg.Connection, *args: Any) -> Any:
            with psycopg.connect(pg_server, autocommit=True) as admin:
                row = admin.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (conn.info.backend_pid,))
                states.append(str(row.fetchone()[0]))  # type: ignore[index]
            return super().judge(conn, *args)

    watched = OnlineEvaluator(base.settings_of, judges=Watched(base.judges.catalog, settings, base.judges.pricing))
    assert drain(watched, private_database) == len(QUESTIONS)
    assert states == ["idle"] * len(QUESTIONS)  # not "idle in transaction": the claim had committed


def test_a_worker_dying_while_judging_loses_nothing_and_counts_nothing_twice(
    client: TestClient, private_database: Database, settings: Settings, configs: Path, judge_server: FakeJudge
) -> None:
    ask(client, private_database, ["judged"])
    before = quality(private_database)["judged"]
    base = evaluator(settings, configs)
    assert base.judges is not None

    class Died(BaseException):
        pass

    class Dying(OnlineJudges):
        def judge(self, conn: psycopg.Connection, *args: Any) -> Any:
            raise Died

    doomed = OnlineEvaluator(base.settings_of, judges=Dying(base.judges.catalog, settings, base.judges.pricing))
    with private_database.connect() as conn, pytest.raises(Died):
        doomed.run_once(conn)
    rows = queue(private_database)
    assert len(rows) == len(QUESTIONS) and all(r["judge_lease"] for r in rows)  # leased, still queued
    assert drain(base, private_database) == 0  # another worker leaves a live lease alone
    with private_database.connect() as conn:  # the lease runs out
        conn.execute("UPDATE online_eval_queue SET judge_lease_until = now() - interval '1 second'")
    assert drain(base, private_database) == len(QUESTIONS)
    after = quality(private_database)["judged"]
    assert after["answers"] == before["answers"] + len(QUESTIONS)
    assert after["faithfulness_n"] == before["faithfulness_n"] + len(QUESTIONS)
    assert queue(private_database) == []


def test_a_lease_taken_over_is_not_counted_by_the_worker_that_lost_it(
    client: TestClient, private_database: Database, settings: Settings, configs: Path
) -> None:
    ask(client, private_database, ["judged"])
    before = quality(private_database)["judged"]["answers"]
    base = evaluator(settings, configs)
    assert base.judges is not None

    class Overtaken(OnlineJudges):
        """While it judges, its lease runs out and another worker leases the rows."""

        def judge(self, conn: psycopg.Connection, *args: Any) -> Any:
            with psycopg.connect(private_database.url, autocommit=True) as other:
                other.execute("UPDATE online_eval_queue SET judge_lease = 'someone-else'")
            return super().judge(conn, *args)

    slow = OnlineEvaluator(base.settings_of, judges=Overtaken(base.judges.catalog, settings, base.judges.pricing))
    with private_database.connect() as conn:
        assert slow.run_once(conn) == 0
    assert len(queue(private_database)) == len(QUESTIONS)
    assert quality(private_database)["judged"]["answers"] == before
    with private_database.connect() as conn:
        conn.execute("UPDATE online_eval_queue SET judge_lease_until = now() - interval '1 second'")
    assert drain(base, private_database) == len(QUESTIONS)
    assert quality(private_database)["judged"]["answers"] == before + len(QUESTIONS)


def test_report_route_and_cli_show_judge_scores_failures_and_spend(
    client: TestClient, private_database: Database, settings: Settings, configs: Path
) -> None:
    ask(client, private_database, ["judged"])
    chore = next(c for c in worker_chores(Catalog.load(configs, REPO / "prompts", "default"), settings)
                 if c.name == "online evaluation")  # fmt: skip
    with private_database.connect() as conn:
        assert chore.run(conn) == len(QUESTIONS)  # the worker's chore as wired has the judge

    body = client.get("/v1/admin/quality", params={"since": "1d"}).json()
    rows = {r["config_version"].partition("@")[0]: r for r in body["rows"]}
    assert rows["judged"]["faithfulness"] == pytest.approx(0.5) and rows["judged"]["judged"] >= len(QUESTIONS)
    assert rows["judged"]["answer_relevancy"] is not None and rows["judged"]["judge_cost_usd"] > 0
    assert rows["capped"]["judge_skipped"] == {"cap": 2 * len(QUESTIONS) - 1}
    unreachable = {"unreachable": len(QUESTIONS)}
    assert rows["down"]["judge_failures"] == {"answer_relevancy": unreachable, "faithfulness": unreachable}
    assert rows["default"]["judged"] == 0 and rows["default"]["judge_failures"] == {}
    spend = {s["config"]: s for s in body["judge_spend"]}
    assert spend["capped"]["answers"] == 1 and spend["capped"]["usd"] >= 1.0 and spend["judged"]["usd"] > 0

    with private_database.connect() as conn:
        other = create_key(conn, "other", ["query", "admin"], collections=["other"], configs=["*"])[1]
    theirs = client.get("/v1/admin/quality", params={"since": "1d"}, headers={"Authorization": f"Bearer {other}"})
    assert theirs.status_code == 200 and theirs.json()["rows"] == [] and theirs.json()["judge_spend"] == []

    gauges = client.get("/metrics").text
    assert 'measure="faithfulness"' in gauges and 'measure="answer_relevancy"' in gauges
    assert 'ragops_online_judge_cost_usd{collection="default",config="capped@' in gauges
    assert 'ragops_online_judged_answers{collection="default",config="judged@' in gauges

    env = {**os.environ, "RAGOPS_DATABASE_URL": private_database.url, "COLUMNS": "300"}
    done = subprocess.run([sys.executable, "-m", "app.cli", "quality", "report", "--since", "1d"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "faithful" in done.stdout and "skipped: cap" in done.stdout and "faithfulness unreachable" in done.stdout
    assert "judge spend" in done.stdout and "capped: $" in done.stdout


def test_the_judge_reads_the_cited_chunks_only_as_the_policy_filters_them(
    client: TestClient, private_database: Database, settings: Settings, configs: Path, judge_server: FakeJudge
) -> None:
    rows = ask(client, private_database, ["judged"])
    table = sql.Identifier(f"chunks_v{rows[0]['index_version_id']}")
    with private_database.connect() as conn:  # a document with someone's address in every chunk
        conn.execute(sql.SQL("UPDATE {} SET text = text || ' Write to dana.kowalski@example.net.'").format(table))
    before = len(judge_server.requests)
    assert drain(evaluator(settings, configs), private_database) == len(QUESTIONS)
    sent = str(judge_server.requests[before:])
    assert "Write to <EMAIL_ADDRESS" in sent and "dana.kowalski" not in sent


@pytest.mark.parametrize(
    ("judge", "message"),
    [
        ({"url": "ftp://judge.example/v1"}, "an http(s) URL"),
        ({"url": "https://user:secret@judge.example/v1"}, "must not carry credentials"),
        ({"url": "vllm", "sample_rate": 1.5}, "less than or equal to 1"),
        ({"url": "vllm", "daily_cap_usd": 0}, "greater than 0"),
        ({"url": "vllm", "timeout_s": -1}, "greater than 0"),
        ({"url": "vllm", "endpoint": "x"}, "Extra inputs"),
    ],
)
def test_bad_judge_settings_are_refused(judge: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        RagConfig.model_validate({"online_eval": {"judge": judge}})


def test_a_judge_needs_filtered_questions_and_answers() -> None:
    judge = {"url": "vllm"}
    assert RagConfig.model_validate({"online_eval": {"judge": judge}}).online_eval.judge.enabled
    assert not RagConfig().online_eval.judge.enabled  # off by default
    with pytest.raises(ValueError, match="only the PII-filtered question and answer"):
        RagConfig.model_validate({"online_eval": {"judge": judge}, "pii": {"apply_to": {"question": False}}})


def unpriced_judge(folder: Path) -> Path:
    """Configurations whose default names a judge model the pricing file does not price."""
    shutil.copy(REPO / "configs" / "pricing.yaml", folder / "pricing.yaml")
    default = (REPO / "configs" / "default.yaml").read_text()
    judge = "\n  judge:\n    url: vllm\n    model: unpriced-judge\n"
    (folder / "default.yaml").write_text(default.replace("\n  sample_rate: 0.1\n", f"\n  sample_rate: 0.1{judge}"))
    return folder


def test_config_validate_refuses_a_judge_without_a_price(tmp_path: Path) -> None:
    env = {**os.environ, "RAGOPS_CONFIGS_DIR": str(unpriced_judge(tmp_path))}
    done = subprocess.run([sys.executable, "-m", "app.cli", "config", "validate"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False)  # fmt: skip
    assert done.returncode != 0 and "no price for model 'unpriced-judge'" in done.stdout + done.stderr


def test_the_service_refuses_to_start_with_a_judge_without_a_price(private_database: Database, tmp_path: Path) -> None:
    settings = make_settings(private_database, tmp_path, configs_dir=unpriced_judge(tmp_path), vllm_url=None)
    with pytest.raises(ConfigError, match="no price for model 'unpriced-judge'"), TestClient(create_app(settings)):
        pass


def test_the_real_tiny_vllm_as_judge_is_counted_not_fatal(
    client: TestClient, private_database: Database, configs: Path, settings: Settings, vllm_server: VllmServer
) -> None:
    """Judge "vllm": the service's own. Random weights never give valid judge JSON: every answer still counts."""
    ask(client, private_database, ["viavllm"])
    with_vllm = settings.model_copy(update={"vllm_url": vllm_server.base_url})
    catalog = Catalog.load(configs, REPO / "prompts", "default")
    assert drain(online_evaluator(catalog, OnlineJudges(catalog, with_vllm, load_pricing(configs))),
                 private_database) == len(QUESTIONS)  # fmt: skip
    group = quality(private_database)["viavllm"]
    with private_database.connect() as conn:
        outcomes = dict(conn.execute(
            "SELECT outcome, n FROM online_judge_outcomes WHERE config_version LIKE 'viavllm@%'"
        ).fetchall())  # fmt: skip
    assert group["answers"] == len(QUESTIONS) and group["support_n"] == len(QUESTIONS)
    for metric, scored in (("faithfulness", group["faithfulness_n"]), ("answer_relevancy", group["relevancy_n"])):
        failed = sum(n for outcome, n in outcomes.items() if outcome.startswith(f"{metric}:"))
        assert scored + failed == len(QUESTIONS), outcomes
