"""Hybrid fusion: one ranking from the vector and keyword candidate lists.

Two families, both weighted: reciprocal rank fusion (ranks only; robust when one retriever's scores
mean little) and a convex combination of min-max normalized scores (keeps how far apart candidates
are, which matters when both retrievers are good). bench/retrieval_quality.py compares them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from app.search_sql import ChunkHit

FusionMethod = Literal["rrf", "convex"]


@dataclass(frozen=True)
class Fusion:
    """How two candidate lists become one."""

    method: FusionMethod = "convex"
    vector_weight: float = 1.0
    keyword_weight: float = 1.0
    rrf_k: int = 60


DEFAULT_FUSION = Fusion()


def fuse(
    vector_hits: Sequence[ChunkHit], keyword_hits: Sequence[ChunkHit], top_k: int, fusion: Fusion
) -> list[ChunkHit]:
    """The ``top_k`` chunks of both lists by fused score (ties: lower chunk id first), scores replaced."""
    if fusion.method == "rrf":
        vector_part = _rrf(vector_hits, fusion.rrf_k)
        keyword_part = _rrf(keyword_hits, fusion.rrf_k)
    else:
        vector_part = _min_max(vector_hits)
        keyword_part = _min_max(keyword_hits)
    total = fusion.vector_weight + fusion.keyword_weight
    if fusion.method == "convex" and total > 0:
        wv, wk = fusion.vector_weight / total, fusion.keyword_weight / total
    else:
        wv, wk = fusion.vector_weight, fusion.keyword_weight
    hits = {hit.chunk_id: hit for hit in (*keyword_hits, *vector_hits)}
    scores = {cid: wv * vector_part.get(cid, 0.0) + wk * keyword_part.get(cid, 0.0) for cid in hits}
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
