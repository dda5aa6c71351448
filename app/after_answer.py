"""What an answer leaves behind (transcript, drift record, evaluation and rollout queues), written after the response.

The answering path only decides, from what it holds in memory, what to write, and hands each write
to the request's meter (:meth:`app.metering.Meter.leave`); the ledger write performs them once the
response is over, on its connection and in its transaction (:meth:`app.accounting.Accountant.record`).
Each runs in a savepoint: one that fails is rolled back alone and logged by type name, while the
answer has been given already and the ledger row stays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AfterAnswer:
    """One write an answered request leaves behind."""

    name: str  # what it writes, for the log ("transcript", "drift", ...)
    write: Callable[[psycopg.Connection], object]


def perform(conn: psycopg.Connection, writes: Sequence[AfterAnswer], request_id: str) -> int:
    """Run ``writes`` in savepoints of the connection's open transaction; how many succeeded."""
    done = 0
    for item in writes:
        try:
            with conn.transaction():
                item.write(conn)
        except Exception as exc:  # whatever one write raises, the others and the ledger row go on
            log.error("%s write failed for request %s: %s", item.name, request_id, type(exc).__name__)
        else:
            done += 1
    return done
