"""Vector search under metadata filters: the same answers as an exact search, whichever plan runs.

A small chunk table of clustered vectors: 20 clusters of 100 rows, each row's metadata naming its
cluster and a bucket (cluster % 10, so a bucket keeps 2 clusters: 10% of the rows). At 2,000 rows
every filter is below ``EXACT_FILTER_ROWS``: tests lower it to send filters down the HNSW path, as
a filter that the planner expects to keep many rows of a large table goes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from app import search_sql
from core.config import IndexSettings
from ingest import versions
from ingest.versions import IndexVersion

COLLECTION = "filtered"
DIM = 8
CLUSTERS = 20
PER_CLUSTER = 100
RARE = 3  # rows of the cluster farthest from the query carry {"rare": true}
NOISE = 0.2  # per dimension: clusters that overlap a little, so the HNSW graph links them


def centers() -> np.ndarray:
    rng = np.random.default_rng(0)
    c = rng.normal(size=(CLUSTERS, DIM))
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def build_table(conn: psycopg.Connection) -> IndexVersion:
    """2,000 chunks in 20 clusters; the HNSW index built after loading, then ANALYZE."""
    rng = np.random.default_rng(1)
    version = versions.ensure_index_version(conn, IndexSettings(), DIM, "test")
    with conn.transaction():
        documents = conn.execute(
            "INSERT INTO documents (collection, source, content_hash) "
            "SELECT %s, 'doc-' || g, 'h' FROM generate_series(1, %s) g RETURNING id",
            (COLLECTION, CLUSTERS),
        ).fetchall()
        rows = []
        for cluster, center in enumerate(centers()):
            for i in range(PER_CLUSTER):
                meta = {"cluster": cluster, "bucket": cluster % 10}
                if cluster == CLUSTERS - 1 and i < RARE:
                    meta["rare"] = True
                vector = (center + rng.normal(0, NOISE, DIM)).astype(np.float32)
                rows.append((documents[cluster][0], i, COLLECTION, f"{cluster}-{i}", Jsonb(meta), vector))
        insert = sql.SQL(
            "INSERT INTO {} (document_id, ordinal, collection, text, token_count, char_start, char_end, "
            "content_hash, metadata, embedding) VALUES (%s, %s, %s, 'text', 1, 0, 4, %s, %s, %s)"
        ).format(version.table)
        conn.cursor().executemany(insert, rows)
    return versions.mark_version_ready(conn, version)


@pytest.fixture
def table(conn: psycopg.Connection) -> IndexVersion:
    return build_table(conn)


def query_vectors() -> list[np.ndarray]:
    """Near five of the clusters, and opposite the cluster holding the rare rows."""
    c = centers()
    return [c[i] * 0.9 + c[i + 1] * 0.1 for i in range(0, 10, 2)] + [-c[CLUSTERS - 1]]


def search(conn: psycopg.Connection, version: IndexVersion, vector: np.ndarray, **kwargs: Any) -> list[int]:
    hits = search_sql.search_vector(conn, version, vector, 10, collection=COLLECTION, ef_search=10, **kwargs)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    return [h.chunk_id for h in hits]


def scans(conn: psycopg.Connection, version: IndexVersion) -> dict[str, int]:
    """Scans so far of the table's HNSW index, its GIN metadata index and the table itself (sequential)."""
    conn.execute("SELECT pg_stat_force_next_flush()")  # flushed when the backend is next idle: now
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT pg_stat_get_numscans(%s::regclass), pg_stat_get_numscans(%s::regclass), seq_scan "
        "FROM pg_stat_user_tables WHERE relid = %s::regclass",
        (f"chunks_v{version.id}_embedding", f"chunks_v{version.id}_metadata", f"chunks_v{version.id}"),
    ).fetchone()
    assert row is not None
    return dict(zip(("hnsw", "gin", "seq"), row, strict=True))


def searched(
    conn: psycopg.Connection, version: IndexVersion, vector: np.ndarray, **kwargs: Any
) -> tuple[list[int], dict[str, int]]:
    """A search's result, and the scans of each index it made."""
    before = scans(conn, version)
    out = search(conn, version, vector, **kwargs)
    after = scans(conn, version)
    return out, {k: after[k] - before[k] for k in after}


@pytest.mark.parametrize("path", ["hnsw", "exact"])
def test_a_filtered_search_returns_the_exact_top_k(
    conn: psycopg.Connection, table: IndexVersion, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Most buckets lie far from each query: the HNSW scan must go on past the rows they drop."""
    if path == "hnsw":
        monkeypatch.setattr(search_sql, "EXACT_FILTER_ROWS", 0)
    for vector in query_vectors():
        for bucket in range(10):
            flt = {"bucket": bucket}
            exact = search(conn, table, vector, metadata=flt, exact=True)
            found, made = searched(conn, table, vector, metadata=flt)
            assert found == exact and len(found) == 10, (bucket, found, exact)
            # The plan chosen runs, whatever the planner's cost model prefers; on the HNSW path
            # without the exact fallback (no GIN or sequential scan after it).
            if path == "hnsw":
                assert made == {"hnsw": 1, "gin": 0, "seq": 0}, made
            else:
                assert made["hnsw"] == 0 and made["gin"] + made["seq"] == 1, made


@pytest.mark.parametrize("path", ["hnsw", "exact"])
def test_a_filter_matching_nothing_returns_nothing(
    conn: psycopg.Connection, table: IndexVersion, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    if path == "hnsw":
        monkeypatch.setattr(search_sql, "EXACT_FILTER_ROWS", 0)
    for flt in ({"bucket": 10}, {"cluster": 0, "bucket": 1}, {"no such key": True}):
        assert search(conn, table, query_vectors()[0], metadata=flt) == []


def test_a_very_selective_filter_is_searched_exactly(conn: psycopg.Connection, table: IndexVersion) -> None:
    """3 rows at the far end of the graph: read from the GIN index, never by walking the graph to them."""
    vector = query_vectors()[-1]
    found, made = searched(conn, table, vector, metadata={"rare": True})
    assert found == search(conn, table, vector, metadata={"rare": True}, exact=True) and len(found) == RARE
    assert made == {"hnsw": 0, "gin": 1, "seq": 0}


def test_an_hnsw_scan_that_stops_short_falls_back_to_exact(
    conn: psycopg.Connection, table: IndexVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Statistics from before an update: the planner expects the filter to keep every row; 3 are left."""
    monkeypatch.setattr(search_sql, "EXACT_FILTER_ROWS", 1000)  # 2,000 rows expected: the HNSW path
    stale = {"stale": True}
    conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(table.table))
    conn.execute(sql.SQL("UPDATE {} SET metadata = metadata || %s").format(table.table), (Jsonb(stale),))
    conn.execute(sql.SQL("ANALYZE {}").format(table.table))
    conn.execute(
        sql.SQL("UPDATE {} SET metadata = metadata - 'stale' WHERE NOT metadata @> %s").format(table.table),
        (Jsonb({"rare": True}),),
    )
    conn.execute("SET hnsw.max_scan_tuples = 10")  # past its first batch, the scan stops at once
    vector = query_vectors()[-1]
    found, made = searched(conn, table, vector, metadata=stale)
    assert found == search(conn, table, vector, metadata=stale, exact=True) and len(found) == RARE
    # the HNSW scan, then the exact one (which must not be the HNSW plan again: the planner still
    # expects 2,000 rows, for which the HNSW index looks cheapest)
    assert made["hnsw"] == 1 and made["gin"] + made["seq"] == 1, made


def test_search_statements_are_never_prepared(conn: psycopg.Connection, table: IndexVersion) -> None:
    """A prepared statement soon runs a generic plan: made without the filter's value, and under the
    planner options of whichever call (exact or not) made it."""
    for _ in range(8):
        search(conn, table, query_vectors()[0], metadata={"bucket": 0})
        search(conn, table, query_vectors()[0], metadata={"bucket": 0}, exact=True)
        search(conn, table, query_vectors()[0])
    prepared = conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()
    assert [s for (s,) in prepared if "candidates" in s or "EXPLAIN" in s] == []
    assert prepared  # psycopg prepares what runs often (set_config here): the check above can fail
