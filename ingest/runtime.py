"""Opening the database for a command: settings -> server -> migrated connection."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

from ingest.db import Database
from ingest.migrations import migrate
from ingest.settings import Settings, get_settings


@dataclass
class Runtime:
    """A database (embedded or not) with one migrated connection, for CLI commands."""

    settings: Settings
    database: Database
    conn: psycopg.Connection


@contextlib.contextmanager
def open_runtime(settings: Settings | None = None, *, auto_migrate: bool = True) -> Iterator[Runtime]:
    """Start or reach PostgreSQL, migrate when configured to, and clean up on exit."""
    settings = settings or get_settings()
    database = Database.from_settings(settings)
    try:
        with database.connect() as conn:
            if auto_migrate and settings.migrate_on_start:
                migrate(conn)
            yield Runtime(settings=settings, database=database, conn=conn)
    finally:
        database.close()
