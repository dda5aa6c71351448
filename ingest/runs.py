"""Ingest runs: one row per ``ragops ingest`` or job pass, with its counts, skips and timings."""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb


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
