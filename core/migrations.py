"""Numbered SQL migrations from ``sql/``, applied in order, each once, with a checksum.

An applied migration whose file changed is refused: history must be appended to, not edited.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from core.errors import MigrationError

MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Any constant works; it only has to be the same in every process that migrates.
_ADVISORY_LOCK = 7_311_001


def default_sql_dir() -> Path:
    """The repository's ``sql/`` folder (next to the packages)."""
    return Path(__file__).resolve().parent.parent / "sql"


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    number: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """sha256 of the file's text."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(sql_dir: Path) -> list[Migration]:
    """The migrations in ``sql_dir``, ordered; duplicate numbers are an error."""
    found: dict[int, Migration] = {}
    for path in sorted(sql_dir.glob("*.sql")):
        match = MIGRATION_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration files are named NNNN_lower_snake.sql")
        number = int(match.group(1))
        if number in found:
            raise MigrationError(f"{path}: number {number:04d} is already used by {found[number].name}")
        found[number] = Migration(number=number, name=path.name, sql=path.read_text(encoding="utf-8"))
    return [found[n] for n in sorted(found)]


def migrate(conn: psycopg.Connection, sql_dir: Path | None = None) -> list[str]:
    """Apply pending migrations; return the names applied. Safe to run from several processes."""
    migrations = discover(sql_dir or default_sql_dir())
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK,))
        conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   number integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        applied = {
            row[0]: (row[1], row[2]) for row in conn.execute("SELECT number, name, checksum FROM schema_migrations")
        }
        for migration in migrations:
            if migration.number in applied:
                _, checksum = applied[migration.number]
                if checksum != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.name} was edited after it was applied "
                        f"(applied checksum {checksum[:12]}, file now {migration.checksum[:12]}); "
                        "restore the file and put the change in a new migration"
                    )
                continue
            try:
                conn.execute(migration.sql)
            except psycopg.Error as exc:
                raise MigrationError(f"migration {migration.name} failed: {exc}") from None
            conn.execute(
                "INSERT INTO schema_migrations (number, name, checksum) VALUES (%s, %s, %s)",
                (migration.number, migration.name, migration.checksum),
            )
            applied_now.append(migration.name)
    return applied_now
