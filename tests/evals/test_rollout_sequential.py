"""The rollout's sequential test on synthetic paired differences with known means."""

from __future__ import annotations

import numpy as np
import pytest

from app.rollouts.measures import degradation, topk_overlap
from app.rollouts.sequential import decide
from core.config import RolloutSettings

GUARDS = RolloutSettings(guards={"refused": 0.15, "latency_ms": 200.0}, min_samples=20, max_samples=400)


def run(mean: dict[str, float], sd: dict[str, float], seed: int, guards: RolloutSettings = GUARDS) -> tuple[str, int]:
    """Feed samples one at a time until the test decides; (verdict, samples taken)."""
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {name: [] for name in guards.guards}
    for n in range(1, guards.max_samples + 1):
        for name in values:
            values[name].append(float(rng.normal(mean[name], sd[name])))
        decision = decide(values, guards)
        if decision.verdict != "continue":
            return decision.verdict, n
    raise AssertionError("no decision by max_samples")


def test_no_difference_is_not_rolled_back() -> None:
    verdicts = [run({"refused": 0.0, "latency_ms": 0.0}, {"refused": 0.3, "latency_ms": 150.0}, s) for s in range(40)]
    rollbacks = sum(v == "rollback" for v, _ in verdicts)
    assert rollbacks <= 4, verdicts  # alpha = 0.05 over two measures: a handful of 40 at most
    assert all(n <= GUARDS.max_samples for _, n in verdicts)


def test_large_degradation_is_rolled_back_quickly() -> None:
    verdicts = [run({"refused": 0.5, "latency_ms": 0.0}, {"refused": 0.4, "latency_ms": 150.0}, s) for s in range(20)]
    assert all(v == "rollback" for v, _ in verdicts), verdicts
    assert max(n for _, n in verdicts) <= 60


def test_degradation_at_the_margin_is_caught_at_about_beta() -> None:
    verdicts = [run({"refused": 0.15, "latency_ms": 0.0}, {"refused": 0.35, "latency_ms": 150.0}, s) for s in range(40)]
    assert sum(v == "rollback" for v, _ in verdicts) >= 34, verdicts  # beta = 0.05: about 38 of 40


def test_identical_answers_pass_at_min_samples_and_breach_names_the_measure() -> None:
    same = {"refused": [0.0] * 20, "latency_ms": [0.0] * 20}
    assert decide({k: v[:19] for k, v in same.items()}, GUARDS).verdict == "continue"
    assert decide(same, GUARDS).verdict == "pass"
    worse = decide({"refused": [1.0] * 20, "latency_ms": [0.0] * 20}, GUARDS)
    assert worse.verdict == "rollback" and worse.reason is not None and worse.reason.startswith("refused worse by 1")


def test_degradation_is_signed_by_direction() -> None:
    live = {"citations": 5.0, "latency_ms": 100.0, "documents": [1, 2, 3, 4]}
    cand = {"citations": 1.0, "latency_ms": 300.0, "documents": [1]}
    assert degradation("citations", live, cand) == 4.0  # fewer citations: worse
    assert degradation("latency_ms", live, cand) == 200.0  # slower: worse
    assert degradation("topk_overlap", live, cand) == pytest.approx(0.75)
    assert degradation("topk_overlap", live, live) == 0.0
    assert topk_overlap({"documents": []}, {"documents": []}) == 1.0
    assert degradation("answer_chars", live, cand) is None


def test_guards_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown rollout measure"):
        RolloutSettings(guards={"nope": 1.0})
    with pytest.raises(ValueError, match="must be > 0"):
        RolloutSettings(guards={"refused": 0.0})
    with pytest.raises(ValueError, match="max_samples"):
        RolloutSettings(min_samples=50, max_samples=10)
