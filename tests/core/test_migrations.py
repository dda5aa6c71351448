"""Migrations: applied once, in order, and edits to applied files refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from core.config import IndexSettings
from core.errors import MigrationError
from core.migrations import default_sql_dir, discover, migrate
from ingest.versions import ensure_index_version


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


def test_keys_made_before_grants_keep_everything_and_new_ones_get_nothing(pg_server: str, tmp_path: Path) -> None:
    """0005 on a database with a key from before it: that key keeps every collection and configuration."""
    name = "before_tenancy"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    earlier = tmp_path / "sql"
    earlier.mkdir()
    for path in default_sql_dir().glob("*.sql"):
        if int(path.name[:4]) < 5:
            shutil.copy(path, earlier / path.name)
    insert = "INSERT INTO api_keys (name, prefix, salt, secret_hash, scopes) VALUES (%s, %s, '', '', '{query}')"
    try:
        with psycopg.connect(psycopg.conninfo.make_conninfo(pg_server, dbname=name), autocommit=True) as conn:
            migrate(conn, earlier)
            conn.execute(insert, ("old", "0000aaaa"))
            assert "0005_tenancy.sql" in migrate(conn)
            conn.execute(insert, ("new", "0000bbbb"))
            grants = dict(
                (row[0], (row[1], row[2])) for row in conn.execute("SELECT name, collections, configs FROM api_keys")
            )
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    assert grants == {"old": (["*"], ["*"]), "new": ([], [])}


def test_0019_gives_every_existing_chunk_table_a_sentence_vectors_column(conn: psycopg.Connection) -> None:
    """A version's table made before 0019 (here: its column dropped again) gets the column; others are left alone."""
    settings = IndexSettings()
    before = ensure_index_version(conn, settings, 384, "test")
    after = ensure_index_version(conn, settings, 384, "test", fresh=True)
    conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN sentence_vectors").format(before.table))
    column = (
        "SELECT count(*) FROM information_schema.columns WHERE table_name = %s AND column_name = 'sentence_vectors'"
    )
    assert conn.execute(column, (f"chunks_v{before.id}",)).fetchone() == (0,)
    conn.execute(next(default_sql_dir().glob("0019_*.sql")).read_text())
    for version in (before, after):
        assert conn.execute(column, (f"chunks_v{version.id}",)).fetchone() == (1,)
