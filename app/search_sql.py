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


# A metadata filter that the planner expects to keep fewer rows than this is searched exactly
# (its GIN index, then a sort of the rows it keeps): exact cost grows with the rows kept, while
# the HNSW scan passes over about candidates / share rows. At 100,000 chunks
# (bench/retrieval_latency.py) the HNSW scan wins at 10% (10,000 rows), exact at 1%.
EXACT_FILTER_ROWS = 3000
# Candidates taken from the HNSW scan per result, then ranked by distance: past a filter (the
# collection's too, in a table that several collections share) the iterative scan returns rows
# less well ordered. At 10% of 100,000 chunks recall@10 is 0.87 with 1, 0.95 with 2, 0.97 with 3;
# with no row filtered out, 3 cost 0.2 ms more than 1 and recall the same.
CANDIDATES_PER_HIT = 3
HNSW_EF_SEARCH_MAX = 1000  # pgvector's limit


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
    """Nearest chunks by cosine similarity (HNSW; ``exact`` reads and sorts every matching row).

    The HNSW scan keeps going past the rows the filters drop (``hnsw.iterative_scan``). Under a
    metadata filter the plan is chosen here from the planner's row estimates, not left to its
    cost model: exact when the filter keeps few rows, else the HNSW index; when that scan stops
    short (``hnsw.max_scan_tuples``: the filter kept fewer rows than estimated), exact answers.
    """
    where, params = _filters(collection, metadata)
    candidates = CANDIDATES_PER_HIT * top_k
    params |= {"vector": vector, "k": top_k, "candidates": candidates}
    # "+ 0": from PostgreSQL 17 the planner otherwise takes the CTE's rows as sorted by distance.
    query = sql.SQL(
        """WITH candidates AS MATERIALIZED (
            SELECT c.id, c.embedding <=> %(vector)s AS distance FROM {table} c WHERE {where}
            ORDER BY distance LIMIT %(candidates)s),
        nearest AS (SELECT id, distance FROM candidates ORDER BY distance + 0, id LIMIT %(k)s)
        SELECT {cols}, 1 - nearest.distance AS score
        FROM nearest JOIN {table} c ON c.id = nearest.id JOIN documents d ON d.id = c.document_id
        ORDER BY nearest.distance, c.id"""
    ).format(cols=_HIT_COLUMNS, table=version.table, where=where)
    ef = min(HNSW_EF_SEARCH_MAX, max(ef_search, candidates))
    with conn.transaction():
        hnsw_only = False
        if metadata and not exact:
            kept, total = _estimated_rows(conn, version, where, params)
            hnsw_only = kept >= EXACT_FILTER_ROWS
            exact = not hnsw_only
            # The filter keeps one row in total / kept: a first batch that many times longer holds
            # about as many candidates, and costs less than the many small batches that would follow.
            ef = max(ef, min(HNSW_EF_SEARCH_MAX, round(candidates * total / max(kept, 1))))
        _set_search_options(conn, ef_search=ef, exact=exact, hnsw_only=hnsw_only)
        # Never prepared: a prepared statement soon gets a generic plan, made without the filter's
        # value and under the SET LOCAL options of the call that made it (exact or not).
        rows = conn.execute(query, params, prepare=False).fetchall()
        if hnsw_only and len(rows) < top_k:
            _set_search_options(conn, ef_search=ef, exact=True)
            rows = conn.execute(query, params, prepare=False).fetchall()
    return _hits(rows)


def _estimated_rows(
    conn: psycopg.Connection, version: IndexVersion, where: sql.Composable, params: dict[str, Any]
) -> tuple[float, float]:
    """The planner's estimates of the rows ``where`` keeps and of all rows (nothing is read)."""
    query = sql.SQL(
        "EXPLAIN (FORMAT JSON) SELECT 1 FROM {table} c WHERE {where} UNION ALL SELECT 1 FROM {table} c"
    ).format(table=version.table, where=where)
    row = conn.execute(query, params, prepare=False).fetchone()
    kept, total = (float(plan["Plan Rows"]) for plan in row[0][0]["Plan"]["Plans"]) if row else (0.0, 0.0)
    return kept, total


def _set_search_options(
    conn: psycopg.Connection, *, ef_search: int, exact: bool = False, hnsw_only: bool = False
) -> None:
    """Planner and HNSW options for this transaction only, in one round trip."""
    options = {"hnsw.ef_search": str(ef_search)}
    if exact:
        # No index gives the order: every matching row is read (GIN or sequential) and sorted. Bitmap
        # and sequential scans are turned back on after an HNSW-only try in the same transaction.
        options |= {"enable_indexscan": "off", "enable_bitmapscan": "on", "enable_seqscan": "on"}
    elif hnsw_only:  # left to itself, the planner may read a filter's GIN index and sort all it keeps
        options |= {"enable_bitmapscan": "off", "enable_seqscan": "off"}
    # set_config(..., true) is SET LOCAL with bind parameters.
    calls = sql.SQL(", ").join(sql.SQL("set_config(%s, %s, true)") for _ in options)
    conn.execute(sql.SQL("SELECT {}").format(calls), [v for item in options.items() for v in item])


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
