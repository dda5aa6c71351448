"""The drift signals, their groups and tests, and how one window is judged against the reference.

A signal belongs to a group (question, retrieval, answer, corpus); its test's p-value is compared
with ``alpha / len(group)`` (Bonferroni within the group), and scalar signals must also move the
PSI by ``psi_min``. The alarm is raised when a signal drifted on ``consecutive`` windows in a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from core.config import DriftSettings
from core.drift.stats import State, TestResult, mmd_test, rate_test, scalar_test

Kind = Literal["embedding", "scalar", "rate"]
Group = Literal["question", "retrieval", "answer", "corpus"]


@dataclass(frozen=True)
class Signal:
    """One monitored measure."""

    name: str
    group: Group
    kind: Kind
    description: str


SIGNALS: dict[str, Signal] = {
    s.name: s
    for s in (
        Signal("question_embedding", "question", "embedding", "question embeddings (MMD, permutation p)"),
        Signal("top_score", "retrieval", "scalar", "top-1 retrieval score (KS, PSI)"),
        Signal("score_margin", "retrieval", "scalar", "top-1 minus top-2 score (KS, PSI)"),
        Signal("empty_retrieval", "retrieval", "rate", "share of questions that retrieved nothing (Fisher)"),
        Signal("answer_tokens", "answer", "scalar", "answer length in tokens (KS, PSI)"),
        Signal("cost_usd", "answer", "scalar", "cost per answer (KS, PSI)"),
        Signal("pii_entities", "answer", "scalar", "PII entities filtered per answer (KS, PSI)"),
        Signal("refusal", "answer", "rate", "share of answers that declined (Fisher)"),
        Signal("support_share", "answer", "scalar", "share of answer sentences a cited chunk supports (KS, PSI)"),
        Signal("pii_blocked", "answer", "rate", "share of questions refused for blocked personal data (Fisher)"),
        Signal("corpus_embedding", "corpus", "embedding", "newly ingested chunks vs the index (MMD)"),
    )
}


def group_size(group: Group) -> int:
    """Signals in a group: the Bonferroni divisor."""
    return sum(1 for s in SIGNALS.values() if s.group == group)


@dataclass(frozen=True)
class Judgement:
    """A window's verdict on one signal."""

    state: State
    n: int
    reference_n: int
    test: TestResult | None = None


def judge(
    signal: Signal,
    reference: np.ndarray | None,
    window: np.ndarray,
    settings: DriftSettings,
    *,
    seed: int = 0,
) -> Judgement:
    """Compare one window with the reference: ok, drift, not enough data, or no reference."""
    n = len(window)
    if reference is None or len(reference) == 0:
        return Judgement("no_reference", n, 0)
    if signal.kind == "embedding" and n and reference.shape[1:] != window.shape[1:]:
        return Judgement("no_reference", n, 0)  # another embedding model since the pin: pin again
    if n < settings.min_questions:
        return Judgement("not_enough_data", n, len(reference))
    if n > settings.max_questions:
        rng = np.random.default_rng(seed)
        window = window[np.sort(rng.choice(n, settings.max_questions, replace=False))]
    test = run_test(signal, reference, window, settings, seed=seed)
    alpha = settings.alpha / group_size(signal.group)
    drifted = test.p_value < alpha and (test.psi is None or test.psi >= settings.psi_min)
    return Judgement("drift" if drifted else "ok", n, len(reference), test)


def run_test(
    signal: Signal, reference: np.ndarray, window: np.ndarray, settings: DriftSettings, *, seed: int = 0
) -> TestResult:
    """The test a signal's kind calls for."""
    if signal.kind == "embedding":
        return mmd_test(reference, window, permutations=settings.permutations, seed=seed)
    if signal.kind == "rate":
        return rate_test(reference, window)
    return scalar_test(reference, window)
