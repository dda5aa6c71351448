"""Usage from the roll-up of finished days equals usage aggregated from every ledger row (app/usage.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import psycopg
import pytest

from app.keys import create_key
from app.usage import GROUPS, SETTLE, _kth, roll_up, usage_by
from core.db import Database

# The usage query as it was before the roll-up: every ledger row of the period, aggregated by PostgreSQL.
REFERENCE_GROUPS = {
    "key": "coalesce(key_name, '(none)')",
    "day": "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "config": "coalesce(config_version, '(none)')",
    "model": "coalesce(model, '(none)')",
    "payer": "CASE WHEN rollout_side = 'shadow' THEN 'operator (rollout shadow)' ELSE 'keys' END",
}
FIELDS = ("requests", "errors", "prompt_tokens", "cached_tokens", "completion_tokens", "embedding_tokens",
          "cost_usd", "latency_p50_ms", "latency_p95_ms")  # fmt: skip


def reference(conn: psycopg.Connection, start: datetime, end: datetime, key_id: int | None = None) -> dict[str, Any]:
    """Each grouping's rows straight from the ledger (the oracle the roll-up must match to the bit)."""
    found: dict[str, Any] = {}
    for by, column in REFERENCE_GROUPS.items():
        rows = conn.execute(
            f"""SELECT {column}, count(*), count(*) FILTER (WHERE status >= 400), sum(prompt_tokens),
                       sum(cached_tokens), sum(completion_tokens), sum(embedding_tokens), sum(cost_usd),
                       percentile_cont(0.5) WITHIN GROUP (ORDER BY (latency_ms->>'total')::float8),
                       percentile_cont(0.95) WITHIN GROUP (ORDER BY (latency_ms->>'total')::float8)
                FROM ledger WHERE created_at >= %s AND created_at < %s AND (%s::bigint IS NULL OR key_id = %s)
                GROUP BY 1""",
            (start, end, key_id, key_id),
        ).fetchall()
        found[by] = sorted(
            ({"group": g, **dict(zip(FIELDS, (*(int(v) for v in values[:6]), *values[6:]), strict=True))}
             for g, *values in rows),
            key=lambda r: r["group"],
        )  # fmt: skip
    return found


@pytest.fixture
def ledger(private_database: Database) -> Iterator[tuple[psycopg.Connection, list[int]]]:
    """An empty ledger and roll-up, two keys; yields a connection and the keys' ids."""
    with private_database.connect() as conn:
        conn.execute("TRUNCATE ledger, usage_days, usage_rolled_days, usage_rollup_state CASCADE")
        keys = [create_key(conn, f"usage-{i}", ["query"], collections=["*"])[0].id for i in range(2)]
        yield conn, keys
        conn.execute("DELETE FROM api_keys WHERE id = ANY(%s)", (keys,))


def seed(conn: psycopg.Connection, keys: list[int], rows: int, since: datetime, until: datetime, tag: str) -> None:
    """``rows`` ledger rows spread evenly over [since, until): two keys and none, three configurations, two
    models and none, rollout shadows, errors, repeated latencies and some without a total."""
    conn.execute(
        """INSERT INTO ledger (request_id, key_id, key_name, route, status, config_version, model, rollout_side,
                               prompt_tokens, cached_tokens, completion_tokens, embedding_tokens, cost_usd,
                               latency_ms, created_at)
           SELECT %(tag)s || i, (ARRAY[%(k0)s, %(k1)s, NULL])[1 + i %% 3],
                  (ARRAY['usage-0', 'usage-1', NULL])[1 + i %% 3],
                  '/v1/query', CASE WHEN i %% 17 = 0 THEN 500 ELSE 200 END,
                  (ARRAY['a@1', 'b@2', NULL])[1 + i %% 5 %% 3], (ARRAY['m1', 'm2', NULL])[1 + i %% 7 %% 3],
                  CASE WHEN i %% 11 = 0 THEN 'shadow' WHEN i %% 13 = 0 THEN 'candidate' END,
                  100 + i %% 50, i %% 9, 20 + i %% 30, 7, (i %% 97) * 0.000000123,
                  CASE WHEN i %% 19 = 0 THEN '{}'::jsonb
                       ELSE jsonb_build_object('total', round(((i * 7919) %% 1000) / 3.0, 3)) END,
                  %(since)s + (%(until)s - %(since)s) * (i::float8 / %(rows)s)
           FROM generate_series(0, %(rows)s - 1) i""",
        {"tag": tag, "k0": keys[0], "k1": keys[1], "rows": rows, "since": since, "until": until},
    )


def test_rolled_up_usage_equals_the_ledger_to_the_bit(ledger: tuple[psycopg.Connection, list[int]]) -> None:
    conn, keys = ledger
    now = datetime.now(UTC)
    start = now - timedelta(days=6, hours=5)  # a partial first day, five finished days, today
    seed(conn, keys, 3000, start - timedelta(days=1), now, "u-")
    for key_id in (None, keys[0]):
        assert usage_by(conn, start, now, GROUPS, key_id=key_id, now=now) == reference(conn, start, now, key_id)
    rolled = conn.execute("SELECT count(*) FROM usage_rolled_days").fetchone()
    assert rolled is not None and rolled[0] >= 5  # the finished days now come from the roll-up
    assert usage_by(conn, start, now, GROUPS, now=now) == reference(conn, start, now)


def test_a_late_row_for_a_rolled_up_day_is_counted(ledger: tuple[psycopg.Connection, list[int]]) -> None:
    """A request that spanned midnight writes its row after its day was rolled up: the day rolls up again."""
    conn, keys = ledger
    now = datetime.now(UTC)
    start = (now - timedelta(days=4)).replace(hour=0, minute=0, second=0, microsecond=0)
    seed(conn, keys, 500, start, now, "e-")
    before = usage_by(conn, start, now, ["day"], now=now)["day"]
    late_at = start + timedelta(days=1, hours=23, minutes=59)  # a finished, rolled-up day
    seed(conn, keys, 3, late_at, late_at + timedelta(seconds=30), "late-")
    after = usage_by(conn, start, now, ["day"], now=now)["day"]
    day = late_at.date().isoformat()
    assert [r["requests"] for r in after if r["group"] == day] == [
        r["requests"] + 3 for r in before if r["group"] == day
    ]
    assert after == reference(conn, start, now)["day"]


def test_the_worker_chore_rolls_up_each_finished_day_once(ledger: tuple[psycopg.Connection, list[int]]) -> None:
    conn, keys = ledger
    now = datetime.now(UTC)
    seed(conn, keys, 400, now - timedelta(days=3), now, "w-")
    first, horizon = (now - timedelta(days=3)).date(), (now - SETTLE).date()  # days end SETTLE before rolling up
    finished = {first + timedelta(days=d) for d in range((horizon - first).days)}
    assert roll_up(conn, now) == len(finished)
    assert roll_up(conn, now) == 0  # nothing new: idempotent
    days = {d for (d,) in conn.execute("SELECT day FROM usage_rolled_days")}
    assert days == finished
    cells = conn.execute("SELECT sum(requests) FROM usage_days").fetchone()
    in_ledger = conn.execute(
        "SELECT count(*) FROM ledger WHERE (created_at AT TIME ZONE 'UTC')::date = ANY(%s)", (list(days),)
    ).fetchone()
    assert cells is not None and in_ledger is not None and cells[0] == in_ledger[0] > 0


def test_a_read_while_another_process_rolls_up_takes_the_ledger(
    ledger: tuple[psycopg.Connection, list[int]], private_database: Database
) -> None:
    """Two API processes: the one without the roll-up lock neither waits nor reports less."""
    conn, keys = ledger
    now = datetime.now(UTC)
    start = now - timedelta(days=3)
    seed(conn, keys, 300, start, now, "l-")
    with private_database.connect() as other, other.transaction():
        other.execute("SELECT pg_advisory_xact_lock(%s)", (0x7573_6167_6501,))
        assert usage_by(conn, start, now, GROUPS, now=now) == reference(conn, start, now)
        assert conn.execute("SELECT count(*) FROM usage_rolled_days").fetchone() == (0,)


def test_the_kth_of_two_sorted_arrays_is_the_kth_of_them_merged() -> None:
    """The selection the percentiles of rolled-up plus live latencies rest on, ties and empty sides included."""
    rng = np.random.default_rng(7)
    for _ in range(200):
        a = np.sort(rng.integers(0, 20, int(rng.integers(0, 30))).astype(np.float64))
        b = np.sort(rng.integers(0, 20, int(rng.integers(0, 6))).astype(np.float64))
        merged = np.sort(np.concatenate([a, b]))
        assert [_kth(a, b, k) for k in range(len(merged))] == merged.tolist()


def test_a_period_from_the_year_1_to_the_year_9999_rolls_up_only_the_ledgers_days(
    ledger: tuple[psycopg.Connection, list[int]],
) -> None:
    """Any period the API accepts: no overflow at the calendar's ends, no roll-up of empty centuries."""
    conn, keys = ledger
    now = datetime.now(UTC)
    seed(conn, keys, 200, now - timedelta(days=2), now, "y-")
    start = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))
    end = datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))
    assert usage_by(conn, start, end, GROUPS, now=now) == reference(conn, start, end)
    rolled = conn.execute("SELECT count(*) FROM usage_rolled_days").fetchone()
    assert rolled is not None and 1 <= rolled[0] <= 3
