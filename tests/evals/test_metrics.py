"""Retrieval metrics against hand-computed values; ragas non-LLM answer metrics on known answers."""

from __future__ import annotations

import math

import pytest

from evals.metrics import hit_at_k, mrr_at_k, ndcg_at_k, recall_at_k, unique_in_order
from evals.runner import ragas_scores


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


@pytest.mark.parametrize(
    ("answer", "key_fact", "expected"),
    [
        ("The Starter plan costs $149 per month [1].", "$149", 1.0),
        ("The Starter plan costs 149 dollars a month [1].", "$149", 0.0),  # verbatim, as ragas defines it
        ("The Starter plan costs $149 per month [1].", None, None),  # no key fact: not scored
    ],
)
def test_string_presence_of_the_key_fact(answer: str, key_fact: str | None, expected: float | None) -> None:
    scores = ragas_scores(answer, "The Starter plan costs $149 per month.", [], [], key_fact)
    assert scores.get("string_presence") == expected
    assert 0.0 < scores["rouge_l"] <= 1.0
