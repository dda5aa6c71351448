"""Corpus drift samples: chunk vectors of documents ingested in a window vs the rest of the active index."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from core.drift.measures import CorpusSamples
from ingest import versions


def _vectors(rows: list[tuple[object, ...]]) -> np.ndarray:
    return np.stack([np.asarray(r[0], dtype=np.float32) for r in rows]) if rows else np.zeros((0, 0), np.float32)


class IndexCorpus(CorpusSamples):
    """Reads the collection's active index version (its chunk table) and the documents' update times."""

    def window(
        self, conn: psycopg.Connection, collection: str, start: datetime, end: datetime, limit: int
    ) -> tuple[np.ndarray, np.ndarray]:
        version = versions.active_index_version(conn, collection)
        if version is None:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
        register_vector(conn)
        query = sql.SQL(
            "SELECT c.embedding FROM {table} c JOIN documents d ON d.id = c.document_id "
            "WHERE c.collection = %(collection)s AND {when} ORDER BY md5(c.id::text) LIMIT %(limit)s"
        )
        params = {"collection": collection, "start": start, "end": end, "limit": limit}
        new = conn.execute(
            query.format(table=version.table, when=sql.SQL("d.updated_at >= %(start)s AND d.updated_at < %(end)s")),
            params,
        ).fetchall()
        before = conn.execute(
            query.format(table=version.table, when=sql.SQL("d.updated_at < %(start)s")), params
        ).fetchall()
        return _vectors(new), _vectors(before)
