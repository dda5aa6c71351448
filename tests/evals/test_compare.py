"""The gate's statistics on hand-made reports: noise passes, real drops fail, bad input is exit 2."""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import EvalInputError
from evals.compare import PASS, REGRESSION, Gate, compare, markdown

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
    assert [q["id"] for q in result.worst_questions][:3] == ["q0", "q1", "q2"]
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
