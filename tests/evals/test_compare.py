"""The gate's statistics on hand-made reports: noise passes, real drops fail, bad input is exit 2."""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import EvalInputError
from evals.compare import PASS, REGRESSION, SCORE_EPSILON, Gate, compare, html_fragment, html_report, markdown

GATE = Gate.model_validate(
    {
        "metrics": {"hit_at_k": {"floor": 0.5, "max_drop": 0.05}, "pii_leak": {"ceiling": 0.0}},
        "ceilings": {"latency_p95_ms": 1000},
    }
)


def report(hits: list[float], *, sha: str = "s", leaks: int = 0, p95: float = 100.0) -> dict[str, Any]:
    questions = [
        {"id": f"q{i}", "kind": "pii" if i < 3 else "answerable", "question": "q", "answer": "a",
         "metrics": {"hit_at_k": h, **({"pii_leak": 1.0 if i < leaks else 0.0} if i < 3 else {})}}
        for i, h in enumerate(hits)
    ]  # fmt: skip
    return {
        "format": 1, "dataset": {"name": "d", "sha256": sha}, "versions": {"config": "c@1"},
        "aggregates": {"latency_p95_ms": p95}, "questions": questions,
    }  # fmt: skip


BASE = [1.0] * 40


def test_identical_reports_pass() -> None:
    assert compare(report(BASE), report(BASE), GATE).exit_code == PASS


def test_a_large_significant_drop_fails_and_lists_worst_questions_first() -> None:
    worse = [0.0] * 10 + [1.0] * 30
    result = compare(report(BASE), report(worse), GATE)
    assert result.exit_code == REGRESSION
    hit = result.metrics[0]
    assert hit.diff == pytest.approx(-0.25) and hit.ci_high < 0
    assert "worse by 0.250" in hit.failures[0]
    assert [q["id"] for q in result.changed_questions][:3] == ["q0", "q1", "q2"]
    assert "FAIL" in markdown(result) and "q0" in markdown(result)


def test_a_drop_within_tolerance_passes() -> None:
    assert compare(report(BASE), report([0.0] + [1.0] * 39), GATE).exit_code == PASS


def test_a_drop_that_is_not_significant_passes() -> None:
    """A drop past max_drop (0.10 > 0.05) made of 10 losses and 6 gains: its interval holds 0, so it passes."""
    base = [1.0] * 24 + [0.0] * 16
    cand = [0.0] * 10 + [1.0] * 14 + [1.0] * 6 + [0.0] * 10
    result = compare(report(base), report(cand), GATE)
    hit = result.metrics[0]
    assert hit.diff == pytest.approx(-0.1)
    assert hit.ci_low < 0 < hit.ci_high
    assert hit.passed and result.exit_code == PASS
    assert not any("worse by" in f for f in hit.failures)


def test_floors_and_ceilings_fail() -> None:
    assert compare(report([0.4] * 40), report([0.4] * 40), GATE).exit_code == REGRESSION  # floor 0.5
    assert compare(report(BASE), report(BASE, leaks=1), GATE).exit_code == REGRESSION  # any leak
    assert compare(report(BASE), report(BASE, p95=2000), GATE).exit_code == REGRESSION  # latency ceiling


def test_reports_of_different_datasets_are_unusable() -> None:
    with pytest.raises(EvalInputError, match="another dataset"):
        compare(report(BASE, sha="a"), report(BASE, sha="b"), GATE)


def test_bootstrap_is_deterministic() -> None:
    worse = [0.0] * 5 + [1.0] * 35
    a = compare(report(BASE), report(worse), GATE).metrics[0]
    b = compare(report(BASE), report(worse), GATE).metrics[0]
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)


RETRIEVED = ["a.md", "b.md", "c.md", "gold.md", "e.md"]


def retrieval_report(hit: float, retrieved: list[str], *, similarity: float = 0.5) -> dict[str, Any]:
    """Forty questions; q0 retrieves ``retrieved`` (its gold document is gold.md) and scores ``hit``."""
    result = report([hit] + [1.0] * 39)
    for q in result["questions"]:
        q["retrieved"], q["gold"] = list(RETRIEVED), ["gold.md"]
        q["metrics"].update(latency_ms=120.0, cost_usd=1e-7)
    result["questions"][0]["retrieved"] = retrieved
    result["questions"][1]["metrics"]["hit_at_k"] = similarity  # a second gated score, moved by the caller
    result["aggregates"].update(latency_p50_ms=90.0, cost_per_question_usd=1e-7)
    return result


def test_an_unchanged_run_lists_no_question_and_says_so() -> None:
    """Scores that differ only by float noise (below the epsilon) are no change."""
    result = compare(retrieval_report(1.0, RETRIEVED), retrieval_report(1.0, RETRIEVED, similarity=0.5 + 1e-9), GATE)
    assert result.changed_questions == []
    assert "No question's gated scores changed" in markdown(result)
    assert "No question&#x27;s gated scores changed" in html_report(result)
    assert "-0.000" not in markdown(result)


def test_a_change_beyond_the_epsilon_is_listed() -> None:
    moved = 0.5 + 10 * SCORE_EPSILON
    result = compare(retrieval_report(1.0, RETRIEVED), retrieval_report(1.0, RETRIEVED, similarity=moved), GATE)
    assert [q["id"] for q in result.changed_questions] == ["q1"]


def test_markdown_shows_the_full_retrieved_lists_with_gold_marked() -> None:
    """q0's gold document was fourth before and is gone after: the report must show exactly that."""
    after = ["a.md", "b.md", "c.md", "x.md", "e.md", "f.md"]
    result = compare(retrieval_report(1.0, RETRIEVED), retrieval_report(0.0, after), GATE)
    text = markdown(result)
    section = text.split("#### q0 ")[1]
    assert "| 4 | **gold.md** (gold) | x.md | changed |" in section
    assert "| 6 | (none) | f.md | changed |" in section
    assert "| 1 | a.md | a.md |  |" in section
    assert "gold.md: 4 -> not retrieved" in section
    assert "| hit_at_k | 1.000 | 0.000 | -1.000 |" in section
    assert "-1.000 is one metric lost entirely" in text  # what a score change means
    assert "| latency_ms | 120.0 ms | 120.0 ms |" in section


def test_html_renders_question_diffs_as_tables_with_every_measure() -> None:
    after = ["a.md", "b.md", "c.md", "x.md", "e.md"]
    result = compare(retrieval_report(1.0, RETRIEVED), retrieval_report(0.0, after), GATE)
    page = html_report(result)
    assert page.startswith("<!doctype html>") and html_fragment(result) in page
    assert "<pre>" not in page and '"baseline_retrieved"' not in page  # no raw JSON
    assert "<tr class=changed><td class='num'>4</td><td class='gold'>gold.md (gold)</td><td>x.md</td></tr>" in page
    assert "<tr><td class='num'>1</td><td>a.md</td><td>a.md</td></tr>" in page  # unchanged ranks not highlighted
    assert "<tr class='worse'><td>hit_at_k</td>" in page
    for row in ("latency_p50_ms", "latency_p95_ms", "cost_per_question_usd", "hit_at_k", "pii_leak"):
        assert f"<td>{row}</td>" in page
    assert "100.0 ms" in page and "$0.0000001" in page  # units, not bare numbers
