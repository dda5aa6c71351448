"""Per-answer measures a rollout compares, live against candidate, on the same question.

The seam: :data:`MEASURES` maps a name to a function of one answer (and its cost). The reference-free
measures of online evaluation (support share of answer sentences, PII blocks) register here with
:func:`register_measure`, and become guardable once ``core.config.ROLLOUT_MEASURES`` names them.
``topk_overlap`` is the one paired measure: computed from both sides' cited documents.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.answers import Answer
from app.generators.base import NOT_FOUND_ANSWER
from core.config import ROLLOUT_MEASURES

Measure = Callable[[Answer, float], float]
DOCUMENTS = "documents"  # stored beside the measures: the cited document ids, for topk_overlap

MEASURES: dict[str, Measure] = {
    "retrieval_top_score": lambda answer, _cost: max((c.score for c in answer.citations), default=0.0),
    "refused": lambda answer, _cost: 1.0 if answer.text.strip().startswith(NOT_FOUND_ANSWER) else 0.0,
    "citations": lambda answer, _cost: float(len(answer.citations)),
    "answer_chars": lambda answer, _cost: float(len(answer.text)),
    "latency_ms": lambda answer, _cost: answer.timings.total_ms,
    "cost_usd": lambda _answer, cost: cost,
}


def register_measure(name: str, measure: Measure) -> None:
    """Add (or replace) a per-answer measure, e.g. online evaluation's support share."""
    MEASURES[name] = measure


def measures(answer: Answer, cost_usd: float) -> dict[str, Any]:
    """Every registered measure of one answer, and its cited documents (ids only, never text)."""
    values: dict[str, Any] = {name: float(fn(answer, cost_usd)) for name, fn in MEASURES.items()}
    values[DOCUMENTS] = sorted({c.document_id for c in answer.citations})
    return values


def failed_measures(latency_ms: float) -> dict[str, Any]:
    """The measures of a side that failed to answer: as bad as an answer can be."""
    return {"retrieval_top_score": 0.0, "refused": 1.0, "citations": 0.0, "answer_chars": 0.0,
            "latency_ms": latency_ms, "cost_usd": 0.0, DOCUMENTS: []}  # fmt: skip


def topk_overlap(live: dict[str, Any], candidate: dict[str, Any]) -> float:
    """Share of the live answer's cited documents the candidate cites too (1 when neither cites any)."""
    ours, theirs = set(live.get(DOCUMENTS, [])), set(candidate.get(DOCUMENTS, []))
    if not ours:
        return 1.0 if not theirs else 0.0
    return len(ours & theirs) / len(ours)


def degradation(name: str, live: dict[str, Any], candidate: dict[str, Any]) -> float | None:
    """How much worse the candidate is on ``name`` for one question (> 0: worse); None when unmeasured."""
    if name == "topk_overlap":
        return 1.0 - topk_overlap(live, candidate)
    if name not in live or name not in candidate:
        return None
    diff = float(candidate[name]) - float(live[name])
    return -diff if ROLLOUT_MEASURES.get(name, True) else diff
