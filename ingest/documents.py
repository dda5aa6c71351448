"""Documents and their chunks in an index version: what is known, what is written, what is deleted."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ingest.chunking import Chunk
from ingest.sentences import SPLITTER_VERSION
from ingest.versions import IndexVersion

_SENTENCE_HEADER = struct.Struct("<I")  # the splitter version the vectors were pooled for


def pack_sentence_vectors(vectors: np.ndarray) -> bytes:
    """A chunk's sentence vectors as stored: the splitter version, then float32 little-endian, row after row."""
    return _SENTENCE_HEADER.pack(SPLITTER_VERSION) + np.ascontiguousarray(vectors, dtype="<f4").tobytes()


def unpack_sentence_vectors(data: bytes | None, dimension: int) -> np.ndarray | None:
    """Stored sentence vectors, shape (sentences, dimension); None when absent or pooled for another splitter."""
    if data is None or len(data) < _SENTENCE_HEADER.size:
        return None
    (version,) = _SENTENCE_HEADER.unpack_from(data)
    body = len(data) - _SENTENCE_HEADER.size
    if version != SPLITTER_VERSION or body % (4 * dimension):
        return None
    return np.frombuffer(data, dtype="<f4", offset=_SENTENCE_HEADER.size).reshape(-1, dimension)


@dataclass(frozen=True)
class ChunkVectors:
    """What a chunk is embedded as: its vector, and its sentences' vectors (None: not stored)."""

    embedding: np.ndarray
    sentences: np.ndarray | None = None


@dataclass(frozen=True)
class PreparedDocument:
    """A document ready to write: its chunks, one vector per chunk and, per chunk, its sentence vectors or None."""

    source: str
    title: str
    content_hash: str
    metadata: dict[str, Any]
    chunks: list[Chunk]
    vectors: np.ndarray
    sentence_vectors: Sequence[np.ndarray | None] | None = None  # None: none for any chunk


@dataclass(frozen=True)
class KnownDocument:
    """A stored document as one index version sees it."""

    id: int
    source: str
    content_hash: str
    indexed_hash: str | None  # None: not (yet) in this version


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
) -> dict[str, ChunkVectors]:
    """Vectors already stored for these documents' chunks (sentence vectors too), by chunk content hash."""
    if not document_ids:
        return {}
    rows = conn.execute(
        sql.SQL("SELECT content_hash, embedding, sentence_vectors FROM {} WHERE document_id = ANY(%s)").format(
            version.table
        ),
        (list(document_ids),),
    ).fetchall()
    return {
        row[0]: ChunkVectors(np.asarray(row[1], dtype=np.float32), unpack_sentence_vectors(row[2], version.dimension))
        for row in rows
    }


def documents_without_sentence_vectors(conn: psycopg.Connection, version: IndexVersion, collection: str) -> set[int]:
    """Documents of ``collection`` with a chunk in ``version`` that has no sentence vectors stored."""
    rows = conn.execute(
        sql.SQL("SELECT DISTINCT document_id FROM {} WHERE collection = %s AND sentence_vectors IS NULL").format(
            version.table
        ),
        (collection,),
    ).fetchall()
    return {row[0] for row in rows}


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
    ("sentence_vectors", "bytea"),
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
            sentences = doc.sentence_vectors or [None] * len(doc.chunks)
            for chunk, vector, pooled in zip(doc.chunks, doc.vectors, sentences, strict=True):
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
                        None if pooled is None else pack_sentence_vectors(pooled),
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


@dataclass(frozen=True)
class CollectionSummary:
    """A collection: how many documents, when last changed, and the index version answering it."""

    name: str
    documents: int
    updated_at: datetime
    index_version_id: int | None


def list_collections(conn: psycopg.Connection, only: frozenset[str] | None = None) -> list[CollectionSummary]:
    """Every collection holding documents (of ``only`` when given), by name."""
    rows = conn.execute(
        """SELECT d.collection, count(*), max(d.updated_at),
                  coalesce(min(c.index_version_id), (SELECT id FROM index_versions WHERE is_active))
           FROM documents d LEFT JOIN collection_indexes c ON c.collection = d.collection
           WHERE %(only)s::text[] IS NULL OR d.collection = ANY(%(only)s::text[])
           GROUP BY d.collection ORDER BY d.collection""",
        {"only": None if only is None else sorted(only)},
    ).fetchall()
    return [CollectionSummary(*row) for row in rows]


def collection_exists(conn: psycopg.Connection, collection: str) -> bool:
    """Whether any document belongs to ``collection``."""
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM documents WHERE collection = %s)", (collection,)).fetchone()
    return bool(row and row[0])


@dataclass(frozen=True)
class DocumentSummary:
    """A stored document, and its chunks in one index version (None: not in that version)."""

    id: int
    source: str
    title: str
    content_hash: str
    updated_at: datetime
    chunks: int | None


def list_documents(
    conn: psycopg.Connection, collection: str, version_id: int | None, *, after_id: int = 0, limit: int = 100
) -> list[DocumentSummary]:
    """A page of ``collection``'s documents by id (those after ``after_id``), with their chunks in ``version_id``."""
    rows = conn.execute(
        """SELECT d.id, d.source, d.title, d.content_hash, d.updated_at, i.chunk_count
           FROM documents d
           LEFT JOIN index_documents i ON i.document_id = d.id AND i.index_version_id = %s
           WHERE d.collection = %s AND d.id > %s ORDER BY d.id LIMIT %s""",
        (version_id, collection, after_id, limit),
    ).fetchall()
    return [DocumentSummary(*row) for row in rows]
