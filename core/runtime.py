"""Opening the database for a command: settings -> server -> migrated connection."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

from core.db import Database
from core.migrations import migrate
from core.settings import Settings, get_settings


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


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value


def pin_malloc_mmap_threshold() -> bool:
    """Keep glibc returning large freed blocks to the OS, for long-running processes; True when applied.

    glibc raises its mmap threshold (up to 32 MiB) each time a large mmapped block is freed; from then
    on the megabyte-sized tensors the embedding model allocates per request, of shapes varying with
    the input, come from the heap, where fragmentation keeps them: the API's RSS kept climbing under
    load. A fixed threshold turns the dynamic raise off. An explicit ``MALLOC_MMAP_THRESHOLD_`` in
    the environment wins; without glibc there is nothing to do.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # musl or another libc
        return False


def limit_blas_threads() -> None:
    """One OpenBLAS thread per calling thread, in long-running processes (unless the environment says otherwise).

    Requests are already answered in parallel, so BLAS threads only oversubscribe the cores; and
    OpenBLAS's fork handler deadlocks a process that forks (``pg_ctl``, ``git``) while another
    thread is inside a multi-threaded BLAS call, such as the PII model's matrix products.
    """
    if "OPENBLAS_NUM_THREADS" in os.environ:
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
