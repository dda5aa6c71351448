"""The rollout tables (sql/0014_rollouts.sql): rollouts, recorded gates, the shadow queue, paired samples.

Every value is a bind parameter; no question text leaves the queue (a row is deleted when it is claimed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from core.config import RolloutSettings

Status = Literal["shadow", "canary", "promoted", "rolled_back", "aborted"]
ACTIVE: frozenset[str] = frozenset({"shadow", "canary"})
Side = Literal["live", "candidate"]


@dataclass(frozen=True)
class Versions:
    """What answers one side: a configuration, its prompt, an index version (by id)."""

    config: str
    prompt: str
    index_version: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"config": self.config, "prompt": self.prompt, "index_version": self.index_version}


@dataclass(frozen=True)
class Rollout:
    """One rollout row."""

    id: int
    collection: str
    status: str
    live: Versions
    candidate: Versions
    gate_id: int | None
    guards: RolloutSettings
    reason: str | None
    decision: dict[str, Any] | None
    created_by: str
    created_at: datetime
    stage_started_at: datetime
    finished_at: datetime | None

    @property
    def active(self) -> bool:
        """In shadow or canary."""
        return self.status in ACTIVE

    def side(self, side: Side) -> Versions:
        """The versions of one side."""
        return self.live if side == "live" else self.candidate


@dataclass(frozen=True)
class Gate:
    """A recorded eval gate run."""

    id: int
    candidate: dict[str, Any]
    passed: bool
    verdict: str
    report_sha256: str
    versions: dict[str, Any]
    created_at: datetime


_COLUMNS = ("id, collection, status, live, candidate, gate_id, guards, reason, decision, created_by, created_at, "
            "stage_started_at, finished_at")  # fmt: skip


def _rollout(row: dict[str, Any]) -> Rollout:
    return Rollout(
        **{**row, "live": Versions(**row["live"]), "candidate": Versions(**row["candidate"]),
           "guards": RolloutSettings.model_validate(row["guards"])}
    )  # fmt: skip


def _one(conn: psycopg.Connection, query: str, params: Any) -> Rollout | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query, params).fetchone()
    return _rollout(row) if row else None


def insert_rollout(
    conn: psycopg.Connection,
    collection: str,
    live: Versions,
    candidate: Versions,
    guards: RolloutSettings,
    gate_id: int | None,
    created_by: str,
) -> Rollout:
    """A new rollout in shadow; :class:`psycopg.errors.UniqueViolation` when the collection has an active one."""
    rollout = _one(
        conn,
        f"""INSERT INTO rollouts (collection, status, live, candidate, guards, gate_id, created_by)
            VALUES (%s, 'shadow', %s, %s, %s, %s, %s) RETURNING {_COLUMNS}""",
        (collection, Jsonb(live.as_dict()), Jsonb(candidate.as_dict()), Jsonb(guards.model_dump(mode="json")),
         gate_id, created_by),
    )  # fmt: skip
    assert rollout is not None
    return rollout


def get_rollout(conn: psycopg.Connection, rollout_id: int, *, lock: bool = False) -> Rollout | None:
    """One rollout, or None; ``lock``: FOR UPDATE (inside a transaction)."""
    return _one(conn, f"SELECT {_COLUMNS} FROM rollouts WHERE id = %s{' FOR UPDATE' if lock else ''}", (rollout_id,))


def active_rollout(conn: psycopg.Connection, collection: str) -> Rollout | None:
    """The collection's rollout in shadow or canary, if any."""
    return _one(
        conn, f"SELECT {_COLUMNS} FROM rollouts WHERE collection = %s AND status IN ('shadow', 'canary')", (collection,)
    )


def active_rollouts(conn: psycopg.Connection) -> dict[str, Rollout]:
    """Every active rollout by collection."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(f"SELECT {_COLUMNS} FROM rollouts WHERE status IN ('shadow', 'canary')").fetchall()
    return {r.collection: r for r in map(_rollout, rows)}


def list_rollouts(
    conn: psycopg.Connection, *, collections: frozenset[str] | None = None, limit: int = 50
) -> list[Rollout]:
    """Rollouts newest first, of some collections only (None: all)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""SELECT {_COLUMNS} FROM rollouts
                WHERE %(cols)s::text[] IS NULL OR collection = ANY(%(cols)s::text[])
                ORDER BY id DESC LIMIT %(limit)s""",
            {"cols": None if collections is None else sorted(collections), "limit": limit},
        ).fetchall()
    return [_rollout(r) for r in rows]


def set_status(
    conn: psycopg.Connection,
    rollout_id: int,
    status: Status,
    *,
    reason: str | None = None,
    decision: dict[str, Any] | None = None,
) -> Rollout:
    """Move a rollout to ``status`` (its queued questions are deleted once it ends); inside the caller's transaction."""
    finished = status not in ACTIVE
    rollout = _one(
        conn,
        f"""UPDATE rollouts SET status = %s, reason = coalesce(%s, reason), decision = coalesce(%s, decision),
                stage_started_at = CASE WHEN status <> %s THEN now() ELSE stage_started_at END,
                finished_at = CASE WHEN %s THEN now() ELSE NULL END, updated_at = now()
            WHERE id = %s RETURNING {_COLUMNS}""",
        (status, reason, Jsonb(decision) if decision is not None else None, status, finished, rollout_id),
    )
    assert rollout is not None
    if finished:
        conn.execute("DELETE FROM rollout_queue WHERE rollout_id = %s", (rollout_id,))
    return rollout


def note_decision(conn: psycopg.Connection, rollout_id: int, decision: dict[str, Any]) -> None:
    """Keep the sequential test's latest state with the rollout (shown by status)."""
    conn.execute("UPDATE rollouts SET decision = %s, updated_at = now() WHERE id = %s", (Jsonb(decision), rollout_id))


# ---------------------------------------------------------------- gates


def record_gate(
    conn: psycopg.Connection, candidate: dict[str, Any], passed: bool, verdict: str, sha256: str,
    versions: dict[str, Any],
) -> Gate:  # fmt: skip
    """Store one gate run's outcome."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            """INSERT INTO rollout_gates (candidate, passed, verdict, report_sha256, versions)
               VALUES (%s, %s, %s, %s, %s) RETURNING *""",
            (Jsonb(candidate), passed, verdict, sha256, Jsonb(versions)),
        ).fetchone()
    assert row is not None
    return Gate(**row)


def get_gate(conn: psycopg.Connection, gate_id: int) -> Gate | None:
    """One recorded gate run, or None."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM rollout_gates WHERE id = %s", (gate_id,)).fetchone()
    return Gate(**row) if row else None


# ---------------------------------------------------------------- the queue and the samples


def enqueue(
    conn: psycopg.Connection, rollout: Rollout, request_id: str, served_side: Side, question: str,
    served: dict[str, Any],
) -> None:  # fmt: skip
    """Queue a (PII-filtered) question to be answered on the other side by the worker."""
    conn.execute(
        """INSERT INTO rollout_queue (rollout_id, stage, request_id, served_side, question, served)
           VALUES (%s, %s, %s, %s, %s, %s)""",
        (rollout.id, rollout.status, request_id, served_side, question, Jsonb(served)),
    )


@dataclass(frozen=True)
class Queued:
    """A claimed question (already deleted from the queue)."""

    rollout_id: int
    stage: str
    request_id: str
    served_side: Side
    question: str
    served: dict[str, Any]


def claim(conn: psycopg.Connection, limit: int = 8) -> list[Queued]:
    """Take (and delete) the oldest queued questions; concurrent workers skip each other's rows."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """DELETE FROM rollout_queue WHERE id IN (
                   SELECT id FROM rollout_queue ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)
               RETURNING rollout_id, stage, request_id, served_side, question, served""",
            (limit,),
        ).fetchall()
    return [Queued(**r) for r in rows]


def add_sample(
    conn: psycopg.Connection, rollout_id: int, stage: str, request_id: str, live: dict[str, Any],
    candidate: dict[str, Any],
) -> None:  # fmt: skip
    """Record one paired comparison (measures only)."""
    conn.execute(
        "INSERT INTO rollout_samples (rollout_id, stage, request_id, live, candidate) VALUES (%s, %s, %s, %s, %s)",
        (rollout_id, stage, request_id, Jsonb(live), Jsonb(candidate)),
    )


def samples(conn: psycopg.Connection, rollout_id: int, stage: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """A stage's paired measures, oldest first: (live, candidate)."""
    rows = conn.execute(
        "SELECT live, candidate FROM rollout_samples WHERE rollout_id = %s AND stage = %s ORDER BY id",
        (rollout_id, stage),
    ).fetchall()
    return [(live, candidate) for live, candidate in rows]


def sample_counts(conn: psycopg.Connection, rollout_id: int) -> dict[str, int]:
    """Paired questions per stage."""
    rows = conn.execute(
        "SELECT stage, count(*) FROM rollout_samples WHERE rollout_id = %s GROUP BY stage", (rollout_id,)
    ).fetchall()
    return {stage: int(n) for stage, n in rows}


def feedback_counts(conn: psycopg.Connection, rollout_id: int) -> tuple[int, int]:
    """(negative, all) ratings (POST /v1/feedback) of the rollout's canary-side answers."""
    row = conn.execute(
        """SELECT count(*) FILTER (WHERE f.negative), count(*) FROM feedback f
           JOIN ledger l ON l.request_id = f.request_id
           WHERE l.rollout_id = %s AND l.rollout_side = 'candidate'""",
        (rollout_id,),
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)
