"""Drift statistics on synthetic samples with known shifts: quiet at zero shift, alarmed at a large one."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import DriftSettings
from core.drift.signals import SIGNALS, judge
from core.drift.stats import auc, classifier_test, consecutive_alarm, kmeans, mmd_test, psi, rate_test

SETTINGS = DriftSettings(min_questions=50, max_questions=500, alpha=0.01, psi_min=0.1)


def gaussians(shift: float, seed: int, n: int = 200, m: int = 100, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A reference and a window from unit Gaussians, the window's mean moved by ``shift`` along every axis."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)), rng.normal(size=(m, dim)) + shift / np.sqrt(dim)


@pytest.mark.parametrize(("shift", "expected"), [(0.0, "ok"), (1.5, "drift")])
def test_question_drift_judges_embedding_shifts(shift: float, expected: str) -> None:
    for seed in range(3):
        reference, window = gaussians(shift, seed)
        assert judge(SIGNALS["question_embedding"], reference, window, SETTINGS, seed=seed).state == expected


def test_mmd_p_value_falls_with_the_shift() -> None:
    p = [mmd_test(*gaussians(shift, 7), permutations=200).p_value for shift in (0.0, 0.5, 1.0, 2.0)]
    assert p[0] > 0.05 and p[-1] < 0.01
    assert p == sorted(p, reverse=True)


@pytest.mark.parametrize(("shift", "drifted"), [(0.0, False), (1.5, True)])
def test_domain_classifier_auc_separates_only_shifted_samples(shift: float, drifted: bool) -> None:
    result = classifier_test(*gaussians(shift, 3))
    assert (result.p_value < 0.01) is drifted
    assert (result.statistic > 0.7) is drifted


@pytest.mark.parametrize(("shift", "expected"), [(0.0, "ok"), (1.0, "drift")])
def test_scalar_signals_use_ks_and_psi(shift: float, expected: str) -> None:
    rng = np.random.default_rng(5)
    reference, window = rng.normal(0.6, 0.1, 300), rng.normal(0.6 - 0.1 * shift, 0.1, 120)
    verdict = judge(SIGNALS["top_score"], reference, window, SETTINGS)
    assert verdict.state == expected
    assert verdict.test is not None and verdict.test.psi is not None
    assert (verdict.test.psi >= 0.1) is (expected == "drift")


def test_rates_use_fisher_exact() -> None:
    reference = np.r_[np.zeros(190), np.ones(10)]  # 5% empty retrievals
    assert rate_test(reference, np.r_[np.zeros(95), np.ones(5)]).p_value > 0.5
    assert rate_test(reference, np.r_[np.zeros(60), np.ones(40)]).p_value < 1e-6
    assert judge(SIGNALS["empty_retrieval"], reference, np.r_[np.zeros(60), np.ones(40)], SETTINGS).state == "drift"


def test_too_few_questions_say_not_enough_data_even_when_far_off() -> None:
    reference, window = gaussians(5.0, 1, m=49)
    verdict = judge(SIGNALS["question_embedding"], reference, window, SETTINGS)
    assert (verdict.state, verdict.n, verdict.test) == ("not_enough_data", 49, None)
    assert judge(SIGNALS["question_embedding"], reference, gaussians(5.0, 1, m=50)[1], SETTINGS).state == "drift"


def test_no_reference_is_its_own_state() -> None:
    assert judge(SIGNALS["top_score"], None, np.ones(100), SETTINGS).state == "no_reference"


def test_alarm_needs_consecutive_drifted_windows() -> None:
    assert not consecutive_alarm(["ok", "drift"], 2)
    assert consecutive_alarm(["ok", "drift", "drift"], 2)
    assert not consecutive_alarm(["drift", "not_enough_data", "drift"], 2)  # a gap breaks the run
    assert consecutive_alarm(["drift"], 1)


def test_psi_is_zero_for_the_same_sample_and_large_for_a_moved_one() -> None:
    values = np.random.default_rng(0).normal(size=1000)
    assert psi(values, values) < 1e-9
    assert psi(values, values + 2) > 1.0


def test_auc_counts_ties_as_half() -> None:
    assert auc(np.array([1.0, 1.0]), np.array([0, 1])) == 0.5
    assert auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0


def test_kmeans_finds_separated_blobs() -> None:
    rng = np.random.default_rng(2)
    blobs = np.vstack([rng.normal(size=(40, 8)) + 10 * np.eye(8)[0], rng.normal(size=(25, 8)) - 10 * np.eye(8)[0]])
    labels = kmeans(blobs, 2)
    assert sorted(np.bincount(labels)) == [25, 40]
    assert len(set(labels[:40])) == 1


def test_vectors_of_another_embedding_model_are_no_reference_not_a_crash() -> None:
    reference, window = gaussians(0.0, 4, dim=16)[0], gaussians(0.0, 4, dim=8)[1]
    assert judge(SIGNALS["question_embedding"], reference, window, SETTINGS).state == "no_reference"
