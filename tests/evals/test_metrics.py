"""Retrieval metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from evals.metrics import hit_at_k, mrr_at_k, ndcg_at_k, recall_at_k, unique_in_order


def test_perfect_and_empty_rankings() -> None:
    qrels = {"a": 1, "b": 1}
    assert ndcg_at_k(["a", "b", "c"], qrels) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "y"], qrels) == 0.0
    assert ndcg_at_k(["a"], {}) == 0.0


def test_ndcg_discounts_by_rank() -> None:
    # one relevant doc at rank 2: DCG = 1/log2(3), IDCG = 1
    assert ndcg_at_k(["x", "a"], {"a": 1}) == pytest.approx(1 / math.log2(3))


def test_graded_relevance_prefers_the_better_document_first() -> None:
    qrels = {"a": 2, "b": 1}
    assert ndcg_at_k(["a", "b"], qrels) > ndcg_at_k(["b", "a"], qrels)


def test_recall_mrr_hit() -> None:
    qrels = {"a": 1, "b": 1, "c": 0}
    ranked = ["x", "b", "c", "y"]
    assert recall_at_k(ranked, qrels, 10) == 0.5
    assert recall_at_k(ranked, qrels, 1) == 0.0
    assert mrr_at_k(ranked, qrels) == 0.5
    assert hit_at_k(ranked, qrels, 2) == 1.0 and hit_at_k(ranked, qrels, 1) == 0.0


def test_unique_in_order() -> None:
    assert unique_in_order(["a", "b", "a", "c", "b"]) == ["a", "b", "c"]
