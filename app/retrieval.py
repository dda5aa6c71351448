"""Retrieval: vector, keyword or hybrid search over the active index version.

Also a langchain-core ``BaseRetriever`` so LangChain chains can use ragops' index directly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import psycopg
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.retrievers import BaseRetriever
from psycopg_pool import ConnectionPool, PoolTimeout
from pydantic import ConfigDict

from app import search_sql
from app.fusion import DEFAULT_FUSION, Fusion, fuse, keyword_bound
from app.search_sql import DEFAULT_BM25, Bm25, ChunkHit, TermStatistics
from core.access import DEFAULT_COLLECTION, Grant
from core.config import RetrievalSettings
from core.embedding import Embedder
from core.errors import NoActiveIndex, NotFound
from ingest import documents, versions
from ingest.versions import IndexVersion


@dataclass(frozen=True)
class RetrievalQuery:
    """What to search for."""

    text: str
    top_k: int
    collection: str  # every search reads exactly one collection
    filters: dict[str, Any] | None = None


def active_version(conn: psycopg.Connection, collection: str | None = None) -> IndexVersion:
    """The version answering ``collection`` (None: the default), or :class:`NoActiveIndex` with what to do about it."""
    version = versions.active_index_version(conn, collection)
    if version is None:
        raise NoActiveIndex("no active index: ingest documents first (ragops ingest PATH)")
    return version


def require_collection(conn: psycopg.Connection, collection: str, grant: Grant) -> None:
    """:class:`NotFound` for a collection holding no documents, naming the ones the caller may use."""
    if documents.collection_exists(conn, collection):
        return
    known = [c.name for c in documents.list_collections(conn, grant.collections)]
    raise NotFound(
        f"no collection {collection!r}; this key can use: {', '.join(known) or '(none yet)'}", field="collection"
    )


def search(
    conn: psycopg.Connection,
    version: IndexVersion,
    settings: RetrievalSettings,
    query: RetrievalQuery,
    vector: np.ndarray | None,
    *,
    pool: ConnectionPool | None = None,
    stats: TermStatistics | None = None,
) -> list[ChunkHit]:
    """Run the configured mode; ``vector`` may be None only in keyword mode.

    ``pool``: where hybrid search may borrow a second connection, to run its two searches at once.
    ``stats``: the question's term statistics when the caller has read them already.
    """
    common: dict[str, Any] = {"collection": query.collection, "metadata": query.filters or None}
    if settings.mode == "keyword":
        hits = search_sql.search_keyword(
            conn, version, query.text, query.top_k, bm25=bm25_of(settings), stats=stats, **common
        )
    elif settings.mode == "vector":
        assert vector is not None
        hits = search_sql.search_vector(conn, version, vector, query.top_k, ef_search=settings.ef_search, **common)
    else:
        assert vector is not None
        hits = search_hybrid(
            conn,
            version,
            vector,
            query.text,
            query.top_k,
            candidates=max(settings.candidates, query.top_k),
            fusion=fusion_of(settings),
            bm25=bm25_of(settings),
            ef_search=settings.ef_search,
            pool=pool,
            stats=stats,
            **common,
        )
    if settings.min_score is None:
        return hits
    return [hit for hit in hits if hit.score >= settings.min_score]


def bm25_of(settings: RetrievalSettings) -> Bm25:
    """The BM25 parameters a configuration sets."""
    return Bm25(k1=settings.bm25_k1, b=settings.bm25_b, title_weight=settings.bm25_title_weight)


def fusion_of(settings: RetrievalSettings) -> Fusion:
    """The hybrid fusion a configuration sets."""
    return Fusion(
        method=settings.fusion,
        vector_weight=settings.vector_weight,
        keyword_weight=settings.keyword_weight,
        rrf_k=settings.rrf_k,
        normalization=settings.fusion_normalization,
    )


def search_hybrid(
    conn: psycopg.Connection,
    version: IndexVersion,
    vector: np.ndarray,
    text: str,
    top_k: int,
    *,
    collection: str,
    metadata: dict[str, Any] | None = None,
    candidates: int = 40,
    fusion: Fusion = DEFAULT_FUSION,
    bm25: Bm25 = DEFAULT_BM25,
    ef_search: int = 40,
    pool: ConnectionPool | None = None,
    stats: TermStatistics | None = None,
) -> list[ChunkHit]:
    """``candidates`` chunks from each of vector and BM25 search, fused (:mod:`app.fusion`) into ``top_k``.

    With a ``pool`` that has a connection free, BM25 runs on it while the vector search runs on
    ``conn``: the answer waits for the slower of the two, not for both. ``stats``: the question's
    term statistics, when the caller has read them (else the BM25 side reads them).
    """
    common: dict[str, Any] = {"collection": collection, "metadata": metadata}
    with _spare_connection(pool) as other:

        def keyword_search() -> tuple[list[ChunkHit], float | None]:
            db = other or conn
            terms = stats or search_sql.term_statistics(db, version, text, collection=collection)
            hits = search_sql.search_keyword(db, version, text, candidates, bm25=bm25, stats=terms, **common)
            bounded = fusion.method == "convex" and fusion.normalization == "bound"
            return hits, keyword_bound(terms, bm25) if bounded else None

        keyword = _in_background(keyword_search, run=other is not None)
        try:
            vector_hits = search_sql.search_vector(conn, version, vector, candidates, ef_search=ef_search, **common)
        finally:
            keyword_hits, bound = keyword()  # the spare connection goes back only once its search is done
    return fuse(vector_hits, keyword_hits, top_k, fusion, bound)


# How long hybrid search waits for a second connection before running its searches one after the
# other: a request already holding one connection must never queue for another (requests holding
# all of a full pool would each wait for a second one that nobody returns).
SPARE_CONNECTION_WAIT_S = 0.002


@contextmanager
def _spare_connection(pool: ConnectionPool | None) -> Iterator[psycopg.Connection | None]:
    """A connection from ``pool`` if one is free at once, else None."""
    if pool is None:
        yield None
        return
    try:
        spare = pool.getconn(timeout=SPARE_CONNECTION_WAIT_S)
    except PoolTimeout:
        yield None
        return
    try:
        yield spare
    finally:
        pool.putconn(spare)


T = TypeVar("T")


def _in_background(fn: Callable[[], T], *, run: bool) -> Callable[[], T]:
    """Start ``fn`` on its own thread (``run``; else it runs when its result is asked for) and
    return what waits for its result, raising what it raised."""
    if not run:
        return fn
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="ragops-bm25", daemon=True)
    thread.start()

    def result() -> T:
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    return result


class RagopsRetriever(BaseRetriever):
    """ragops' index as a LangChain retriever (``retriever.invoke("question")``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    pool: ConnectionPool
    embedder: Embedder
    settings: RetrievalSettings = RetrievalSettings()
    collection: str = DEFAULT_COLLECTION
    filters: dict[str, Any] | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[LCDocument]:
        vector = None if self.settings.mode == "keyword" else self.embedder.embed_query(query)
        with self.pool.connection() as conn:
            version = active_version(conn, self.collection)
            query_ = RetrievalQuery(query, self.settings.top_k, self.collection, self.filters)
            hits = search(conn, version, self.settings, query_, vector, pool=self.pool)
        return [
            LCDocument(
                page_content=hit.text,
                metadata={
                    "chunk_id": hit.chunk_id,
                    "document_id": hit.document_id,
                    "source": hit.source,
                    "title": hit.title,
                    "section": hit.section,
                    "score": hit.score,
                    "index_version": version.name,
                    **hit.metadata,
                },
            )
            for hit in hits
        ]
