"""The sequential test that decides a rollout stage: one SPRT per guarded measure, on paired differences.

For a guarded measure with margin delta, each paired question gives d = how much worse the candidate
is (candidate minus live, signed so that > 0 is worse). Wald's sequential probability ratio test
weighs H0: mean d = 0 (no worse) against H1: mean d = delta (worse by the margin), with d taken as
normal with the variance estimated from the samples so far (floored at (delta/4)^2, so that a run of
identical values is not infinitely sure):

    log LR_n = (delta / s^2) * sum_i (d_i - delta / 2)

It rejects H0 (roll back) once log LR >= log((1 - beta) / alpha), and accepts H0 once
log LR <= log(beta / (1 - alpha)); Wald's bounds keep the chance of rolling back a candidate that is
no worse below about alpha, and of passing one worse by delta below about beta. No decision before
``min_samples``; at ``max_samples`` an undecided measure is judged by the nearer hypothesis (mean d
above or below delta / 2). A stage passes when every measure accepted H0, and fails at the first breach.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from core.config import RolloutSettings

Verdict = Literal["continue", "pass", "rollback"]


@dataclass(frozen=True)
class MeasureTest:
    """One guarded measure's test state."""

    name: str
    margin: float
    n: int
    mean: float
    log_lr: float
    verdict: Verdict

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"measure": self.name, "margin": self.margin, "n": self.n, "mean_degradation": round(self.mean, 6),
                "log_lr": round(self.log_lr, 4), "verdict": self.verdict}  # fmt: skip


@dataclass(frozen=True)
class Decision:
    """The stage's verdict, with every measure's state and, for a rollback, why."""

    verdict: Verdict
    samples: int
    tests: list[MeasureTest] = field(default_factory=list)
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (stored with the rollout)."""
        return {"verdict": self.verdict, "samples": self.samples, "reason": self.reason,
                "measures": [t.as_dict() for t in self.tests]}  # fmt: skip


def bounds(alpha: float, beta: float) -> tuple[float, float]:
    """Wald's thresholds on the log likelihood ratio: (accept H0 at or below, reject H0 at or above)."""
    return math.log(beta / (1 - alpha)), math.log((1 - beta) / alpha)


def sprt(name: str, margin: float, diffs: list[float], guards: RolloutSettings) -> MeasureTest:
    """The SPRT of one measure over its paired degradations so far."""
    n = len(diffs)
    if n == 0:
        return MeasureTest(name, margin, 0, 0.0, 0.0, "continue")
    mean = sum(diffs) / n
    variance = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    variance = max(variance, (margin / 4) ** 2)
    log_lr = margin / variance * (sum(diffs) - n * margin / 2)
    lower, upper = bounds(guards.alpha, guards.beta)
    verdict: Verdict = "continue"
    if n >= guards.min_samples:
        if log_lr >= upper:
            verdict = "rollback"
        elif log_lr <= lower:
            verdict = "pass"
        elif n >= guards.max_samples:
            verdict = "rollback" if mean > margin / 2 else "pass"
    return MeasureTest(name, margin, n, mean, log_lr, verdict)


def decide(degradations: dict[str, list[float]], guards: RolloutSettings) -> Decision:
    """The stage's verdict from every guarded measure's paired degradations (measure -> values in order)."""
    tests = [sprt(name, margin, degradations.get(name, []), guards) for name, margin in guards.guards.items()]
    samples = max((t.n for t in tests), default=0)
    breached = [t for t in tests if t.verdict == "rollback"]
    if breached:
        reason = "; ".join(
            f"{t.name} worse by {t.mean:.4g} per question on average over {t.n} paired questions "
            f"(guard {t.margin:g}; log likelihood ratio {t.log_lr:.2f})"
            for t in breached
        )
        return Decision("rollback", samples, tests, reason)
    if tests and all(t.verdict == "pass" for t in tests):
        return Decision("pass", samples, tests)
    return Decision("continue", samples, tests)
