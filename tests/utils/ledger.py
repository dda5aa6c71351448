"""Reading the ledger from tests (rows are written after the response, so allow a short wait)."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from core.db import Database


def ledger_row(database: Database, request_id: str, wait_s: float = 0.0) -> dict[str, Any] | None:
    deadline = time.monotonic() + wait_s
    while True:
        with database.connect() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            row = cur.execute("SELECT * FROM ledger WHERE request_id = %s", (request_id,)).fetchone()
        if row is not None or time.monotonic() >= deadline:
            return row
        time.sleep(0.1)


def table_dump(database: Database, *, skip_index: bool = False) -> str:
    """Every row of every table, as text (``table: row``, a line each), for leak scans.

    ``skip_index``: not documents, chunks and the chunks' BM25 terms (the source text and its words).
    """
    where = (
        " AND table_name NOT IN ('documents', 'bm25_terms') AND table_name NOT LIKE 'chunks_v%'" if skip_index else ""
    )
    dump = []
    with database.connect() as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables"
            f" WHERE table_schema = 'public' AND table_type = 'BASE TABLE'{where}"
        ).fetchall()
        for (table,) in tables:
            rows = conn.execute(psycopg.sql.SQL("SELECT t::text FROM {} t").format(psycopg.sql.Identifier(table)))
            dump.extend(f"{table}: " + row[0].replace("\n", " ") for row in rows)  # one line per row
    return "\n".join(dump)
