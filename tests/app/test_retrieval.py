"""Retrieval modes and the LangChain retriever over the ingested samples."""

from __future__ import annotations

import time

import pytest

from app import search_sql
from app.fusion import keyword_bound
from app.retrieval import RagopsRetriever, RetrievalQuery, active_version, bm25_of, search
from core.access import DEFAULT_COLLECTION
from core.config import RetrievalSettings
from core.db import Database
from core.embedding import Embedder

QUESTION = "How many days of parental leave does the primary caregiver get?"
EXPECTED = "handbook/parental_leave.md"


@pytest.mark.parametrize("mode", ["vector", "keyword", "hybrid"])
def test_each_mode_finds_the_document(served_database: Database, embedder: Embedder, mode: str) -> None:
    settings = RetrievalSettings(mode=mode)
    with served_database.connect() as conn:
        version = active_version(conn)
        vector = None if mode == "keyword" else embedder.embed_query(QUESTION)
        hits = search(conn, version, settings, RetrievalQuery(QUESTION, 5, DEFAULT_COLLECTION), vector)
    assert EXPECTED in [h.source for h in hits[:3]]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_hybrid_fuses_cosine_with_bm25_over_the_questions_bound(served_database: Database, embedder: Embedder) -> None:
    settings = RetrievalSettings(mode="hybrid", vector_weight=1.0, keyword_weight=0.3, candidates=20)
    vector = embedder.embed_query(QUESTION)
    with served_database.connect() as conn:
        version = active_version(conn)
        hits = search(conn, version, settings, RetrievalQuery(QUESTION, 5, DEFAULT_COLLECTION), vector)
        common = {"collection": DEFAULT_COLLECTION}
        nearest = search_sql.search_vector(conn, version, vector, 20, ef_search=settings.ef_search, **common)
        cosine = {h.chunk_id: h.score for h in nearest}
        matched = search_sql.search_keyword(conn, version, QUESTION, 20, bm25=bm25_of(settings), **common)
        bm25 = {h.chunk_id: h.score for h in matched}
        bound = keyword_bound(search_sql.term_statistics(conn, version, QUESTION, **common), bm25_of(settings))
    assert bound > 0 and len(hits) == 5
    for hit in hits:
        expected = (
            cosine.get(hit.chunk_id, min(cosine.values())) + 0.3 * bm25.get(hit.chunk_id, min(bm25.values())) / bound
        ) / 1.3
        assert hit.score == pytest.approx(expected)


def test_min_score_cuts_weak_hits(served_database: Database, embedder: Embedder) -> None:
    with served_database.connect() as conn:
        version = active_version(conn)
        vector = embedder.embed_query(QUESTION)
        loose = search(
            conn, version, RetrievalSettings(mode="vector"), RetrievalQuery(QUESTION, 10, DEFAULT_COLLECTION), vector
        )
        cut = loose[2].score
        strict = search(
            conn,
            version,
            RetrievalSettings(mode="vector", min_score=cut),
            RetrievalQuery(QUESTION, 10, DEFAULT_COLLECTION),
            vector,
        )
    assert strict == [h for h in loose if h.score >= cut] and len(strict) < len(loose)


def test_filtered_vector_search_still_returns_top_k(served_database: Database, embedder: Embedder) -> None:
    """Iterative HNSW scans: a filter matching few rows must not starve the result."""
    with served_database.connect() as conn:
        version = active_version(conn)
        query = RetrievalQuery("anything about the product", 8, DEFAULT_COLLECTION, {"product": "track"})
        settings = RetrievalSettings(mode="vector", ef_search=10)
        hits = search(conn, version, settings, query, embedder.embed_query("product"))
    assert len(hits) == 8
    assert all(h.source.startswith("product/kb_articles.jsonl#") for h in hits)


def test_langchain_retriever(served_database: Database, embedder: Embedder) -> None:
    with served_database.pool(2) as pool:
        retriever = RagopsRetriever(pool=pool, embedder=embedder, settings=RetrievalSettings(top_k=3))
        documents = retriever.invoke(QUESTION)
        with pool.connection() as conn:  # the retriever is search() in LangChain's types: same hits, same order
            version = active_version(conn)
            hits = search(
                conn,
                version,
                RetrievalSettings(top_k=3),
                RetrievalQuery(QUESTION, 3, DEFAULT_COLLECTION),
                embedder.embed_query(QUESTION),
            )
    assert [(d.page_content, d.metadata["chunk_id"], d.metadata["score"]) for d in documents] == [
        (h.text, h.chunk_id, h.score) for h in hits
    ]
    assert EXPECTED in [d.metadata["source"] for d in documents]
    assert {d.metadata["index_version"] for d in documents} == {version.name}


def test_hybrid_search_on_two_connections_answers_as_on_one(served_database: Database, embedder: Embedder) -> None:
    """With a pool, BM25 runs on a second connection beside the vector search: same hits. With the
    pool's only connection taken, it does not wait for one: the two searches run one after the other."""
    settings = RetrievalSettings(mode="hybrid")
    query = RetrievalQuery(QUESTION, 5, DEFAULT_COLLECTION)
    vector = embedder.embed_query(QUESTION)
    with served_database.connect() as conn:
        version = active_version(conn)
        alone = search(conn, version, settings, query, vector)
        with served_database.pool(2) as pool:
            assert search(conn, version, settings, query, vector, pool=pool) == alone
            pool.wait()
            with pool.connection(), pool.connection():  # every connection of the pool busy
                started = time.perf_counter()
                assert search(conn, version, settings, query, vector, pool=pool) == alone
                assert time.perf_counter() - started < 5  # the pool's own timeout is 30 s
    assert EXPECTED in [h.source for h in alone[:3]]
