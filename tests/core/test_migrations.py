"""Migrations: applied once, in order, and edits to applied files refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from core.errors import MigrationError
from core.migrations import default_sql_dir, discover, migrate


def test_repository_migrations_are_numbered_and_applied(conn: psycopg.Connection) -> None:
    names = [m.name for m in discover(default_sql_dir())]
    assert names and names[0].startswith("0001_")
    applied = [row[0] for row in conn.execute("SELECT name FROM schema_migrations ORDER BY number")]
    assert applied == names
    assert migrate(conn) == []  # a second run applies nothing


def test_new_migrations_apply_in_order_once(conn: psycopg.Connection, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(default_sql_dir(), sql_dir)
    (sql_dir / "9001_add_notes.sql").write_text("CREATE TABLE notes (id int);")
    (sql_dir / "9002_add_note_text.sql").write_text("ALTER TABLE notes ADD COLUMN body text;")
    assert migrate(conn, sql_dir) == ["9001_add_notes.sql", "9002_add_note_text.sql"]
    assert migrate(conn, sql_dir) == []
    assert conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_name='notes'").fetchone() == (2,)


def test_an_edited_applied_migration_is_refused(conn: psycopg.Connection, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(default_sql_dir(), sql_dir)
    first = sorted(sql_dir.glob("0001_*.sql"))[0]
    first.write_text(first.read_text() + "\n-- an innocent-looking edit\n")
    with pytest.raises(MigrationError, match=r"0001_.*was edited after it was applied"):
        migrate(conn, sql_dir)


def test_a_failing_migration_changes_nothing(conn: psycopg.Connection, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(default_sql_dir(), sql_dir)
    (sql_dir / "9001_ok.sql").write_text("CREATE TABLE ok_table (id int);")
    (sql_dir / "9002_broken.sql").write_text("CREATE TABLE broken (id int; -- syntax error")
    with pytest.raises(MigrationError, match=r"9002_broken\.sql failed"):
        migrate(conn, sql_dir)
    assert conn.execute("SELECT to_regclass('ok_table')").fetchone() == (None,)


@pytest.mark.parametrize("bad_name", ["1_short.sql", "0003-dash.sql", "0004_Upper.sql"])
def test_badly_named_files_are_refused(tmp_path: Path, bad_name: str) -> None:
    (tmp_path / bad_name).write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_lower_snake"):
        discover(tmp_path)
