"""Hybrid fusion: one ranking from the vector and keyword candidate lists.

Two families, both weighted: reciprocal rank fusion (ranks only; robust when one retriever's scores
mean little) and a convex combination of normalized scores (keeps how far apart candidates are,
which matters when both retrievers are good). bench/retrieval_quality.py compares them.

Convex fusion puts both scores on one scale in one of two ways:

- ``bound`` (the default): each score against what it could be for this question. Cosine is
  already on a fixed scale (1 = the same direction); BM25 is divided by :func:`keyword_bound`, the
  score of an average-length chunk holding each of the question's terms once. A keyword list whose
  best hit matches only a common word of the question therefore weighs little, and one whose best
  hit holds every rare word weighs much: the keyword side's say follows how well it matched.
- ``minmax``: each list stretched to [0, 1] (its best hit is 1.0 however poor it is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from app.search_sql import Bm25, ChunkHit, TermStatistics

FusionMethod = Literal["rrf", "convex"]
Normalization = Literal["bound", "minmax"]


@dataclass(frozen=True)
class Fusion:
    """How two candidate lists become one."""

    method: FusionMethod = "convex"
    vector_weight: float = 1.0
    keyword_weight: float = 1.0
    rrf_k: int = 60
    normalization: Normalization = "bound"  # convex only


DEFAULT_FUSION = Fusion()


def keyword_bound(stats: TermStatistics, bm25: Bm25) -> float:
    """The BM25 score of an average-length chunk holding each of the question's terms once.

    The keyword side's unit under ``bound`` normalization (0.0 when no term of the question occurs).
    A term's contribution saturates at its idf (:class:`~app.search_sql.Bm25`); one occurrence at
    average length gives ``idf / (1 + k1)``, which is what a chunk that plainly matches every word
    scores, so 1.0 means "matches the whole question" whatever the question's length or rarity.
    """
    return sum(term.idf for term in stats.terms) / (1.0 + bm25.k1)


def fuse(
    vector_hits: Sequence[ChunkHit],
    keyword_hits: Sequence[ChunkHit],
    top_k: int,
    fusion: Fusion,
    keyword_bound: float | None = None,
) -> list[ChunkHit]:
    """The ``top_k`` chunks of both lists by fused score (ties: lower chunk id first), scores replaced.

    ``keyword_bound`` (:func:`keyword_bound`) is needed by ``bound`` normalization when there are
    keyword hits; without it the keyword list is divided by its own best score.
    """
    if fusion.method == "rrf":
        vector_part, vector_floor = _rrf(vector_hits, fusion.rrf_k), 0.0
        keyword_part, keyword_floor = _rrf(keyword_hits, fusion.rrf_k), 0.0
    elif fusion.normalization == "bound":
        vector_part, vector_floor = _scaled(vector_hits, 1.0)
        best = max((hit.score for hit in keyword_hits), default=0.0)
        keyword_part, keyword_floor = _scaled(keyword_hits, keyword_bound if keyword_bound else best)
    else:
        vector_part, vector_floor = _min_max(vector_hits), 0.0
        keyword_part, keyword_floor = _min_max(keyword_hits), 0.0
    total = fusion.vector_weight + fusion.keyword_weight
    if fusion.method == "convex" and total > 0:
        wv, wk = fusion.vector_weight / total, fusion.keyword_weight / total
    else:
        wv, wk = fusion.vector_weight, fusion.keyword_weight
    hits = {hit.chunk_id: hit for hit in (*keyword_hits, *vector_hits)}
    scores = {cid: wv * vector_part.get(cid, vector_floor) + wk * keyword_part.get(cid, keyword_floor) for cid in hits}
    ranked = sorted(scores, key=lambda cid: (-scores[cid], cid))[:top_k]
    return [replace(hits[cid], score=scores[cid]) for cid in ranked]


def _rrf(hits: Sequence[ChunkHit], k: int) -> dict[int, float]:
    return {hit.chunk_id: 1.0 / (k + rank) for rank, hit in enumerate(hits, start=1)}


def _min_max(hits: Sequence[ChunkHit]) -> dict[int, float]:
    """Scores mapped to [0, 1] within the list (all 1.0 when they are equal: each is the best there is)."""
    if not hits:
        return {}
    low = min(hit.score for hit in hits)
    spread = max(hit.score for hit in hits) - low
    return {hit.chunk_id: (hit.score - low) / spread if spread > 0 else 1.0 for hit in hits}


def _scaled(hits: Sequence[ChunkHit], unit: float) -> tuple[dict[int, float], float]:
    """Scores divided by ``unit``, and the lowest of them: a chunk missing from a list of the best
    candidates scores at most as much as the last one there, so it is given that score."""
    if not hits or unit <= 0:
        return {}, 0.0
    scaled = {hit.chunk_id: hit.score / unit for hit in hits}
    return scaled, min(scaled.values())
