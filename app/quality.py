"""Reference-free measures of one answer: no gold answer and no model beyond the embedder.

What online evaluation computes for live traffic, where nobody wrote a reference: how well
retrieval found something (top score, margin to the runner-up), whether the answer refused,
how many sources it cites, and which share of its sentences a cited chunk supports. No model runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypeVar

from app.generators.base import NOT_FOUND_ANSWER
from app.generators.extractive import content_words
from ingest.sentences import split_sentences

_CITATION = re.compile(r"\[(\d{1,3})\]")
T = TypeVar("T")


def refused(answer: str) -> bool:
    """Whether the answer says the documents do not hold the answer."""
    return NOT_FOUND_ANSWER.lower().rstrip(".") in answer.lower()


def cited_numbers(answer: str, offered: int) -> list[int]:
    """The citation numbers ``[n]`` the answer refers to, in order of first use (only ones that were offered)."""
    seen: dict[int, None] = {}
    for match in _CITATION.finditer(answer):
        n = int(match.group(1))
        if 1 <= n <= offered:
            seen.setdefault(n, None)
    return list(seen)


def cited(answer: str, offered: Sequence[T]) -> list[T]:
    """What the answer cites of ``offered`` (numbered ``[1]``... in order), all of it when it cites nothing."""
    numbers = cited_numbers(answer, len(offered))
    return [offered[n - 1] for n in numbers] if numbers else list(offered)


def claims(answer: str) -> list[str]:
    """The answer's sentences without their citation markers (what must be supported)."""
    return [s for s in (_CITATION.sub("", part).strip() for part in split_sentences(answer)) if len(s) >= 12]


def top_score_and_margin(scores: Sequence[float]) -> tuple[float | None, float | None]:
    """Retrieval's best score and its lead over the second (None where there are too few hits)."""
    if not scores:
        return None, None
    ordered = sorted(scores, reverse=True)
    return ordered[0], (ordered[0] - ordered[1]) if len(ordered) > 1 else None


def support(sentences: Sequence[str], chunks: Sequence[str], threshold: float) -> float | None:
    """Share of ``sentences`` with ``threshold`` of their content words in one cited chunk (None: nothing to judge).

    Word overlap rather than embedding cosine: measured on the eval set's real answers against the
    same answers paired with another question's chunks (tests/evals/test_online_support.py), it
    separated them better (ROC AUC 0.99 at 0.7, against 0.93 for the best cosine threshold to the
    stored chunk vectors), and it needs no model, so the worker measures many answers a second.
    """
    if not sentences or not chunks:
        return None
    chunk_words = [content_words(chunk) for chunk in chunks]
    supported = 0
    for sentence in sentences:
        words = content_words(sentence)
        if words and max(len(words & cw) for cw in chunk_words) >= threshold * len(words):
            supported += 1
    return supported / len(sentences)


def support_share(answer: str, cited_texts: Sequence[str], threshold: float) -> float | None:
    """Share of the answer's sentences the texts it cites support (None for a refusal, or nothing to judge)."""
    if refused(answer):
        return None
    return support(claims(answer), cited_texts, threshold)
