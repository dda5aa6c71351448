"""The search SQL: vector, keyword and hybrid queries over one index version's chunk table.

Every value is a bind parameter; identifiers only through :mod:`psycopg.sql`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ingest.documents import unpack_sentence_vectors
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
    # The chunk's sentence vectors pooled at ingest, one row per candidate of ingest.sentences (None:
    # not loaded, or none stored); loaded only for a generator that reads them (with_sentence_vectors).
    sentence_vectors: np.ndarray | None = field(default=None, compare=False, repr=False)


def _filters(collection: str, metadata: dict[str, Any] | None) -> tuple[sql.Composable, dict[str, Any]]:
    """The WHERE clause every search uses: one collection always (tenancy holds here, not only in routes)."""
    clauses: list[sql.Composable] = [sql.SQL("c.collection = %(collection)s")]
    params: dict[str, Any] = {"collection": _collection(collection)}
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


def with_sentence_vectors(conn: psycopg.Connection, version: IndexVersion, hits: list[ChunkHit]) -> list[ChunkHit]:
    """``hits`` carrying their chunks' stored sentence vectors, read in one query for all of them."""
    if not hits:
        return hits
    rows = conn.execute(
        sql.SQL("SELECT id, sentence_vectors FROM {} WHERE id = ANY(%s) AND sentence_vectors IS NOT NULL").format(
            version.table
        ),
        ([hit.chunk_id for hit in hits],),
    ).fetchall()
    stored = {chunk_id: unpack_sentence_vectors(data, version.dimension) for chunk_id, data in rows}
    return [dataclasses.replace(hit, sentence_vectors=stored.get(hit.chunk_id)) for hit in hits]


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


@dataclass(frozen=True)
class Bm25:
    """BM25 parameters: term-frequency saturation ``k1``, length normalization ``b``, and how much
    more a term counts in the title or headings than in the body (1.0: the same).

    A chunk scores ``sum(idf(t) * tf / (tf + k1 * (1 - b + b * length / average length)))`` over the
    question's terms: Lucene's form, whose dropped ``(k1 + 1)`` factor changes no ranking.
    """

    k1: float = 0.9
    b: float = 0.4
    title_weight: float = 1.0
    # Chunks scored in the first round (sum of the rarest terms' document frequencies).
    first_round_chunks: int = 500


DEFAULT_BM25 = Bm25()


@dataclass(frozen=True)
class QueryTerm:
    """One distinct lexeme of a question, with its collection-wide statistics."""

    lexeme: str
    df: int
    idf: float


@dataclass(frozen=True)
class TermStatistics:
    """What BM25 needs to know about one collection in one index version for one question."""

    chunks: int
    avg_length: float
    terms: list[QueryTerm]  # rarest first; lexemes no chunk contains are left out


def bm25_idf(chunks: int, df: int) -> float:
    """Lucene's BM25 idf (never negative, unlike Robertson's original for terms in over half the chunks)."""
    return math.log(1.0 + (chunks - df + 0.5) / (df + 0.5))


def term_statistics(conn: psycopg.Connection, version: IndexVersion, text: str, *, collection: str) -> TermStatistics:
    """The question's lexemes (the index's own stemming) with their document frequencies in ``collection``.

    The question is read as a web search (``websearch_to_tsquery``): quoted phrases give their words,
    negated terms (``-word``) are dropped, and what remains is a bag of distinct lexemes.
    Read from ``bm25_terms``/``bm25_collections``, which triggers keep exact (sql/0008_bm25.sql).
    """
    rows = conn.execute(
        sql.SQL(
            """WITH q AS ({lexemes})
               SELECT s.chunks, s.tokens, t.lexeme, t.df FROM bm25_collections s
               LEFT JOIN bm25_terms t ON t.index_version_id = s.index_version_id AND t.collection = s.collection
                    AND t.df > 0 AND t.lexeme IN (SELECT lexeme FROM q)
               WHERE s.index_version_id = %(version)s AND s.collection = %(collection)s AND s.chunks > 0"""
        ).format(lexemes=_QUERY_LEXEMES),
        {
            "tsconfig": version.settings.get("text_search_config", "english"),
            "q": text,
            "version": version.id,
            "collection": _collection(collection),
        },
    ).fetchall()
    if not rows:
        return TermStatistics(chunks=0, avg_length=0.0, terms=[])
    chunks, tokens = int(rows[0][0]), int(rows[0][1])
    terms = [QueryTerm(lexeme, int(df), bm25_idf(chunks, int(df))) for _, _, lexeme, df in rows if lexeme is not None]
    terms.sort(key=lambda t: (t.df, t.lexeme))
    return TermStatistics(chunks=chunks, avg_length=max(tokens / chunks, 1.0), terms=terms)


def query_lexemes(conn: psycopg.Connection, text: str, *, tsconfig: str) -> list[str]:
    """The distinct lexemes keyword search reads in ``text`` (as :func:`term_statistics` does), sorted."""
    query = sql.SQL("{lexemes} ORDER BY 1").format(lexemes=_QUERY_LEXEMES)
    return [row[0] for row in conn.execute(query, {"tsconfig": tsconfig, "q": text}).fetchall()]


def tsquery_any(lexemes: Iterable[str]) -> str:
    """A tsquery matching any of ``lexemes`` taken literally (no parsing or stemming of their text)."""
    quoted = ["'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'" for lexeme in lexemes]
    return " | ".join(quoted)


def search_keyword(
    conn: psycopg.Connection,
    version: IndexVersion,
    text: str,
    top_k: int,
    *,
    collection: str,
    metadata: dict[str, Any] | None = None,
    bm25: Bm25 | None = None,
) -> list[ChunkHit]:
    """The ``top_k`` chunks by BM25 over the question's lexemes (a bag of words: any term may match).

    Exact top-k with MaxScore pruning: the rarest terms' chunks are scored first (with every query
    term); a chunk containing only the remaining, common terms cannot score more than the sum of their
    upper bounds (their idfs), so once the k-th best score reaches that sum the search stops;
    otherwise the next terms' chunks are scored too. Common words therefore never make every chunk
    that contains them a candidate unless the question has nothing rarer to go on.
    """
    bm25 = bm25 or DEFAULT_BM25
    stats = term_statistics(conn, version, text, collection=collection)
    terms = stats.terms
    if not terms:
        return []
    upper = [t.idf for t in terms]  # tf / (tf + K) < 1
    rest = [sum(upper[i:]) for i in range(len(terms) + 1)]  # bound for chunks matching only terms[i:]
    end, postings = 0, 0
    while end < len(terms) and (end == 0 or postings + terms[end].df <= bm25.first_round_chunks):
        postings += terms[end].df
        end += 1
    best: list[ChunkHit] = []
    start = 0
    with conn.transaction():
        # Candidates come from the GIN index: a sequential scan would detoast every row's tsvector to
        # test it, which the planner does not count, and so it picks one on tables of a few thousand rows.
        conn.execute("SET LOCAL enable_seqscan = off")
        while True:
            new = _bm25_round(conn, version, stats, terms[start:end], terms[:start], top_k, collection, metadata, bm25)
            best = sorted(best + new, key=lambda h: (-h.score, h.chunk_id))[:top_k]
            threshold = best[-1].score if len(best) >= top_k else 0.0
            if end == len(terms) or rest[end] <= threshold:
                return best
            start = end
            while end < len(terms) and rest[end] > threshold:
                end += 1


def _bm25_round(
    conn: psycopg.Connection,
    version: IndexVersion,
    stats: TermStatistics,
    new_terms: list[QueryTerm],
    scored_terms: list[QueryTerm],
    top_k: int,
    collection: str,
    metadata: dict[str, Any] | None,
    bm25: Bm25,
) -> list[ChunkHit]:
    """Score, with all query terms, the chunks containing one of ``new_terms`` but none of ``scored_terms``."""
    where, params = _filters(collection, metadata)
    params |= {
        "lexemes": [t.lexeme for t in stats.terms],
        "idfs": [t.idf for t in stats.terms],
        "match": tsquery_any(t.lexeme for t in new_terms),
        "seen": tsquery_any(t.lexeme for t in scored_terms) or None,
        "title_extra": bm25.title_weight - 1.0,
        "k1": bm25.k1,
        "b": bm25.b,
        "avgdl": stats.avg_length,
        "k": top_k,
    }
    if bm25.title_weight == 1.0:
        title_terms = sql.SQL("")
        per = sql.SQL(
            "SELECT cand.id, cand.dl, u.lexeme, cardinality(u.positions)::float8 AS tf FROM cand, unnest(cand.terms) u"
        )
    else:  # the positions in the title or headings count title_weight times
        title_terms = sql.SQL(
            ", ts_filter(setweight(ts_filter(c.tsv, '{a}'), 'B', %(lexemes)s::text[]), '{b}') AS title_terms"
        )
        per = sql.SQL(
            """SELECT cand.id, cand.dl, t.lexeme, sum(t.n) AS tf
            FROM cand CROSS JOIN LATERAL (
                SELECT u.lexeme, cardinality(u.positions)::float8 AS n FROM unnest(cand.terms) u
                UNION ALL
                SELECT u.lexeme, %(title_extra)s * cardinality(u.positions) FROM unnest(cand.title_terms) u) t
            GROUP BY cand.id, cand.dl, t.lexeme"""
        )
    query = sql.SQL(
        """WITH q AS (SELECT * FROM unnest(%(lexemes)s::text[], %(idfs)s::float8[]) AS q(lexeme, idf)),
        cand AS (
            -- Each candidate's tsvector cut down to the question's lexemes: setweight marks them B,
            -- a weight the tsv column never uses, and ts_filter keeps only B.
            SELECT c.id, c.bm25_length AS dl,
                   ts_filter(setweight(c.tsv, 'B', %(lexemes)s::text[]), '{{b}}') AS terms {title_terms}
            FROM {table} c
            WHERE c.tsv @@ %(match)s::tsquery AND NOT coalesce(c.tsv @@ %(seen)s::tsquery, false) AND {where}),
        per AS ({per}),
        scored AS (
            SELECT per.id,
                   coalesce(sum(q.idf * per.tf
                                / nullif(per.tf + %(k1)s * (1 - %(b)s + %(b)s * per.dl / %(avgdl)s), 0)), 0) AS score
            FROM per JOIN q ON q.lexeme = per.lexeme
            GROUP BY per.id ORDER BY score DESC, per.id LIMIT %(k)s)
        SELECT {cols}, scored.score FROM scored
        JOIN {table} c ON c.id = scored.id JOIN documents d ON d.id = c.document_id
        ORDER BY scored.score DESC, c.id"""
    ).format(table=version.table, where=where, cols=_HIT_COLUMNS, title_terms=title_terms, per=per)
    # Never prepared: a generic plan would not see how selective this tsquery is.
    return _hits(conn.execute(query, params, prepare=False).fetchall())


def _collection(collection: str) -> str:
    """``collection`` itself; anything but a name is a bug in the caller (tenancy holds here, not only in routes)."""
    if not isinstance(collection, str):
        raise TypeError("a search must name its collection")
    return collection


# The positive part of a web-search query: ``querytree`` drops negated terms (and gives 'T' when
# nothing positive is left); each lexeme in its text is a quoted literal with quotes doubled.
_POSITIVE_TERMS = sql.SQL("querytree(websearch_to_tsquery(%(tsconfig)s::regconfig, %(q)s))")
# Its distinct lexemes, one row each.
_QUERY_LEXEMES = sql.SQL(
    "SELECT DISTINCT replace(m[1], '''''', '''') AS lexeme"
    " FROM regexp_matches({positive}, '''((?:[^'']|'''')*)''', 'g') m"
).format(positive=_POSITIVE_TERMS)
