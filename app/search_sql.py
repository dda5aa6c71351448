"""The search SQL: vector, keyword and hybrid queries over one index version's chunk table.

Every value is a bind parameter; identifiers only through :mod:`psycopg.sql`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ingest.versions import IndexVersion


@dataclass(frozen=True)
class ChunkHit:
    """One search result."""

    chunk_id: int
    document_id: int
    source: str
    title: str
    section: str
    text: str
    ordinal: int
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)


def _filters(collection: str, metadata: dict[str, Any] | None) -> tuple[sql.Composable, dict[str, Any]]:
    """The WHERE clause every search uses: one collection always (tenancy holds here, not only in routes)."""
    if not isinstance(collection, str):
        raise TypeError("a search must name its collection")
    clauses: list[sql.Composable] = [sql.SQL("c.collection = %(collection)s")]
    params: dict[str, Any] = {"collection": collection}
    if metadata:
        clauses.append(sql.SQL("c.metadata @> %(metadata)s"))
        params["metadata"] = Jsonb(metadata)
    return sql.SQL(" AND ").join(clauses), params


_HIT_COLUMNS = sql.SQL("c.id, c.document_id, d.source, c.title, c.section, c.text, c.ordinal, c.metadata")


def _hits(rows: Iterable[tuple[Any, ...]]) -> list[ChunkHit]:
    return [
        ChunkHit(
            chunk_id=r[0],
            document_id=r[1],
            source=r[2],
            title=r[3],
            section=r[4],
            text=r[5],
            ordinal=r[6],
            metadata=r[7],
            score=float(r[8]),
        )
        for r in rows
    ]


def search_vector(
    conn: psycopg.Connection,
    version: IndexVersion,
    vector: np.ndarray,
    top_k: int,
    *,
    collection: str,
    metadata: dict[str, Any] | None = None,
    exact: bool = False,
    ef_search: int = 40,
) -> list[ChunkHit]:
    """Nearest chunks by cosine similarity (HNSW; ``exact`` forces a sequential scan)."""
    where, params = _filters(collection, metadata)
    params |= {"vector": vector, "k": top_k}
    query = sql.SQL(
        "SELECT {cols}, 1 - (c.embedding <=> %(vector)s) AS score "
        "FROM {table} c JOIN documents d ON d.id = c.document_id "
        "WHERE {where} ORDER BY c.embedding <=> %(vector)s LIMIT %(k)s"
    ).format(cols=_HIT_COLUMNS, table=version.table, where=where)
    with conn.transaction():
        _set_search_options(conn, ef_search=max(ef_search, top_k), exact=exact)
        rows = conn.execute(query, params).fetchall()
    return _hits(rows)


def _set_search_options(conn: psycopg.Connection, *, ef_search: int, exact: bool = False) -> None:
    # set_config(..., true) is SET LOCAL with a bind parameter.
    conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(ef_search),))
    if exact:
        conn.execute("SET LOCAL enable_indexscan = off")


def search_hybrid(
    conn: psycopg.Connection,
    version: IndexVersion,
    vector: np.ndarray,
    text: str,
    top_k: int,
    *,
    candidates: int = 40,
    rrf_k: int = 60,
    vector_weight: float = 1.0,
    keyword_weight: float = 1.0,
    collection: str,
    metadata: dict[str, Any] | None = None,
    ef_search: int = 40,
) -> list[ChunkHit]:
    """Vector and full-text candidates fused by weighted reciprocal rank, in one statement."""
    where, params = _filters(collection, metadata)
    params |= {
        "vector": vector,
        "q": text,
        "k": top_k,
        "candidates": candidates,
        "rrf_k": rrf_k,
        "wv": vector_weight,
        "wk": keyword_weight,
        "tsconfig": version.settings.get("text_search_config", "english"),
    }
    query = sql.SQL(
        """WITH q AS (SELECT {tsquery} AS query),
        vec AS (
            SELECT c.id, row_number() OVER (ORDER BY c.embedding <=> %(vector)s) AS rank
            FROM {table} c WHERE {where}
            ORDER BY c.embedding <=> %(vector)s LIMIT %(candidates)s),
        kw AS (
            SELECT c.id, row_number() OVER (ORDER BY ts_rank(c.tsv, q.query) DESC, c.id) AS rank
            FROM {table} c, q WHERE {has_terms} AND c.tsv @@ q.query AND {where}
            ORDER BY ts_rank(c.tsv, q.query) DESC, c.id LIMIT %(candidates)s),
        fused AS (
            SELECT coalesce(vec.id, kw.id) AS id,
                   coalesce(%(wv)s / (%(rrf_k)s + vec.rank), 0.0)
                   + coalesce(%(wk)s / (%(rrf_k)s + kw.rank), 0.0) AS score
            FROM vec FULL OUTER JOIN kw ON vec.id = kw.id)
        SELECT {cols}, fused.score FROM fused
        JOIN {table} c ON c.id = fused.id JOIN documents d ON d.id = c.document_id
        ORDER BY fused.score DESC, c.id LIMIT %(k)s"""
    ).format(tsquery=any_terms_tsquery(), table=version.table, where=where, cols=_HIT_COLUMNS, has_terms=_HAS_TERMS)
    with conn.transaction():
        _set_search_options(conn, ef_search=max(ef_search, candidates))
        rows = conn.execute(query, params).fetchall()
    return _hits(rows)


def search_keyword(
    conn: psycopg.Connection,
    version: IndexVersion,
    text: str,
    top_k: int,
    *,
    collection: str,
    metadata: dict[str, Any] | None = None,
) -> list[ChunkHit]:
    """Full-text search ranked by ts_rank; any query term may match (questions are not boolean ANDs).

    ts_rank with its default weights (titles and headings 10x body) beat ts_rank_cd and flatter
    weights on WikiQA dev (nDCG@10 0.70 vs 0.69 / 0.67); see bench/retrieval_quality.py.
    """
    where, params = _filters(collection, metadata)
    params |= {"q": text, "k": top_k, "tsconfig": version.settings.get("text_search_config", "english")}
    query = sql.SQL(
        "WITH q AS (SELECT {tsquery} AS query) "
        "SELECT {cols}, ts_rank(c.tsv, q.query) AS score "
        "FROM {table} c JOIN documents d ON d.id = c.document_id, q "
        "WHERE {has_terms} AND c.tsv @@ q.query AND {where} ORDER BY score DESC, c.id LIMIT %(k)s"
    ).format(tsquery=any_terms_tsquery(), cols=_HIT_COLUMNS, table=version.table, where=where, has_terms=_HAS_TERMS)
    return _hits(conn.execute(query, params).fetchall())


def any_terms_tsquery() -> sql.Composable:
    """``websearch_to_tsquery`` with its implicit AND turned into OR (quoted phrases stay phrases).

    Negated terms are dropped first (``querytree``; 'T' when nothing positive is left): OR-ed with
    anything, ``!zzzz`` matches, and ranks, every row. With no positive term the query is empty.
    """
    return sql.SQL(
        "coalesce(nullif(replace(nullif(querytree(websearch_to_tsquery(%(tsconfig)s::regconfig, %(q)s)), 'T'),"
        " ' & ', ' | '), '')::tsquery, ''::tsquery)"
    )


# With an empty query (no positive term) this is false once for the statement: the keyword
# branch reads no rows instead of testing every one.
_HAS_TERMS = sql.SQL("numnode(q.query) > 0")
