"""The LLM judge (ragas Faithfulness, AnswerRelevancy): scores when the judge answers well, counted failures
when it does not (bad JSON, timeout, endpoint down, the real tiny vLLM's random output), never a crash."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from app.judge import JUDGE_METRICS, Judge
from core.embedding import Embedder
from core.runtime import Runtime
from evals.compare import PASS, compare, load_gate, markdown
from evals.dataset import EvalSet, load_dataset
from evals.runner import run_eval
from tests.conftest import REPO
from tests.utils.fake_judge import FakeJudge, fake_judge
from tests.utils.vllm_server import VllmServer, free_port

QUESTION = "How many PTO days do employees get per year?"
ANSWER = "Employees get 18 PTO days per year. [1]"
CONTEXTS = ["Employees in years 2 through 4 get 18 PTO days per year."]
FULL = load_dataset(REPO / "evals" / "datasets" / "sample.jsonl")
# Two answerable, one unanswerable, one with PII: small enough to judge against a CPU vLLM.
SMALL = EvalSet(FULL.name, FULL.sha256, [q for q in FULL.questions if q.id in {"q001", "q002", "q037", "q043"}])


@pytest.fixture
def judge_server() -> Iterator[FakeJudge]:
    with fake_judge() as server:
        yield server


def test_a_well_formed_judge_scores_both_metrics_and_is_asked_for_json(
    judge_server: FakeJudge, embedder: Embedder
) -> None:
    judge = Judge(judge_server.url, "judge", embedder, timeout_s=10)
    result = judge.score(QUESTION, ANSWER, CONTEXTS)
    judge.close()
    assert result.failures == {}
    assert result.scores["faithfulness"] == pytest.approx(0.5)  # the fake supports 1 of 2 statements
    assert 0.8 < result.scores["answer_relevancy"] <= 1.0  # its generated question paraphrases ours
    assert judge_server.requests and all(r["response_format"] == {"type": "json_object"} for r in judge_server.requests)
    assert judge.summary()["metrics"]["faithfulness"] == {"scored": 1, "failed": {}}


@pytest.mark.parametrize(("mode", "reason"), [("garbage", "bad_json"), ("slow", "timeout"), ("down", "unreachable")])
def test_a_failing_judge_is_recorded_with_its_reason(
    judge_server: FakeJudge, embedder: Embedder, mode: str, reason: str
) -> None:
    judge_server.mode = mode
    url = f"http://127.0.0.1:{free_port()}/v1" if mode == "down" else judge_server.url
    judge = Judge(url, "judge", embedder, timeout_s=1)
    result = judge.score(QUESTION, ANSWER, CONTEXTS)
    judge.close()
    assert result.scores == {}
    assert result.failures == dict.fromkeys(JUDGE_METRICS, reason)
    assert judge.summary()["metrics"]["answer_relevancy"] == {"scored": 0, "failed": {reason: 1}}


def judged_run(runtime: Runtime, url: str, repeats: int = 1) -> dict[str, Any]:
    return run_eval(runtime, "default", SMALL, samples=REPO / "samples", repeats=repeats, judge_url=url)


def test_the_run_records_every_repeat_per_question_and_the_gate_treats_judge_scores_as_advisory(
    runtime: Runtime, judge_server: FakeJudge
) -> None:
    with_judge = judged_run(runtime, judge_server.url, repeats=2)
    answered = [q for q in with_judge["questions"] if q["metrics"].get("answered")]
    assert answered and all(len(q["judge"]["scores"]["faithfulness"]) == 2 for q in answered)
    assert all("judge" not in q for q in with_judge["questions"] if q["kind"] == "unanswerable")
    assert with_judge["aggregates"]["faithfulness"] == pytest.approx(0.5)
    assert with_judge["judge"]["model"] == "ragops-llm"  # the configuration's model by default

    judge_server.mode = "garbage"
    broken = judged_run(runtime, judge_server.url)
    assert "faithfulness" not in broken["aggregates"]
    assert broken["judge"]["metrics"]["faithfulness"] == {"scored": 0, "failed": {"bad_json": len(answered)}}

    gate = load_gate(REPO / "evals" / "gate.yaml")  # its judge rules; the 4-question set misses other floors
    gate.metrics = {name: gate.metrics[name] for name in ("hit_at_k", *JUDGE_METRICS)}
    result = compare(with_judge, broken, gate)
    assert result.exit_code == PASS  # judge scores never fail the gate, and a dead judge does not crash it
    faithfulness = next(m for m in result.metrics if m.name == "faithfulness")
    assert not faithfulness.available and f"bad_json {len(answered)}" in faithfulness.note
    assert "unavailable, advisory" in markdown(result)


def test_the_real_tiny_vllm_as_judge_is_recorded_not_fatal(runtime: Runtime, vllm_server: VllmServer) -> None:
    """Random weights: its JSON is never valid for ragas. Every call must end as a score or a counted reason."""
    report = judged_run(runtime, vllm_server.base_url)
    answered = sum(1 for q in report["questions"] if q["metrics"].get("answered"))
    for name in JUDGE_METRICS:
        counts = report["judge"]["metrics"][name]
        assert counts["scored"] + sum(counts["failed"].values()) == answered, counts
    assert report["aggregates"]["hit_at_k"] > 0  # the deterministic metrics are unaffected
