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
    # Postings read per round of the pruned search (the rarest terms' document frequencies).
    round_postings: int = 500


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
    absent: tuple[str, ...] = ()  # the question's lexemes no chunk contains

    def rare(self, share: float) -> frozenset[str]:
        """The question's lexemes held by fewer than ``share`` of the collection's chunks, absent ones included."""
        return frozenset(self.absent) | {t.lexeme for t in self.terms if t.df < share * self.chunks}


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
               SELECT s.chunks, s.tokens, q.lexeme, t.df FROM bm25_collections s
               LEFT JOIN q ON true
               LEFT JOIN bm25_terms t ON t.index_version_id = s.index_version_id AND t.collection = s.collection
                    AND t.df > 0 AND t.lexeme = q.lexeme
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
    terms = [QueryTerm(lexeme, int(df), bm25_idf(chunks, int(df))) for _, _, lexeme, df in rows if df is not None]
    terms.sort(key=lambda t: (t.df, t.lexeme))
    absent = tuple(sorted(lexeme for _, _, lexeme, df in rows if lexeme is not None and df is None))
    return TermStatistics(chunks=chunks, avg_length=max(tokens / chunks, 1.0), terms=terms, absent=absent)


def query_lexemes(conn: psycopg.Connection, text: str, *, tsconfig: str) -> list[str]:
    """The distinct lexemes keyword search reads in ``text`` (as :func:`term_statistics` does), sorted."""
    query = sql.SQL("{lexemes} ORDER BY 1").format(lexemes=_QUERY_LEXEMES)
    return [row[0] for row in conn.execute(query, {"tsconfig": tsconfig, "q": text}).fetchall()]


def search_keyword(
    conn: psycopg.Connection,
    version: IndexVersion,
    text: str,
    top_k: int,
    *,
    collection: str,
    metadata: dict[str, Any] | None = None,
    bm25: Bm25 | None = None,
    stats: TermStatistics | None = None,
) -> list[ChunkHit]:
    """The ``top_k`` chunks by BM25 over the question's lexemes (a bag of words: any term may match).

    ``stats``: the question's :func:`term_statistics`, when the caller has read them already.

    Exact top-k with MaxScore pruning, read from the version's postings (index-only, no tsvector):
    a chunk holding none of the rarest terms ``terms[:e]`` scores less than the sum of the other
    terms' upper bounds (their idfs). So a first round scores the chunks best placed by the rarest
    terms' postings, which gives a k-th best score; only the terms whose removal would let a chunk
    beat it need their postings read in full, and the common rest are looked up only for the chunks
    still in the running. Common words therefore never make every chunk that contains them a
    candidate unless the question has nothing rarer to go on.
    """
    bm25 = bm25 or DEFAULT_BM25
    stats = stats or term_statistics(conn, version, text, collection=collection)
    terms = stats.terms
    if not terms:
        return []
    upper = [t.idf for t in terms]  # tf / (tf + K) < 1
    rest = [sum(upper[i:]) * _BOUND_SLACK for i in range(len(terms) + 1)]  # bound for chunks with only terms[i:]
    end, postings = 1, terms[0].df
    while end < len(terms) and postings + terms[end].df <= bm25.round_postings:
        postings += terms[end].df
        end += 1
    with conn.transaction():
        # A sequential scan of the postings would read every term of every chunk; a nested loop over
        # a list of chunk ids would scan the postings once per id; parallel workers cost more to start
        # than these scans take.
        conn.execute(
            "SET LOCAL enable_seqscan = off; SET LOCAL enable_nestloop = off;"
            " SET LOCAL max_parallel_workers_per_gather = 0"
        )
        best = _bm25_round(conn, version, stats, 0, end, None, rest, top_k, collection, metadata, bm25)
        threshold = -best[-1][0] if len(best) >= top_k else 0.0
        if end < len(terms) and rest[end] >= threshold:
            essential = next(i for i in range(end + 1, len(terms) + 1) if rest[i] < threshold or i == len(terms))
            more = _bm25_round(conn, version, stats, end, essential, threshold, rest, top_k, collection, metadata, bm25)
            best = sorted(best + more)[:top_k]
    return _hits_by_id(conn, version, best)


# Upper bounds are inflated by this factor, so that rounding in their sums never prunes a chunk
# that could tie.
_BOUND_SLACK = 1.0 + 1e-9


def _bm25_round(
    conn: psycopg.Connection,
    version: IndexVersion,
    stats: TermStatistics,
    start: int,
    end: int,
    threshold: float | None,
    rest: list[float],
    top_k: int,
    collection: str,
    metadata: dict[str, Any] | None,
    bm25: Bm25,
) -> list[tuple[float, int]]:
    """The best (-score, chunk id), up to ``top_k``, among the chunks holding one of ``terms[start:end]``
    but none of ``terms[:start]`` (an earlier round scored those); such a chunk holds only ``terms[start:]``.

    The new terms' postings give each chunk a partial score; the later terms complete it. With
    ``threshold`` None every chunk is completed, each looked up on its own (a first round, over the
    few chunks of the rarest terms). Otherwise only the chunks that could still reach ``threshold``
    or the k-th best partial score, with the later terms' upper bounds ``rest[end]``, stay in the
    running: the first later term's postings are read in full for them (there may be many), the
    chunks that can no longer make it drop out, and the remaining terms are looked up for the rest.
    """
    terms = stats.terms
    params: dict[str, Any] = {
        "collection": _collection(collection),
        "seen": [t.lexeme for t in terms[:start]],
        "title_extra": bm25.title_weight - 1.0,
        "k1": bm25.k1,
        "b": bm25.b,
        "avgdl": stats.avg_length,
        "threshold": threshold,
        "k": top_k,
    }
    kept: sql.Composable = sql.SQL("")
    if metadata:
        kept = sql.SQL(
            "WHERE EXISTS (SELECT FROM {table} c WHERE c.id = g.chunk_id AND c.metadata @> %(metadata)s)"
        ).format(table=version.table)
        params["metadata"] = Jsonb(metadata)
    branches = []
    for i in range(start, end):
        params[f"lexeme{i}"], params[f"idf{i}"] = terms[i].lexeme, terms[i].idf
        branches.append(
            sql.SQL(
                "SELECT p.chunk_id, {score} AS score FROM {postings} p {tf}"
                " WHERE p.collection = %(collection)s AND p.lexeme = %({lexeme})s"
            ).format(
                score=_bm25_term(sql.SQL(f"%(idf{i})s::float8")),
                postings=version.postings,
                tf=_BM25_TF,
                lexeme=sql.SQL(f"lexeme{i}"),
            )
        )
    seen: sql.Composable = sql.SQL("")
    if start:
        seen = sql.SQL(
            """WHERE NOT EXISTS (SELECT FROM {postings} s WHERE s.collection = %(collection)s
                                 AND s.lexeme = ANY(%(seen)s::text[]) AND s.chunk_id = t.chunk_id)"""
        ).format(postings=version.postings)
    steps: list[sql.Composable] = [
        sql.SQL(
            """part AS MATERIALIZED (
            SELECT g.chunk_id, g.score FROM (
                SELECT t.chunk_id, sum(t.score) AS score FROM ({new_terms}) t {seen} GROUP BY t.chunk_id) g {kept})"""
        ).format(new_terms=sql.SQL(" UNION ALL ").join(branches), seen=seen, kept=kept)
    ]
    later = end
    if threshold is None:
        steps.append(sql.SQL("open AS MATERIALIZED (SELECT part.chunk_id, part.score FROM part)"))
    elif end < len(terms):
        later = end + 1
        params |= {"lexeme_first": terms[end].lexeme, "idf_first": terms[end].idf}
        params |= {"bound": rest[end], "bound_after": rest[later]}
        steps.append(
            sql.SQL(
                """candidates AS MATERIALIZED (
                SELECT part.chunk_id, part.score FROM part
                WHERE part.score + %(bound)s >= greatest(%(threshold)s, {kth_part})),
            first AS MATERIALIZED (
                SELECT c.chunk_id, c.score + coalesce(t.score, 0) AS score FROM candidates c LEFT JOIN (
                    SELECT p.chunk_id, {score} AS score FROM {postings} p {tf}
                    WHERE p.collection = %(collection)s AND p.lexeme = %(lexeme_first)s) t ON t.chunk_id = c.chunk_id),
            open AS MATERIALIZED (
                SELECT first.chunk_id, first.score FROM first
                WHERE first.score + %(bound_after)s >= greatest(%(threshold)s, {kth_first}))"""
            ).format(
                kth_part=_kth_best("part"),
                kth_first=_kth_best("first"),
                score=_bm25_term(sql.SQL("%(idf_first)s::float8")),
                postings=version.postings,
                tf=_BM25_TF,
            )
        )
    else:
        steps.append(
            sql.SQL(
                "open AS MATERIALIZED (SELECT part.chunk_id, part.score FROM part"
                " WHERE part.score >= greatest(%(threshold)s, {kth}))"
            ).format(kth=_kth_best("part"))
        )
    params |= {"lexemes": [t.lexeme for t in terms[later:]], "idfs": [t.idf for t in terms[later:]]}
    query = sql.SQL(
        """WITH {steps},
        later AS (
            SELECT p.chunk_id, sum({score}) AS score
            FROM {postings} p {tf} JOIN unnest(%(lexemes)s::text[], %(idfs)s::float8[]) AS q(lexeme, idf)
                ON q.lexeme = p.lexeme
            WHERE p.chunk_id = ANY(ARRAY(SELECT open.chunk_id FROM open)) AND p.lexeme = ANY(%(lexemes)s::text[])
            GROUP BY p.chunk_id)
        SELECT -(open.score + coalesce(later.score, 0)), open.chunk_id
        FROM open LEFT JOIN later ON later.chunk_id = open.chunk_id
        ORDER BY 1, 2 LIMIT %(k)s"""
    ).format(
        steps=sql.SQL(",\n").join(steps),
        postings=version.postings,
        score=_bm25_term(sql.SQL("q.idf")),
        tf=_BM25_TF,
    )
    # Never prepared: a generic plan would not see how selective these terms are.
    return [(float(score), int(chunk_id)) for score, chunk_id in conn.execute(query, params, prepare=False)]


def _kth_best(step: str) -> sql.Composable:
    """The k-th best score in the CTE ``step`` (NULL when it holds fewer rows: ``greatest`` ignores it)."""
    return sql.SQL("(SELECT score FROM {step} ORDER BY score DESC OFFSET %(k)s - 1 LIMIT 1)").format(
        step=sql.Identifier(step)
    )


# A posting's term frequency, its title and heading positions counted title_weight times.
_BM25_TF = sql.SQL("CROSS JOIN LATERAL (SELECT p.tf + %(title_extra)s * p.title_tf AS tf) w")


def _bm25_term(idf: sql.Composable) -> sql.Composable:
    """One term's BM25 contribution from one posting ``p`` (tf from ``_BM25_TF``)."""
    return sql.SQL("{idf} * w.tf / nullif(w.tf + %(k1)s * (1 - %(b)s + %(b)s * p.dl / %(avgdl)s), 0)").format(idf=idf)


def _hits_by_id(conn: psycopg.Connection, version: IndexVersion, scored: list[tuple[float, int]]) -> list[ChunkHit]:
    """The chunks of ``scored`` ((-score, chunk id), best first) as hits, in that order."""
    if not scored:
        return []
    query = sql.SQL(
        """SELECT {cols}, -s.score FROM unnest(%(ids)s::bigint[], %(scores)s::float8[]) AS s(id, score)
        JOIN {table} c ON c.id = s.id JOIN documents d ON d.id = c.document_id
        ORDER BY s.score, c.id"""
    ).format(cols=_HIT_COLUMNS, table=version.table)
    params = {"ids": [chunk_id for _, chunk_id in scored], "scores": [score for score, _ in scored]}
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
