"""Two-sample statistics for drift: reference sample vs one window of live traffic.

Pure numpy/scipy, no I/O, so the worker, the API, the CLI and ``bench/drift.py`` all judge a
window with the same code. Embeddings are compared with the maximum mean discrepancy (RBF
kernel, median-heuristic bandwidth, permutation p-value); a cross-validated domain classifier's
AUC is kept beside it as the measured alternative. Scalar signals use the two-sample
Kolmogorov-Smirnov test plus the population stability index; rates use Fisher's exact test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import optimize, stats

State = Literal["ok", "drift", "not_enough_data", "no_reference"]
# PSI bins: deciles of the reference, the industry's usual choice.
_PSI_BINS = 10
_PSI_EPS = 1e-4


@dataclass(frozen=True)
class TestResult:
    """One signal's comparison of a window with the reference."""

    statistic: float  # MMD^2, AUC, KS D or the rate difference, by test
    p_value: float
    psi: float | None = None  # scalar signals only
    reference_value: float | None = None  # the reference's mean (rate, median score...)
    window_value: float | None = None  # the window's


def _sq_distances(z: np.ndarray) -> np.ndarray:
    norms = np.einsum("ij,ij->i", z, z)
    d2 = norms[:, None] + norms[None, :] - 2.0 * (z @ z.T)
    np.maximum(d2, 0.0, out=d2)
    return d2


def median_bandwidth(d2: np.ndarray) -> float:
    """The median heuristic: the median pairwise distance of the pooled sample (its square is returned)."""
    upper = d2[np.triu_indices_from(d2, k=1)]
    positive = upper[upper > 0]
    return float(np.median(positive)) if positive.size else 1.0


def mmd_test(reference: np.ndarray, window: np.ndarray, *, permutations: int = 500, seed: int = 0) -> TestResult:
    """Squared MMD (biased V-statistic, RBF kernel) with a permutation p-value.

    The kernel matrix of the pooled sample is built once; every permutation is a reweighting of
    it, so 500 permutations of 600 vectors cost a few hundred milliseconds.
    """
    x, y = np.asarray(reference, dtype=np.float64), np.asarray(window, dtype=np.float64)
    n, m = len(x), len(y)
    z = np.vstack([x, y])
    d2 = _sq_distances(z)
    kernel = np.exp(-d2 / median_bandwidth(d2))
    weights = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    observed = float(weights @ kernel @ weights)
    rng = np.random.default_rng(seed)
    shuffled = np.stack([rng.permutation(weights) for _ in range(permutations)], axis=1)
    null = np.einsum("ib,ib->b", kernel @ shuffled, shuffled)
    p_value = (1 + int(np.sum(null >= observed - 1e-12))) / (1 + permutations)
    return TestResult(statistic=observed, p_value=p_value)


def _logistic_fit(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """L2-regularized logistic regression weights (last entry: intercept), by L-BFGS."""
    xb = np.hstack([x, np.ones((len(x), 1))])

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = xb @ w
        p = 1.0 / (1.0 + np.exp(-z))
        value = float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * w[:-1] @ w[:-1])
        grad = xb.T @ (p - y)
        grad[:-1] += l2 * w[:-1]
        return value, grad

    result = optimize.minimize(loss, np.zeros(xb.shape[1]), jac=True, method="L-BFGS-B", options={"maxiter": 200})
    return np.asarray(result.x)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U over ranks, ties averaged)."""
    ranks = stats.rankdata(scores)
    positives = labels == 1
    n1, n0 = int(positives.sum()), int((~positives).sum())
    if n1 == 0 or n0 == 0:
        return 0.5
    return float((ranks[positives].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def classifier_test(
    reference: np.ndarray, window: np.ndarray, *, folds: int = 5, l2: float = 1.0, seed: int = 0
) -> TestResult:
    """A domain classifier's cross-validated AUC (reference vs window) with a one-sided normal p-value.

    Out-of-fold scores only, so the AUC stays near 0.5 when the two samples are alike; the p-value
    is the Mann-Whitney normal approximation, which ignores the folds' slight dependence.
    """
    x = np.vstack([reference, window]).astype(np.float64)
    y = np.concatenate([np.zeros(len(reference)), np.ones(len(window))])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    scores = np.empty(len(x))
    for fold in range(folds):
        test = order[fold::folds]
        train = np.setdiff1d(order, test)
        w = _logistic_fit(x[train], y[train], l2)
        scores[test] = x[test] @ w[:-1] + w[-1]
    value = auc(scores, y)
    n1, n0 = len(window), len(reference)
    sd = math.sqrt((n0 + n1 + 1) / (12.0 * n0 * n1))
    return TestResult(statistic=value, p_value=float(stats.norm.sf((value - 0.5) / sd)))


def psi(reference: np.ndarray, window: np.ndarray, bins: int = _PSI_BINS) -> float:
    """Population stability index over the reference's quantile bins (0.1 moderate, 0.25 large shift)."""
    ref, win = np.asarray(reference, dtype=np.float64), np.asarray(window, dtype=np.float64)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1) / len(ref)
    actual = np.bincount(np.searchsorted(edges, win, side="right"), minlength=len(edges) + 1) / len(win)
    expected, actual = np.maximum(expected, _PSI_EPS), np.maximum(actual, _PSI_EPS)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def scalar_test(reference: np.ndarray, window: np.ndarray) -> TestResult:
    """Kolmogorov-Smirnov two-sample test, with the PSI and both medians."""
    ref, win = np.asarray(reference, dtype=np.float64), np.asarray(window, dtype=np.float64)
    ks = stats.ks_2samp(ref, win)
    return TestResult(
        statistic=float(ks.statistic),
        p_value=float(ks.pvalue),
        psi=psi(ref, win),
        reference_value=float(np.median(ref)),
        window_value=float(np.median(win)),
    )


def rate_test(reference: np.ndarray, window: np.ndarray) -> TestResult:
    """Fisher's exact test on a 0/1 signal (empty retrieval, refusal, PII block): window rate vs reference rate."""
    ref, win = np.asarray(reference, dtype=bool), np.asarray(window, dtype=bool)
    table = [[int(win.sum()), int((~win).sum())], [int(ref.sum()), int((~ref).sum())]]
    p_value = float(stats.fisher_exact(table).pvalue)
    ref_rate, win_rate = float(ref.mean()), float(win.mean())
    return TestResult(statistic=win_rate - ref_rate, p_value=p_value, reference_value=ref_rate, window_value=win_rate)


def kmeans(vectors: np.ndarray, k: int, *, iterations: int = 50, seed: int = 0) -> np.ndarray:
    """Cluster labels by k-means (k-means++ seeding) on cosine-normalized vectors."""
    x = np.asarray(vectors, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = max(1, min(k, len(x)))
    rng = np.random.default_rng(seed)
    centers = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.min(((x[:, None, :] - np.array(centers)[None]) ** 2).sum(-1), axis=1)
        total = d2.sum()
        centers.append(x[rng.choice(len(x), p=d2 / total)] if total > 0 else x[rng.integers(len(x))])
    c = np.array(centers)
    labels = np.zeros(len(x), dtype=int)
    for _ in range(iterations):
        labels_new = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
        if _ > 0 and np.array_equal(labels_new, labels):
            break
        labels = labels_new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                c[j] = members.mean(axis=0)
    return labels


def consecutive_alarm(states: list[State], consecutive: int) -> bool:
    """The alarm rule: the last ``consecutive`` windows all drifted (a window without enough data breaks the run)."""
    return len(states) >= consecutive and all(s == "drift" for s in states[-consecutive:])
