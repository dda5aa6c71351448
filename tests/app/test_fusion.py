"""Hybrid fusion of two candidate lists, by rank and by normalized score."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from app import search_sql
from app.fusion import Fusion, fuse, keyword_bound
from app.search_sql import Bm25, ChunkHit, QueryTerm, TermStatistics
from core.access import DEFAULT_COLLECTION
from core.embedding import Embedder
from tests.ingest.test_pipeline import ingest
from tests.utils.corpus import write_corpus


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
    fusion = Fusion(method="convex", vector_weight=3.0, keyword_weight=1.0, normalization="minmax")
    fused = fuse(VECTOR, KEYWORD, 10, fusion, keyword_bound=100.0)  # minmax ignores the bound
    vector = {1: 1.0, 2: 0.9, 3: 0.0}
    keyword = {3: 1.0, 4: 1 / 7, 1: 0.0}
    expected = {c: 0.75 * vector.get(c, 0.0) + 0.25 * keyword.get(c, 0.0) for c in (1, 2, 3, 4)}
    assert {h.chunk_id: h.score for h in fused} == pytest.approx(expected)


def test_bound_keeps_cosine_and_divides_bm25_by_the_bound() -> None:
    fused = fuse(VECTOR, KEYWORD, 10, Fusion(method="convex", vector_weight=3.0, keyword_weight=1.0), keyword_bound=8.0)
    vector = {1: 0.90, 2: 0.85, 3: 0.40}
    keyword = {3: 1.5, 4: 0.75, 1: 0.625}
    missing = {"vector": 0.40, "keyword": 0.625}  # not in a list: scored as that list's last candidate
    expected = {
        c: 0.75 * vector.get(c, missing["vector"]) + 0.25 * keyword.get(c, missing["keyword"]) for c in (1, 2, 3, 4)
    }
    assert {h.chunk_id: h.score for h in fused} == pytest.approx(expected)
    assert [h.chunk_id for h in fused] == sorted(expected, key=lambda c: -expected[c])


@pytest.mark.parametrize(("bound", "first"), [(1.0, 2), (10.0, 1)])
def test_under_bound_the_keyword_side_weighs_as_much_as_it_matched(bound: float, first: int) -> None:
    """Chunk 2 is the best keyword hit: it overtakes the better vector hit only when it matched the
    question well (score near the bound). Min-max stretches every list to [0, 1], so it cannot tell."""
    vector, keyword = hits((1, 0.80), (2, 0.70)), hits((2, 1.0), (3, 0.1))
    bounded = Fusion(method="convex", vector_weight=1.0, keyword_weight=0.3)
    assert fuse(vector, keyword, 3, bounded, keyword_bound=bound)[0].chunk_id == first
    stretched = replace(bounded, normalization="minmax")
    assert [h.chunk_id for h in fuse(vector, keyword, 3, stretched, keyword_bound=bound)] == [1, 2, 3]


def test_keyword_bound_is_one_occurrence_of_each_term_at_average_length() -> None:
    stats = TermStatistics(chunks=10, avg_length=5.0, terms=[QueryTerm("a", 1, 2.0), QueryTerm("b", 4, 0.5)])
    assert keyword_bound(stats, Bm25(k1=1.5)) == pytest.approx(2.5 / 2.5)
    assert keyword_bound(TermStatistics(chunks=10, avg_length=5.0, terms=[]), Bm25()) == 0.0


@pytest.mark.parametrize("k1", [0.9, 1.5])
def test_a_chunk_holding_each_question_term_once_scores_the_bound(
    conn: psycopg.Connection, embedder: Embedder, tmp_path: Path, k1: float
) -> None:
    """The unit is what BM25 itself gives such a chunk (without length normalization), so the two cannot drift."""
    docs = {f"notes/n{i}.txt": f"Plain words about topic {i} and weather {i % 3} today.\n" for i in range(8)}
    docs["notes/target.txt"] = "Quokka sightings near the harbour were rare this winter.\n"
    version = ingest(conn, embedder, write_corpus(tmp_path / "c", docs, with_jsonl=False)).index_version
    question = "quokka harbour winter"
    bm25 = Bm25(k1=k1, b=0.0)
    hits_ = search_sql.search_keyword(conn, version, question, 3, collection=DEFAULT_COLLECTION, bm25=bm25)
    stats = search_sql.term_statistics(conn, version, question, collection=DEFAULT_COLLECTION)
    assert hits_[0].source.endswith("target.txt") and len(stats.terms) == 3
    assert hits_[0].score == pytest.approx(keyword_bound(stats, bm25))


@pytest.mark.parametrize(("method", "normalization"), [("rrf", "bound"), ("convex", "bound"), ("convex", "minmax")])
def test_one_empty_list_keeps_the_other_ranking_and_top_k_cuts(method: str, normalization: str) -> None:
    fusion = Fusion(method=method, normalization=normalization)  # type: ignore[arg-type]
    assert [h.chunk_id for h in fuse(VECTOR, [], 2, fusion)] == [1, 2]
    assert [h.chunk_id for h in fuse([], KEYWORD, 10, fusion)] == [3, 4, 1]
    assert fuse([], [], 5, fusion) == []


def test_equal_scores_tie_break_on_chunk_id() -> None:
    same = hits((9, 0.5), (7, 0.5))
    assert [h.chunk_id for h in fuse(same, [], 2, Fusion(method="convex"))] == [7, 9]
    assert fuse(same, [], 2, Fusion(method="convex"))[0].text == "text 7"  # the hit itself, score replaced
