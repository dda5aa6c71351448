"""Drift tables: recorded answers (vectors, scores and numbers, never text), references, judged windows.

The worker reads and writes through here, the API records through here, and the CLI pins and
reports through here, so the SQL of migrations 0011 and 0015 has one home.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from core.drift.stats import State

# Scalar signals read straight from drift_observations (the answer-side ones come from an AnswerMeasures).
RETRIEVAL_SIGNALS = ("top_score", "score_margin", "empty_retrieval")


@dataclass(frozen=True)
class Observation:
    """What one answer leaves for drift monitoring."""

    request_id: str
    collection: str
    config: str
    embedding: np.ndarray | None
    scores: list[float]  # every retrieved chunk's score, best first
    answer_tokens: int | None = None
    refused: bool | None = None
    support_share: float | None = None  # None: a refusal, nothing cited, or the answer went unfiltered

    @property
    def top_score(self) -> float | None:
        """Top-1 retrieval score, None when nothing was retrieved."""
        return self.scores[0] if self.scores else None

    @property
    def margin(self) -> float | None:
        """Top-1 minus top-2, None with fewer than two hits."""
        return self.scores[0] - self.scores[1] if len(self.scores) > 1 else None


@dataclass(frozen=True)
class Reference:
    """A pinned reference and its samples."""

    id: int
    collection: str
    config: str
    source: str
    created_at: datetime
    window_from: datetime | None
    window_to: datetime | None
    note: str
    vectors: np.ndarray | None
    values: dict[str, np.ndarray]


@dataclass(frozen=True)
class WindowRow:
    """One judged window of one signal (a row of drift_windows)."""

    collection: str
    config: str
    signal: str
    window_start: datetime
    window_end: datetime
    state: State
    alarm: bool
    n: int
    reference_n: int
    statistic: float | None
    p_value: float | None
    psi: float | None
    reference_value: float | None
    window_value: float | None
    reference_id: int | None


def record_observation(conn: psycopg.Connection, obs: Observation) -> None:
    """Store one answer's vector, retrieval scores and answer measures (a retried request id is stored once)."""
    register_vector(conn)
    conn.execute(
        """INSERT INTO drift_observations (request_id, collection, config, embedding, top_score, score_margin, hits,
               answer_tokens, refused, support_share)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (request_id) DO NOTHING""",
        (obs.request_id, obs.collection, obs.config, obs.embedding, obs.top_score, obs.margin, len(obs.scores),
         obs.answer_tokens, obs.refused, obs.support_share),
    )  # fmt: skip


def record_block(conn: psycopg.Connection, collection: str, config: str) -> None:
    """Count one question refused for blocked personal data (nothing of the question is kept)."""
    conn.execute("INSERT INTO drift_blocks (collection, config) VALUES (%s, %s)", (collection, config))


def delete_expired(conn: psycopg.Connection, config: str, retention_days: int) -> int:
    """Delete a configuration's recorded answers and blocks older than its retention; returns how many."""
    deleted = 0
    for table in ("drift_observations", "drift_blocks"):
        cur = conn.execute(
            sql.SQL("DELETE FROM {} WHERE config = %s AND created_at < now() - make_interval(days => %s)").format(
                sql.Identifier(table)
            ),
            (config, retention_days),
        )
        deleted += cur.rowcount
    return deleted


def window_blocks(conn: psycopg.Connection, collection: str, config: str, start: datetime, end: datetime) -> np.ndarray:
    """One flag per question of ``[start, end)``: True for each blocked one, False for each recorded answer."""
    row = conn.execute(
        """SELECT (SELECT count(*) FROM drift_blocks WHERE collection = %(c)s AND config = %(k)s
                       AND created_at >= %(s)s AND created_at < %(e)s),
                  (SELECT count(*) FROM drift_observations WHERE collection = %(c)s AND config = %(k)s
                       AND created_at >= %(s)s AND created_at < %(e)s)""",
        {"c": collection, "k": config, "s": start, "e": end},
    ).fetchone()
    blocked, answered = (int(row[0]), int(row[1])) if row else (0, 0)
    return np.concatenate([np.ones(blocked, dtype=bool), np.zeros(answered, dtype=bool)])


def window_vectors(
    conn: psycopg.Connection, collection: str, config: str, start: datetime, end: datetime
) -> np.ndarray:
    """Question vectors answered in ``[start, end)``, oldest first."""
    register_vector(conn)
    rows = conn.execute(
        """SELECT embedding FROM drift_observations WHERE collection = %s AND config = %s
               AND created_at >= %s AND created_at < %s AND embedding IS NOT NULL ORDER BY id""",
        (collection, config, start, end),
    ).fetchall()
    return np.stack([np.asarray(r[0], dtype=np.float32) for r in rows]) if rows else np.zeros((0, 0), np.float32)


def window_retrieval(
    conn: psycopg.Connection, collection: str, config: str, start: datetime, end: datetime
) -> dict[str, np.ndarray]:
    """The retrieval signals of answers in ``[start, end)``: top score and margin where defined, emptiness always."""
    rows = conn.execute(
        """SELECT top_score, score_margin, hits FROM drift_observations WHERE collection = %s AND config = %s
               AND created_at >= %s AND created_at < %s ORDER BY id""",
        (collection, config, start, end),
    ).fetchall()
    return {
        "top_score": np.array([r[0] for r in rows if r[0] is not None], dtype=np.float64),
        "score_margin": np.array([r[1] for r in rows if r[1] is not None], dtype=np.float64),
        "empty_retrieval": np.array([r[2] == 0 for r in rows], dtype=bool),
    }


def window_answers(
    conn: psycopg.Connection, collection: str, config: str, start: datetime, end: datetime
) -> dict[str, np.ndarray]:
    """The answer measures recorded beside the answers of ``[start, end)``, each where it was measured."""
    rows = conn.execute(
        """SELECT answer_tokens, refused, support_share FROM drift_observations WHERE collection = %s
               AND config = %s AND created_at >= %s AND created_at < %s ORDER BY id""",
        (collection, config, start, end),
    ).fetchall()
    return {
        "answer_tokens": np.array([r[0] for r in rows if r[0] is not None], dtype=np.float64),
        "refusal": np.array([r[1] for r in rows if r[1] is not None], dtype=bool),
        "support_share": np.array([r[2] for r in rows if r[2] is not None], dtype=np.float64),
    }


def monitored_pairs(conn: psycopg.Connection, config: str) -> list[str]:
    """Collections with recorded answers of ``config``."""
    rows = conn.execute("SELECT DISTINCT collection FROM drift_observations WHERE config = %s", (config,)).fetchall()
    return sorted(r[0] for r in rows)


def first_observation(conn: psycopg.Connection, collection: str, config: str) -> datetime | None:
    """When the oldest recorded answer still kept was made."""
    row = conn.execute(
        "SELECT min(created_at) FROM drift_observations WHERE collection = %s AND config = %s", (collection, config)
    ).fetchone()
    return row[0] if row else None


def create_reference(
    conn: psycopg.Connection,
    collection: str,
    config: str,
    source: str,
    vectors: np.ndarray | None,
    values: dict[str, np.ndarray],
    *,
    window: tuple[datetime, datetime] | None = None,
    note: str = "",
) -> int:
    """Store a reference (vectors and scalar samples, never text); returns its id. It is the pair's newest."""
    register_vector(conn)
    with conn.transaction():
        row = conn.execute(
            """INSERT INTO drift_references (collection, config, source, window_from, window_to, note)
               VALUES (%s, %s, %s, %s, %s, %s) RETURNING id""",
            (collection, config, source, window[0] if window else None, window[1] if window else None, note),
        ).fetchone()
        assert row is not None
        ref_id = int(row[0])
        if vectors is not None and len(vectors):
            with conn.cursor().copy(
                "COPY drift_reference_vectors (reference_id, embedding) FROM STDIN WITH (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["bigint", "vector"])
                for v in vectors:
                    copy.write_row((ref_id, np.asarray(v, dtype=np.float32)))
        for signal, sample in values.items():
            if len(sample):
                conn.execute(
                    'INSERT INTO drift_reference_values (reference_id, signal, "values") VALUES (%s, %s, %s)',
                    (ref_id, signal, [float(x) for x in np.asarray(sample, dtype=np.float64)]),
                )
    return ref_id


def latest_reference(conn: psycopg.Connection, collection: str, config: str) -> Reference | None:
    """The reference windows of (collection, config) are judged against: the newest pinned one."""
    register_vector(conn)
    row = conn.execute(
        """SELECT id, collection, config, source, created_at, window_from, window_to, note FROM drift_references
           WHERE collection = %s AND config = %s ORDER BY id DESC LIMIT 1""",
        (collection, config),
    ).fetchone()
    if row is None:
        return None
    vectors = [
        np.asarray(r[0], dtype=np.float32)
        for r in conn.execute("SELECT embedding FROM drift_reference_vectors WHERE reference_id = %s", (row[0],))
    ]
    values = {
        r[0]: np.asarray(r[1], dtype=np.float64)
        for r in conn.execute('SELECT signal, "values" FROM drift_reference_values WHERE reference_id = %s', (row[0],))
    }
    return Reference(
        id=row[0], collection=row[1], config=row[2], source=row[3], created_at=row[4], window_from=row[5],
        window_to=row[6], note=row[7], vectors=np.stack(vectors) if vectors else None, values=values,
    )  # fmt: skip


def last_window_start(conn: psycopg.Connection, collection: str, config: str) -> datetime | None:
    """The newest judged window of (collection, config)."""
    row = conn.execute(
        "SELECT max(window_start) FROM drift_windows WHERE collection = %s AND config = %s", (collection, config)
    ).fetchone()
    return row[0] if row else None


def recent_states(
    conn: psycopg.Connection, collection: str, config: str, signal: str, before: datetime, count: int
) -> list[State]:
    """The states of the ``count`` windows of a signal before ``before``, oldest first."""
    rows = conn.execute(
        """SELECT state FROM drift_windows WHERE collection = %s AND config = %s AND signal = %s AND window_start < %s
           ORDER BY window_start DESC LIMIT %s""",
        (collection, config, signal, before, count),
    ).fetchall()
    return [r[0] for r in reversed(rows)]


def insert_window(conn: psycopg.Connection, row: WindowRow) -> bool:
    """Store a judged window; False when it was already there (a restarted worker never counts it twice)."""
    cur = conn.execute(
        """INSERT INTO drift_windows (collection, config, signal, window_start, window_end, reference_id, state,
               alarm, n, reference_n, statistic, p_value, psi, reference_value, window_value)
           VALUES (%(collection)s, %(config)s, %(signal)s, %(window_start)s, %(window_end)s, %(reference_id)s,
               %(state)s, %(alarm)s, %(n)s, %(reference_n)s, %(statistic)s, %(p_value)s, %(psi)s,
               %(reference_value)s, %(window_value)s)
           ON CONFLICT (collection, config, signal, window_start) DO NOTHING""",
        row.__dict__,
    )
    return cur.rowcount == 1


_WINDOW_COLUMNS = """collection, config, signal, window_start, window_end, state, alarm, n, reference_n, statistic,
    p_value, psi, reference_value, window_value, reference_id"""


def read_windows(
    conn: psycopg.Connection,
    *,
    collections: frozenset[str] | None,
    collection: str | None = None,
    config: str | None = None,
    since: datetime | None = None,
    limit: int = 5000,
) -> list[WindowRow]:
    """Judged windows, oldest first, only of ``collections`` (None: all)."""
    clauses: list[str] = ["TRUE"]
    params: dict[str, Any] = {}
    if collections is not None:
        clauses.append("collection = ANY(%(collections)s)")
        params["collections"] = sorted(collections)
    for name, value in (("collection", collection), ("config", config)):
        if value is not None:
            clauses.append(f"{name} = %({name})s")
            params[name] = value
    if since is not None:
        clauses.append("window_start >= %(since)s")
        params["since"] = since
    params["limit"] = limit
    rows = conn.execute(
        f"""SELECT * FROM (SELECT {_WINDOW_COLUMNS} FROM drift_windows WHERE {" AND ".join(clauses)}
            ORDER BY window_start DESC LIMIT %(limit)s) w ORDER BY window_start, signal""",
        params,
    ).fetchall()
    return [WindowRow(*r) for r in rows]


def latest_windows(conn: psycopg.Connection) -> list[WindowRow]:
    """The newest judged window of every (collection, config, signal): what the gauges show."""
    rows = conn.execute(
        f"""SELECT DISTINCT ON (collection, config, signal) {_WINDOW_COLUMNS} FROM drift_windows
            ORDER BY collection, config, signal, window_start DESC"""
    ).fetchall()
    return [WindowRow(*r) for r in rows]


def low_score_vectors(
    conn: psycopg.Connection, collection: str, config: str, since: datetime, below: float
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Vectors, top scores and request ids of answers since ``since`` whose top score is below ``below``
    (or that retrieved nothing)."""
    register_vector(conn)
    rows = conn.execute(
        """SELECT embedding, coalesce(top_score, 0), request_id FROM drift_observations
           WHERE collection = %s AND config = %s AND created_at >= %s AND embedding IS NOT NULL
             AND (top_score IS NULL OR top_score < %s) ORDER BY id""",
        (collection, config, since, below),
    ).fetchall()
    if not rows:
        return np.zeros((0, 0), np.float32), np.zeros(0), []
    vectors = np.stack([np.asarray(r[0], dtype=np.float32) for r in rows])
    return vectors, np.array([r[1] for r in rows]), [r[2] for r in rows]


def as_dict(row: WindowRow) -> dict[str, Any]:
    """A window as plain data (JSON, the HTML report)."""
    return dict(row.__dict__)
