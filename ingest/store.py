"""The index's SQL: index versions, documents, chunk tables, ingest runs and search.

Every value is a bind parameter; the only identifiers composed into SQL are chunk table names
derived from integer version ids (``chunks_v<id>``) through :mod:`psycopg.sql`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ingest.chunking import Chunk
from ingest.config import IndexSettings, LoadedConfig
from ingest.errors import IndexModelMismatch, IndexVersionError, IngestBusy
from ingest.migrations import default_sql_dir

HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
# Separate from the migration lock; the version id is added so builds of different versions run side by side.
_VERSION_LOCK_BASE = 7_311_100_000


@dataclass(frozen=True)
class IndexVersion:
    """One index version: fixed chunking + embedding settings, one chunk table."""

    id: int
    settings_hash: str
    settings: dict[str, Any]
    embedding_model: str
    dimension: int
    status: str
    is_active: bool
    hnsw_built: bool
    created_by: str
    created_at: datetime
    activated_at: datetime | None

    @property
    def table(self) -> sql.Identifier:
        """This version's chunk table."""
        return sql.Identifier(f"chunks_v{self.id}")

    @property
    def name(self) -> str:
        """Human id: ``v<id>-<hash8>``; recorded on every answer."""
        return f"v{self.id}-{self.settings_hash[:8]}"


@dataclass(frozen=True)
class PreparedDocument:
    """A document ready to write: its chunks and one vector per chunk."""

    source: str
    title: str
    content_hash: str
    metadata: dict[str, Any]
    chunks: list[Chunk]
    vectors: np.ndarray


@dataclass(frozen=True)
class KnownDocument:
    """A stored document as one index version sees it."""

    id: int
    source: str
    content_hash: str
    indexed_hash: str | None  # None: not (yet) in this version


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


_VERSION_COLUMNS = (
    "id, settings_hash, settings, embedding_model, dimension, status, is_active, hnsw_built, "
    "created_by, created_at, activated_at"
)


def _version(row: dict[str, Any]) -> IndexVersion:
    return IndexVersion(**row)


# ---------------------------------------------------------------- index versions


def find_index_version(conn: psycopg.Connection, settings: IndexSettings) -> IndexVersion | None:
    """The version these settings define, if it exists: the active one, else the newest (rebuilds share settings)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"SELECT {_VERSION_COLUMNS} FROM index_versions WHERE settings_hash = %s "
            "ORDER BY is_active DESC, id DESC LIMIT 1",
            (settings.version_hash(),),
        ).fetchone()
    return _version(row) if row else None


def ensure_index_version(
    conn: psycopg.Connection, settings: IndexSettings, dimension: int, created_by: str, *, fresh: bool = False
) -> IndexVersion:
    """Get or create the version for ``settings`` (and its chunk table), in one transaction.

    ``fresh``: always create a new, empty version (a full rebuild beside the live one).
    """
    template = (default_sql_dir() / "chunks_table.sql.tmpl").read_text(encoding="utf-8")
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute("LOCK TABLE index_versions IN SHARE ROW EXCLUSIVE MODE")
        existing = None if fresh else find_index_version(conn, settings)
        if existing:
            if existing.dimension != dimension:
                raise IndexVersionError(
                    f"index version {existing.name} has dimension {existing.dimension}, "
                    f"but the embedder produces {dimension}"
                )
            return existing
        row = cur.execute(
            f"""INSERT INTO index_versions (settings_hash, settings, embedding_model, dimension, created_by)
                VALUES (%s, %s, %s, %s, %s) RETURNING {_VERSION_COLUMNS}""",
            (
                settings.version_hash(),
                Jsonb(settings.identity()),
                settings.embedding.model,
                dimension,
                created_by,
            ),
        ).fetchone()
        assert row is not None
        version = _version(row)
        cur.execute(
            sql.SQL(template).format(
                table=version.table,
                dim=sql.Literal(dimension),
                tsconfig=sql.Literal(settings.text_search_config),
                tsv_index=sql.Identifier(f"chunks_v{version.id}_tsv"),
                meta_index=sql.Identifier(f"chunks_v{version.id}_metadata"),
            )
        )
    return version


def get_index_version(conn: psycopg.Connection, version_id: int) -> IndexVersion:
    """The version with this id, or :class:`IndexVersionError`."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {_VERSION_COLUMNS} FROM index_versions WHERE id = %s", (version_id,)).fetchone()
    if row is None:
        raise IndexVersionError(f"no index version {version_id}")
    return _version(row)


def active_index_version(conn: psycopg.Connection) -> IndexVersion | None:
    """The version queries are answered from."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {_VERSION_COLUMNS} FROM index_versions WHERE is_active").fetchone()
    return _version(row) if row else None


def list_index_versions(conn: psycopg.Connection) -> list[tuple[IndexVersion, int, int]]:
    """Every version with its document and chunk counts, newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""SELECT {_VERSION_COLUMNS},
                   (SELECT count(*) FROM index_documents d WHERE d.index_version_id = v.id) AS documents,
                   (SELECT coalesce(sum(chunk_count), 0) FROM index_documents d
                     WHERE d.index_version_id = v.id) AS chunks
                FROM index_versions v ORDER BY id DESC"""
        ).fetchall()
    result = []
    for row in rows:
        documents, chunks = int(row.pop("documents")), int(row.pop("chunks"))
        result.append((_version(row), documents, chunks))
    return result


def check_embedding_model(version: IndexVersion, config: LoadedConfig) -> None:
    """Raise :class:`IndexModelMismatch` unless ``version`` was built with ``config``'s embedding model."""
    model = config.config.index.embedding.model
    if version.embedding_model != model:
        raise IndexModelMismatch(
            f"index version {version.name} was built with the embedding model {version.embedding_model!r}, but "
            f"configuration {config.name!r} embeds with {model!r}: reindex with this configuration "
            "or activate a version built with its model"
        )


def activate_index_version(conn: psycopg.Connection, version_id: int) -> IndexVersion:
    """Make ``version_id`` the active version: one transaction, so readers see old or new."""
    with conn.transaction():
        conn.execute("LOCK TABLE index_versions IN SHARE ROW EXCLUSIVE MODE")
        version = get_index_version(conn, version_id)
        if version.status != "ready":
            raise IndexVersionError(
                f"index version {version.name} is {version.status}; only a ready (fully built) version can be activated"
            )
        conn.execute("UPDATE index_versions SET is_active = false, updated_at = now() WHERE is_active")
        conn.execute(
            "UPDATE index_versions SET is_active = true, activated_at = now(), updated_at = now() WHERE id = %s",
            (version_id,),
        )
    return get_index_version(conn, version_id)


def drop_index_version(conn: psycopg.Connection, version_id: int) -> IndexVersion:
    """Delete a version and its chunk table; the active version is refused."""
    with conn.transaction():
        conn.execute("LOCK TABLE index_versions IN SHARE ROW EXCLUSIVE MODE")
        version = get_index_version(conn, version_id)
        if version.is_active:
            raise IndexVersionError(
                f"index version {version.name} is active; activate another version before dropping it"
            )
        if not try_lock_version(conn, version_id, xact=True):
            raise IngestBusy(f"index version {version.name} is being written by an ingest; try again later")
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(version.table))
        conn.execute("DELETE FROM index_versions WHERE id = %s", (version_id,))
    return version


def mark_version_ready(conn: psycopg.Connection, version: IndexVersion) -> IndexVersion:
    """Build the HNSW index if missing, then mark the version ready."""
    if not version.hnsw_built:
        build_hnsw_index(conn, version)
    with conn.transaction():
        conn.execute(
            "UPDATE index_versions SET status = 'ready', hnsw_built = true, updated_at = now() WHERE id = %s",
            (version.id,),
        )
    return get_index_version(conn, version.id)


def build_hnsw_index(conn: psycopg.Connection, version: IndexVersion) -> None:
    """Create the cosine HNSW index after loading (several times faster than row by row), then ANALYZE."""
    with conn.transaction():
        conn.execute("SET LOCAL maintenance_work_mem = '512MB'")
        conn.execute(
            sql.SQL(
                "CREATE INDEX IF NOT EXISTS {name} ON {table} USING hnsw (embedding vector_cosine_ops) "
                "WITH (m = {m}, ef_construction = {ef})"
            ).format(
                name=sql.Identifier(f"chunks_v{version.id}_embedding"),
                table=version.table,
                m=sql.Literal(HNSW_M),
                ef=sql.Literal(HNSW_EF_CONSTRUCTION),
            )
        )
        conn.execute("UPDATE index_versions SET hnsw_built = true WHERE id = %s", (version.id,))
    conn.execute(sql.SQL("ANALYZE {}").format(version.table))


def try_lock_version(conn: psycopg.Connection, version_id: int, *, xact: bool = False) -> bool:
    """Take the per-version writer lock without waiting (session- or transaction-scoped)."""
    fn = "pg_try_advisory_xact_lock" if xact else "pg_try_advisory_lock"
    row = conn.execute(f"SELECT {fn}(%s)", (_VERSION_LOCK_BASE + version_id,)).fetchone()
    return bool(row and row[0])


def unlock_version(conn: psycopg.Connection, version_id: int) -> None:
    """Release the session-scoped writer lock."""
    conn.execute("SELECT pg_advisory_unlock(%s)", (_VERSION_LOCK_BASE + version_id,))


# ---------------------------------------------------------------- documents and chunks


def known_documents(conn: psycopg.Connection, version_id: int, collection: str) -> dict[str, KnownDocument]:
    """Every stored document of ``collection``, with the hash this version indexed (if any)."""
    rows = conn.execute(
        """SELECT d.id, d.source, d.content_hash, i.content_hash
           FROM documents d
           LEFT JOIN index_documents i ON i.document_id = d.id AND i.index_version_id = %s
           WHERE d.collection = %s""",
        (version_id, collection),
    ).fetchall()
    return {row[1]: KnownDocument(id=row[0], source=row[1], content_hash=row[2], indexed_hash=row[3]) for row in rows}


def reusable_vectors(
    conn: psycopg.Connection, version: IndexVersion, document_ids: Sequence[int]
) -> dict[str, np.ndarray]:
    """Vectors already stored for these documents' chunks, by chunk content hash."""
    if not document_ids:
        return {}
    rows = conn.execute(
        sql.SQL("SELECT content_hash, embedding FROM {} WHERE document_id = ANY(%s)").format(version.table),
        (list(document_ids),),
    ).fetchall()
    return {row[0]: np.asarray(row[1], dtype=np.float32) for row in rows}


_COPY_COLUMNS = (
    ("document_id", "bigint"),
    ("ordinal", "integer"),
    ("collection", "text"),
    ("title", "text"),
    ("section", "text"),
    ("text", "text"),
    ("token_count", "integer"),
    ("char_start", "integer"),
    ("char_end", "integer"),
    ("content_hash", "text"),
    ("metadata", "jsonb"),
    ("embedding", "vector"),
)


def write_documents(
    conn: psycopg.Connection, version: IndexVersion, collection: str, documents: Sequence[PreparedDocument]
) -> dict[str, int]:
    """Write a batch of documents and their chunks in ONE transaction; returns ids by source.

    A failure anywhere rolls the whole batch back: no document is ever half-written, and its
    old hash stays, so the next run retries it.
    """
    if not documents:
        return {}
    with conn.transaction():
        rows = conn.execute(
            """INSERT INTO documents (collection, source, title, content_hash, metadata)
               SELECT %s, * FROM unnest(%s::text[], %s::text[], %s::text[], %s::jsonb[])
               ON CONFLICT (collection, source) DO UPDATE
                 SET title = excluded.title, content_hash = excluded.content_hash,
                     metadata = excluded.metadata, updated_at = now()
               RETURNING source, id""",
            (
                collection,
                [d.source for d in documents],
                [d.title for d in documents],
                [d.content_hash for d in documents],
                [Jsonb(d.metadata) for d in documents],
            ),
        ).fetchall()
        ids = {source: doc_id for source, doc_id in rows}
        conn.execute(sql.SQL("DELETE FROM {} WHERE document_id = ANY(%s)").format(version.table), (list(ids.values()),))
        copy_chunks(conn, version, collection, documents, ids)
        conn.execute(
            """INSERT INTO index_documents (index_version_id, document_id, content_hash, chunk_count)
               SELECT %s, * FROM unnest(%s::bigint[], %s::text[], %s::int[])
               ON CONFLICT (index_version_id, document_id) DO UPDATE
                 SET content_hash = excluded.content_hash, chunk_count = excluded.chunk_count,
                     indexed_at = now()""",
            (
                version.id,
                [ids[d.source] for d in documents],
                [d.content_hash for d in documents],
                [len(d.chunks) for d in documents],
            ),
        )
    return ids


def copy_chunks(
    conn: psycopg.Connection,
    version: IndexVersion,
    collection: str,
    documents: Iterable[PreparedDocument],
    ids: dict[str, int],
) -> None:
    """Binary COPY of the chunks into the version's table (the fastest path into PostgreSQL)."""
    columns = sql.SQL(", ").join(sql.Identifier(name) for name, _ in _COPY_COLUMNS)
    statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT BINARY)").format(version.table, columns)
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.set_types([kind for _, kind in _COPY_COLUMNS])
        for doc in documents:
            metadata = Jsonb(doc.metadata)
            for chunk, vector in zip(doc.chunks, doc.vectors, strict=True):
                copy.write_row(
                    (
                        ids[doc.source],
                        chunk.ordinal,
                        collection,
                        chunk.title,
                        chunk.section,
                        chunk.text,
                        chunk.token_count,
                        chunk.char_start,
                        chunk.char_end,
                        chunk.content_hash,
                        metadata,
                        vector,
                    )
                )


def chunk_texts(
    conn: psycopg.Connection, version: IndexVersion, collection: str, sources: Sequence[str]
) -> dict[str, list[str]]:
    """The chunk texts of these documents in this version, in order (reference contexts for evals)."""
    rows = conn.execute(
        sql.SQL(
            "SELECT d.source, c.text FROM {} c JOIN documents d ON d.id = c.document_id "
            "WHERE d.collection = %s AND d.source = ANY(%s) ORDER BY d.source, c.ordinal"
        ).format(version.table),
        (collection, list(sources)),
    ).fetchall()
    result: dict[str, list[str]] = {}
    for source, text in rows:
        result.setdefault(source, []).append(text)
    return result


def delete_documents(conn: psycopg.Connection, document_ids: Sequence[int]) -> int:
    """Delete documents; their chunks in every version go with them (ON DELETE CASCADE)."""
    if not document_ids:
        return 0
    with conn.transaction():
        cur = conn.execute("DELETE FROM documents WHERE id = ANY(%s)", (list(document_ids),))
    return cur.rowcount


# ---------------------------------------------------------------- ingest runs


def start_run(conn: psycopg.Connection, version_id: int, collection: str, source: str, config_version: str) -> int:
    """Record the start of an ingest run."""
    with conn.transaction():
        row = conn.execute(
            """INSERT INTO ingest_runs (index_version_id, collection, source, config_version)
               VALUES (%s, %s, %s, %s) RETURNING id""",
            (version_id, collection, source, config_version),
        ).fetchone()
    assert row is not None
    return int(row[0])


def finish_run(
    conn: psycopg.Connection,
    run_id: int,
    *,
    status: str,
    counts: dict[str, int],
    skipped: list[dict[str, str]],
    timings: dict[str, float],
    error: str | None = None,
) -> None:
    """Record how an ingest run ended."""
    with conn.transaction():
        conn.execute(
            """UPDATE ingest_runs SET status = %s, counts = %s, skipped = %s, timings = %s, error = %s,
                   finished_at = now() WHERE id = %s""",
            (status, Jsonb(counts), Jsonb(skipped), Jsonb(timings), error, run_id),
        )


# ---------------------------------------------------------------- search


def _filters(collection: str | None, metadata: dict[str, Any] | None) -> tuple[sql.Composable, dict[str, Any]]:
    clauses: list[sql.Composable] = [sql.SQL("true")]
    params: dict[str, Any] = {}
    if collection is not None:
        clauses.append(sql.SQL("c.collection = %(collection)s"))
        params["collection"] = collection
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
    collection: str | None = None,
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
    collection: str | None = None,
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
            FROM {table} c, q WHERE c.tsv @@ q.query AND {where}
            ORDER BY ts_rank(c.tsv, q.query) DESC, c.id LIMIT %(candidates)s),
        fused AS (
            SELECT coalesce(vec.id, kw.id) AS id,
                   coalesce(%(wv)s / (%(rrf_k)s + vec.rank), 0.0)
                   + coalesce(%(wk)s / (%(rrf_k)s + kw.rank), 0.0) AS score
            FROM vec FULL OUTER JOIN kw ON vec.id = kw.id)
        SELECT {cols}, fused.score FROM fused
        JOIN {table} c ON c.id = fused.id JOIN documents d ON d.id = c.document_id
        ORDER BY fused.score DESC, c.id LIMIT %(k)s"""
    ).format(tsquery=any_terms_tsquery(), table=version.table, where=where, cols=_HIT_COLUMNS)
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
    collection: str | None = None,
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
        "WHERE c.tsv @@ q.query AND {where} ORDER BY score DESC, c.id LIMIT %(k)s"
    ).format(tsquery=any_terms_tsquery(), cols=_HIT_COLUMNS, table=version.table, where=where)
    return _hits(conn.execute(query, params).fetchall())


def any_terms_tsquery() -> sql.Composable:
    """``websearch_to_tsquery`` with its implicit AND turned into OR (quoted phrases stay phrases)."""
    return sql.SQL(
        "coalesce(nullif(replace(websearch_to_tsquery(%(tsconfig)s::regconfig, %(q)s)::text, ' & ', ' | '), '')"
        "::tsquery, ''::tsquery)"
    )
