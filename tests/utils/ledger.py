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
