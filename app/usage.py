"""Usage from the ledger: requests, errors, tokens, cost and latency percentiles per key, day, configuration,
model or payer, for any period; read by ``GET /v1/usage``, ``ragops usage`` and the console's usage page.

Finished UTC days are rolled up once into ``usage_days`` (sql/0016_usage_days.sql): one row per day x key x
configuration x model x payer with its sums and every request's total latency, so that percentiles of any
grouping stay exact (PostgreSQL's ``percentile_cont``, to the bit) while a page reads a few hundred rows
instead of every ledger row of the period. The rest of a period (today, a partial first day, a day not
rolled up yet) is aggregated from the ledger by the same query, and both are merged here. Each process keeps
the merged groups of the rolled-up days it last read (checked against the days' roll-up times on every read),
so a page view reads and sorts only today's latencies.

Rolling up happens in the worker (:data:`USAGE_ROLLUP`) and, for the days a read needs, on the read itself;
one process at a time (an advisory lock: another process reads such days live meanwhile). A day is rolled
up only once it ended :data:`SETTLE` ago, so that requests still being written have landed; a ledger row
that still arrives for a rolled-up day (a request that spanned midnight) rolls that day up again.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import psycopg

from ingest.worker import Chore

GROUPS = ("key", "day", "config", "model", "payer")
SETTLE = timedelta(minutes=10)  # a day is rolled up this long after it ends
MAX_DAYS_PER_PASS = 31  # the worker rolls up a long backlog a month per pass, in short transactions
_LOCK = 0x7573_6167_6501  # advisory lock of the roll-up ("usage", 1)
_SHADOW_PAYER, _KEYS_PAYER = "operator (rollout shadow)", "keys"
_COUNTS = ("requests", "errors", "prompt_tokens", "cached_tokens", "completion_tokens", "embedding_tokens")

# One row per day x key x configuration x model x payer of the ledger rows selected, as usage_days stores it
# (grouped by byte order: the same groups as the database's collation, sorted without its cost).
_CELLS = """SELECT (created_at AT TIME ZONE 'UTC')::date, key_id, coalesce(key_name, '(none)') COLLATE "C",
       coalesce(config_version, '(none)') COLLATE "C", coalesce(model, '(none)') COLLATE "C",
       coalesce(rollout_side = 'shadow', false),
       count(*), count(*) FILTER (WHERE status >= 400), sum(prompt_tokens), sum(cached_tokens),
       sum(completion_tokens), sum(embedding_tokens), sum(cost_usd),
       coalesce(string_agg(float8send((latency_ms->>'total')::float8), ''::bytea), ''::bytea)"""
_CELL_GROUPS = "GROUP BY 1, 2, 3, 4, 5, 6"


@dataclass(frozen=True)
class _Cell:
    """One day x key x configuration x model x payer: sums, and its requests' total latencies."""

    day: date
    key_id: int | None
    key_name: str
    config: str
    model: str
    shadow: bool
    counts: tuple[int, ...]
    cost_usd: Decimal
    latencies: np.ndarray

    def group(self, by: str) -> str:
        """The cell's group under a grouping."""
        if by == "day":
            return self.day.isoformat()
        if by == "payer":
            return _SHADOW_PAYER if self.shadow else _KEYS_PAYER
        return {"key": self.key_name, "config": self.config, "model": self.model}[by]


def _cells(rows: Iterable[tuple[Any, ...]]) -> list[_Cell]:
    return [
        _Cell(
            day,
            key_id,
            key,
            config,
            model,
            shadow,
            tuple(int(v or 0) for v in counts),
            cost or Decimal(0),
            np.frombuffer(lat, dtype=">f8").astype(np.float64),
        )
        for day, key_id, key, config, model, shadow, *counts, cost, lat in rows
    ]


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, UTC)


def _horizon(now: datetime) -> date:
    """The first day not finished long enough to roll up."""
    return (now - SETTLE).astimezone(UTC).date()


def _roll_day(conn: psycopg.Connection, day: date) -> None:
    """Replace a day's roll-up by its ledger rows as they are now (inside the roll-up's transaction)."""
    bounds = {"day": day, "from": _day_start(day), "to": _day_start(day + timedelta(days=1))}
    conn.execute("DELETE FROM usage_days WHERE day = %(day)s", bounds)
    conn.execute(
        f"""INSERT INTO usage_days (day, key_id, key_name, config_version, model, shadow, requests, errors,
                prompt_tokens, cached_tokens, completion_tokens, embedding_tokens, cost_usd, latencies)
            {_CELLS} FROM ledger WHERE created_at >= %(from)s AND created_at < %(to)s {_CELL_GROUPS}""",
        bounds,
    )
    conn.execute(
        """INSERT INTO usage_rolled_days (day, ledger_rows, max_ledger_id)
           SELECT %(day)s, count(*), coalesce(max(id), 0) FROM ledger
            WHERE created_at >= %(from)s AND created_at < %(to)s
           ON CONFLICT (day) DO UPDATE SET ledger_rows = excluded.ledger_rows,
               max_ledger_id = excluded.max_ledger_id, rolled_at = now()""",
        bounds,
    )


def roll_up(conn: psycopg.Connection, now: datetime | None = None, days: Sequence[date] | None = None) -> int:
    """Roll up finished days not rolled up yet, and again those a late ledger row arrived for; returns how many.

    ``days``: only these (those not finished long enough are skipped); default: every finished day since the
    ledger's first row, at most :data:`MAX_DAYS_PER_PASS` per call. Returns 0 without waiting while another
    process is rolling up (its reads then take the days it has not finished from the ledger).
    """
    horizon = _horizon(now or datetime.now(UTC))
    with conn.transaction():
        if not _fetch(conn, "SELECT pg_try_advisory_xact_lock(%s)", (_LOCK,)):
            return 0
        top = _fetch(conn, "SELECT max(id) FROM ledger")
        if top is None:
            return 0
        checked = _fetch(conn, "SELECT checked_id FROM usage_rollup_state")
        late: set[date] = set()
        if checked is not None and top > checked:  # rows written since the last pass: any for a rolled-up day?
            late = {d for (d,) in conn.execute(
                """SELECT DISTINCT r.day FROM ledger l
                     JOIN usage_rolled_days r ON r.day = (l.created_at AT TIME ZONE 'UTC')::date
                    WHERE l.id > %s AND l.id <= %s""",
                (checked, top),
            )}  # fmt: skip
        if days is None:
            first = _fetch(conn, "SELECT min(created_at) FROM ledger").astimezone(UTC).date()
            wanted = [first + timedelta(days=i) for i in range(max((horizon - first).days, 0))]
        else:
            wanted = [d for d in days if d < horizon]
        rolled = {d for (d,) in conn.execute("SELECT day FROM usage_rolled_days WHERE day = ANY(%s)", (wanted,))}
        missing = sorted(set(wanted) - rolled)
        todo = sorted(late | set(missing if days is not None else missing[:MAX_DAYS_PER_PASS]))
        for day in todo:
            _roll_day(conn, day)
        conn.execute(
            """INSERT INTO usage_rollup_state (checked_id) VALUES (%s) ON CONFLICT (only_row)
               DO UPDATE SET checked_id = greatest(usage_rollup_state.checked_id, excluded.checked_id)""",
            (top,),
        )
    return len(todo)


def _pending(conn: psycopg.Connection, days: Sequence[date]) -> bool:
    """Whether any of ``days`` is not rolled up, or a ledger row arrived late for a rolled-up day (read only)."""
    rolled, checked = conn.execute(
        """SELECT (SELECT count(*) FROM usage_rolled_days WHERE day = ANY(%s)),
                  (SELECT checked_id FROM usage_rollup_state)""",
        (list(days),),
    ).fetchone() or (0, None)
    if rolled < len(days):
        return True
    return checked is not None and bool(_fetch(conn,  # the id as a value: planned as a range scan of the newest rows
        """SELECT EXISTS (SELECT 1 FROM ledger l JOIN usage_rolled_days r
                            ON r.day = (l.created_at AT TIME ZONE 'UTC')::date WHERE l.id > %s)""",
        (checked,), prepare=False,
    ))  # fmt: skip


def _fetch(conn: psycopg.Connection, sql: str, params: Sequence[Any] = (), *, prepare: bool | None = None) -> Any:
    row = conn.execute(sql, params, prepare=prepare).fetchone()
    return row[0] if row else None


USAGE_ROLLUP = Chore("usage roll-up", 300.0, roll_up)


@dataclass(frozen=True)
class _Group:
    """One group's sums and its requests' total latencies, in ascending order."""

    counts: tuple[int, ...]
    cost_usd: Decimal
    latencies: np.ndarray


def _merged(cells: Sequence[_Cell], by: str) -> dict[str, _Group]:
    """The cells' sums and latencies per group of one grouping."""
    parts: dict[str, tuple[list[int], list[Decimal], list[np.ndarray]]] = {}
    for cell in cells:
        counts, cost, latencies = parts.setdefault(cell.group(by), ([0] * len(_COUNTS), [], []))
        for i, value in enumerate(cell.counts):
            counts[i] += value
        cost.append(cell.cost_usd)
        latencies.append(cell.latencies)
    return {group: _Group(tuple(counts), sum(cost, Decimal(0)), np.sort(np.concatenate(latencies)))
            for group, (counts, cost, latencies) in parts.items()}  # fmt: skip


def _kth(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """The k-th smallest (from 0) of two ascending arrays together, without merging them."""
    if len(b) == 0:
        return float(a[k])
    if len(a) == 0:
        return float(b[k])
    lo, hi = max(0, k + 1 - len(a)), min(k + 1, len(b))  # how many of the k + 1 smallest come from b
    while lo < hi:
        i = (lo + hi) // 2
        if b[i] < a[k - i]:  # b's next is below a's last taken: take more from b
            lo = i + 1
        else:
            hi = i
    taken = [b[lo - 1]] if lo > 0 else []
    if k + 1 - lo > 0:
        taken.append(a[k - lo])
    return float(max(taken))


def _percentiles(a: np.ndarray, b: np.ndarray, qs: Sequence[float]) -> list[float | None]:
    """``percentile_cont`` of each q over two ascending arrays together, computed as PostgreSQL computes it."""
    n = len(a) + len(b)
    if n == 0:
        return [None for _ in qs]
    found: list[float | None] = []
    for q in qs:
        pos = q * (n - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        first = _kth(a, b, lo)
        found.append(first if hi == lo else first + (pos - lo) * (_kth(a, b, hi) - first))
    return found


_NOTHING = np.empty(0)
_CACHE_SIZE = 4  # periods x key views; each holds a float per request of its rolled-up days, per grouping
_cache: OrderedDict[tuple[Any, ...], tuple[tuple[Any, ...], dict[str, dict[str, _Group]]]] = OrderedDict()
_cache_lock = threading.Lock()


def _full_days(conn: psycopg.Connection, start: datetime, end: datetime, now: datetime) -> list[date]:
    """The days inside [start, end) that can be rolled up: finished :data:`SETTLE` ago, none before the ledger's
    first row (so that a period from the year 1 rolls up nothing more)."""
    oldest = _fetch(conn, "SELECT min(created_at) FROM ledger")
    if oldest is None:
        return []
    lower = max(start, _day_start(oldest.astimezone(UTC).date()))  # compared, not converted: the year 1 is fine
    upper = min(end, now - SETTLE)
    if lower >= upper:
        return []
    first = lower.astimezone(UTC).date()
    if _day_start(first) < lower:
        first += timedelta(days=1)
    last = upper.astimezone(UTC).date()  # the days before it end by `upper`
    return [first + timedelta(days=i) for i in range(max((last - first).days, 0))]


def _rolled_groups(
    conn: psycopg.Connection, days: Sequence[date], key_id: int | None, groups: Sequence[str]
) -> tuple[list[date], dict[str, dict[str, _Group]]]:
    """The rolled-up days among ``days`` and their groups, kept per process until a day is (re-)rolled up.

    Which days are rolled up, and when each was, is the version: one small query per read, while the
    latencies of the whole period are read and sorted only when it changes.
    """
    version = conn.execute(
        """SELECT coalesce(array_agg(day ORDER BY day), '{}'), coalesce(array_agg(rolled_at ORDER BY day), '{}')
             FROM usage_rolled_days WHERE day = ANY(%s)""",
        (list(days),),
    ).fetchone() or ([], [])
    rolled: list[date] = list(version[0])
    key = (tuple(days), key_id, tuple(groups))
    stamp = (tuple(version[0]), tuple(version[1]))
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] == stamp:
            _cache.move_to_end(key)
            return rolled, hit[1]
    cells = _cells(conn.cursor(binary=True).execute(  # binary: latencies as bytes, not hex
        """SELECT day, key_id, key_name, config_version, model, shadow, requests, errors, prompt_tokens,
                  cached_tokens, completion_tokens, embedding_tokens, cost_usd, latencies
             FROM usage_days WHERE day = ANY(%s) AND (%s::bigint IS NULL OR key_id = %s)""",
        (rolled, key_id, key_id), prepare=False,
    ))  # fmt: skip
    grouped = {by: _merged(cells, by) for by in groups}
    with _cache_lock:
        _cache[key] = (stamp, grouped)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return rolled, grouped


def _live_ranges(start: datetime, end: datetime, rolled: Sequence[date]) -> list[tuple[datetime, datetime]]:
    """[start, end) without the rolled-up days, as few ranges as possible."""
    ranges: list[tuple[datetime, datetime]] = []
    cursor = start
    for day in sorted(rolled):
        if _day_start(day) > cursor:
            ranges.append((cursor, _day_start(day)))
        cursor = max(cursor, _day_start(day + timedelta(days=1)))
    if cursor < end:
        ranges.append((cursor, end))
    return ranges


def usage_by(
    conn: psycopg.Connection,
    start: datetime,
    end: datetime,
    groups: Sequence[str],
    *,
    key_id: int | None = None,
    now: datetime | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Requests, errors, tokens, cost (Decimal, as stored) and total latency p50/p95 (ms) per group of each of
    ``groups`` over the ledger rows in [start, end), ordered by group; only ``key_id``'s rows when given.

    Equal to aggregating those ledger rows directly: finished days come from their roll-up (rolled up
    here first when missing), the rest from the ledger.
    """
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown usage grouping {unknown[0]!r}: one of {', '.join(GROUPS)}")
    full_days = _full_days(conn, start, end, now or datetime.now(UTC))
    if full_days and _pending(conn, full_days):
        roll_up(conn, now, full_days)
    rolled, grouped = _rolled_groups(conn, full_days, key_id, groups)
    live: list[_Cell] = []
    ranges = _live_ranges(start, end, rolled)
    if ranges:
        live = _cells(conn.cursor(binary=True).execute(
            f"""{_CELLS} FROM unnest(%s::timestamptz[], %s::timestamptz[]) AS r(a, b)
                  JOIN ledger ON created_at >= r.a AND created_at < r.b
                 WHERE %s::bigint IS NULL OR key_id = %s {_CELL_GROUPS}""",
            ([a for a, _ in ranges], [b for _, b in ranges], key_id, key_id),
            prepare=False,  # planned for these ranges: a generic plan of a prepared statement scans the whole ledger
        ))  # fmt: skip
    return {by: _rows(grouped[by], _merged(live, by)) for by in groups}


def _rows(rolled: dict[str, _Group], live: dict[str, _Group]) -> list[dict[str, Any]]:
    """Rolled-up and live groups added up, one row per group in order."""
    rows = []
    for name in sorted(rolled.keys() | live.keys()):
        parts = [g for g in (rolled.get(name), live.get(name)) if g is not None]
        counts = [sum(values) for values in zip(*(g.counts for g in parts), strict=True)]
        a, b = (
            (rolled[name].latencies if name in rolled else _NOTHING),
            (live[name].latencies if name in live else _NOTHING),
        )
        p50, p95 = _percentiles(a, b, (0.5, 0.95))
        rows.append({"group": name, **dict(zip(_COUNTS, counts, strict=True)),
                     "cost_usd": sum((g.cost_usd for g in parts), Decimal(0)), "latency_p50_ms": p50,
                     "latency_p95_ms": p95})  # fmt: skip
    return rows


def usage(
    conn: psycopg.Connection, start: datetime, end: datetime, group_by: str, *, key_id: int | None = None
) -> list[dict[str, Any]]:
    """Requests, tokens, cost and latency per group of one grouping in [start, end); only ``key_id``'s when given."""
    return usage_by(conn, start, end, [group_by], key_id=key_id)[group_by]
