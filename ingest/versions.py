"""Index versions: one chunk table per chunking + embedding setting, activated atomically.

Every value is a bind parameter; the only identifiers composed into SQL are chunk table names
derived from integer version ids (``chunks_v<id>``) through :mod:`psycopg.sql`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from core.config import IndexSettings, LoadedConfig
from core.errors import IndexModelMismatch, IndexVersionError, IngestBusy
from core.migrations import default_sql_dir

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
    def postings(self) -> sql.Identifier:
        """This version's BM25 postings (sql/0020_bm25_postings.sql), kept by the chunk table's triggers."""
        return sql.Identifier(f"chunks_v{self.id}_postings")

    @property
    def name(self) -> str:
        """Human id: ``v<id>-<hash8>``; recorded on every answer."""
        return f"v{self.id}-{self.settings_hash[:8]}"


_VERSION_COLUMNS = (
    "id, settings_hash, settings, embedding_model, dimension, status, is_active, hnsw_built, "
    "created_by, created_at, activated_at"
)


def _version(row: dict[str, Any]) -> IndexVersion:
    return IndexVersion(**row)


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
                version_id=sql.Literal(version.id),
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


def active_index_version(conn: psycopg.Connection, collection: str | None = None) -> IndexVersion | None:
    """The version a collection is answered from: its own, else the service's default (``collection`` None)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = None
        if collection is not None:
            row = cur.execute(
                f"""SELECT {_VERSION_COLUMNS} FROM index_versions
                    WHERE id = (SELECT index_version_id FROM collection_indexes WHERE collection = %s)""",
                (collection,),
            ).fetchone()
        if row is None:
            row = cur.execute(f"SELECT {_VERSION_COLUMNS} FROM index_versions WHERE is_active").fetchone()
    return _version(row) if row else None


def collection_versions(conn: psycopg.Connection) -> dict[str, int]:
    """Collections on a version of their own (not the default), with that version's id."""
    rows = conn.execute("SELECT collection, index_version_id FROM collection_indexes ORDER BY collection").fetchall()
    return {collection: version_id for collection, version_id in rows}


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


def activate_index_version(conn: psycopg.Connection, version_id: int, collection: str | None = None) -> IndexVersion:
    """Answer ``collection`` from ``version_id`` (None: make it the default), in one transaction.

    A collection on the default version follows the default when it moves; one on a version of its
    own keeps it. Activating the default for a collection makes it follow the default again.
    """
    with conn.transaction():
        conn.execute("LOCK TABLE index_versions IN SHARE ROW EXCLUSIVE MODE")
        version = get_index_version(conn, version_id)
        if version.status != "ready":
            raise IndexVersionError(
                f"index version {version.name} is {version.status}; only a ready (fully built) version can be activated"
            )
        if collection is None:
            conn.execute("UPDATE index_versions SET is_active = false, updated_at = now() WHERE is_active")
            conn.execute(
                "UPDATE index_versions SET is_active = true, activated_at = now(), updated_at = now() WHERE id = %s",
                (version_id,),
            )
            conn.execute("DELETE FROM collection_indexes WHERE index_version_id = %s", (version_id,))
        else:
            default = active_index_version(conn)
            if default is None:  # the first version anyone activates becomes the default
                return activate_index_version(conn, version_id)
            if default.id == version_id:
                conn.execute("DELETE FROM collection_indexes WHERE collection = %s", (collection,))
            else:
                conn.execute(
                    """INSERT INTO collection_indexes (collection, index_version_id) VALUES (%s, %s)
                       ON CONFLICT (collection) DO UPDATE
                       SET index_version_id = excluded.index_version_id, activated_at = now()""",
                    (collection, version_id),
                )
            conn.execute(
                "UPDATE index_versions SET activated_at = now(), updated_at = now() WHERE id = %s", (version_id,)
            )
    return get_index_version(conn, version_id)


def activate_as_asked(
    conn: psycopg.Connection, version: IndexVersion, activate: bool | None, collection: str
) -> tuple[IndexVersion, bool]:
    """Answer ``collection`` from a built ``version`` when ``activate`` says so; None: only when nothing answers it yet.

    Returns the version as it now is, and whether the collection is now answered from it.
    """
    current = active_index_version(conn, collection)
    wanted = activate if activate is not None else current is None
    if wanted and (current is None or current.id != version.id):
        version = activate_index_version(conn, version.id, collection)
    return version, wanted


def drop_index_version(conn: psycopg.Connection, version_id: int) -> IndexVersion:
    """Delete a version and its chunk table; the active version is refused."""
    with conn.transaction():
        conn.execute("LOCK TABLE index_versions IN SHARE ROW EXCLUSIVE MODE")
        version = get_index_version(conn, version_id)
        if version.is_active:
            raise IndexVersionError(
                f"index version {version.name} is active; activate another version before dropping it"
            )
        pinned = [c for c, v in collection_versions(conn).items() if v == version_id]
        if pinned:
            raise IndexVersionError(
                f"index version {version.name} answers the collections {', '.join(pinned)}; "
                "activate another version for them before dropping it"
            )
        if not try_lock_version(conn, version_id, xact=True):
            raise IngestBusy(f"index version {version.name} is being written by an ingest; try again later")
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}, {}").format(version.table, version.postings))
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
    """Create the cosine HNSW index after loading (several times faster than row by row), then ANALYZE
    (and VACUUM the postings). ``conn`` must be in autocommit mode, outside a transaction."""
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
    # Keyword search reads the postings index-only, which skips the table only for pages the
    # visibility map marks all-visible: VACUUM marks the loaded ones (autovacuum, later writes).
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(version.postings))


def try_lock_version(conn: psycopg.Connection, version_id: int, *, xact: bool = False) -> bool:
    """Take the per-version writer lock without waiting (session- or transaction-scoped)."""
    fn = "pg_try_advisory_xact_lock" if xact else "pg_try_advisory_lock"
    row = conn.execute(f"SELECT {fn}(%s)", (_VERSION_LOCK_BASE + version_id,)).fetchone()
    return bool(row and row[0])


def unlock_version(conn: psycopg.Connection, version_id: int) -> None:
    """Release the session-scoped writer lock."""
    conn.execute("SELECT pg_advisory_unlock(%s)", (_VERSION_LOCK_BASE + version_id,))
