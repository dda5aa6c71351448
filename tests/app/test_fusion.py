"""Hybrid fusion of two candidate lists, by rank and by normalized score."""

from __future__ import annotations

import pytest

from app.fusion import Fusion, fuse
from app.search_sql import ChunkHit


def hits(*pairs: tuple[int, float]) -> list[ChunkHit]:
    return [ChunkHit(cid, cid, f"s{cid}", "", "", f"text {cid}", 0, score) for cid, score in pairs]


VECTOR = hits((1, 0.90), (2, 0.85), (3, 0.40))
KEYWORD = hits((3, 12.0), (4, 6.0), (1, 5.0))


def test_rrf_adds_weighted_reciprocal_ranks() -> None:
    fused = fuse(VECTOR, KEYWORD, 10, Fusion(method="rrf", rrf_k=60, vector_weight=1.0, keyword_weight=0.5))
    expected = {1: 1 / 61 + 0.5 / 63, 2: 1 / 62, 3: 1 / 63 + 0.5 / 61, 4: 0.5 / 62}
    assert {h.chunk_id: h.score for h in fused} == pytest.approx(expected)
    assert [h.chunk_id for h in fused] == sorted(expected, key=lambda c: -expected[c])


def test_convex_combines_min_max_normalized_scores() -> None:
    fused = fuse(VECTOR, KEYWORD, 10, Fusion(method="convex", vector_weight=3.0, keyword_weight=1.0))
    vector = {1: 1.0, 2: 0.9, 3: 0.0}
    keyword = {3: 1.0, 4: 1 / 7, 1: 0.0}
    expected = {c: 0.75 * vector.get(c, 0.0) + 0.25 * keyword.get(c, 0.0) for c in (1, 2, 3, 4)}
    assert {h.chunk_id: h.score for h in fused} == pytest.approx(expected)


@pytest.mark.parametrize("method", ["rrf", "convex"])
def test_one_empty_list_keeps_the_other_ranking_and_top_k_cuts(method: str) -> None:
    fusion = Fusion(method=method)  # type: ignore[arg-type]
    assert [h.chunk_id for h in fuse(VECTOR, [], 2, fusion)] == [1, 2]
    assert [h.chunk_id for h in fuse([], KEYWORD, 10, fusion)] == [3, 4, 1]
    assert fuse([], [], 5, fusion) == []


def test_equal_scores_tie_break_on_chunk_id() -> None:
    same = hits((9, 0.5), (7, 0.5))
    assert [h.chunk_id for h in fuse(same, [], 2, Fusion(method="convex"))] == [7, 9]
    assert fuse(same, [], 2, Fusion(method="convex"))[0].text == "text 7"  # the hit itself, score replaced
