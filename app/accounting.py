"""Per-request accounting: rate limits, budget reservations, cost, and one ledger row per request.

Budgets hold under concurrency because spending is two-phase: before generation a request
reserves its worst-case cost with a conditional UPDATE that only succeeds while
``spent + reserved + cost <= budget``; afterwards it settles the actual cost and releases the
rest. Each hold is also a ``budget_holds`` row, so a hold whose process died is found and
released (``release_stale_holds``). The ledger never stores question or answer text.

The API's pool commits with ``synchronous_commit = off`` (``Database.pool(async_commit=True)``):
accounting writes stay atomic and consistent but do not wait for the WAL flush, which would
cost an fsync per write on every request. A database crash can lose the last fraction of a
second of ledger rows and settlements, never corrupt them. Each write is one statement where possible.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from app.after_answer import AfterAnswer, perform
from app.inflight import InFlight
from app.keys import ApiKey, VerifiedKeys
from app.pricing import Pricing
from core.errors import BudgetExceeded, RateLimited
from core.money import format_usd, to_stored_usd

log = logging.getLogger(__name__)


@dataclass
class Reservation:
    """Money held for one request until it settles: one ``budget_holds`` row per budget period."""

    request_id: str
    key_id: int
    amount: Decimal
    periods: list[tuple[str, date]]


@dataclass
class RateHold:
    """Tokens counted against a key's tokens-per-minute window while its request runs."""

    key_id: int
    window_start: datetime
    tokens: int


@dataclass
class LedgerEntry:
    """One request, as finance and operators see it."""

    request_id: str
    route: str
    status: int = 0
    key_id: int | None = None
    key_name: str | None = None
    error_kind: str | None = None
    collection: str | None = None  # the collection the request read (feedback and quality are per collection)
    config_version: str | None = None
    prompt_version: str | None = None
    index_version: str | None = None
    model: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    embedding_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    pii_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> entity type -> count
    trace_id: str | None = None  # the request's OpenTelemetry trace, when tracing is on
    span_id: str | None = None  # and its root span (what feedback on it is recorded under)
    rollout_id: int | None = None
    rollout_side: str | None = None  # live or candidate (canary), shadow (the operator's re-answer, no key)


def period_starts(now: datetime) -> dict[str, tuple[date, datetime]]:
    """Start of the current day and month (UTC), and when each resets."""
    today = now.astimezone(UTC).date()
    month = today.replace(day=1)
    next_month = (month + timedelta(days=32)).replace(day=1)
    return {
        "day": (today, datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC)),
        "month": (month, datetime.combine(next_month, datetime.min.time(), UTC)),
    }


def reserve_budget(
    conn: psycopg.Connection,
    key: ApiKey,
    amount: Decimal | float,
    request_id: str,
    *,
    now: datetime | None = None,
    stale_after_s: float | None = None,
) -> Reservation:
    """Hold ``amount`` USD against the key's day and month budgets, atomically, or raise BudgetExceeded.

    The hold is rounded up to the stored nano-dollar: a priced request never holds $0, so a budget
    of $0 refuses every one. A refusal first releases the key's holds older than ``stale_after_s``
    (left by a process that died mid-request) and tries once more, so a crash never freezes a budget.
    """
    value = to_stored_usd(amount, round_up=True)
    try:
        return _reserve(conn, key, value, request_id, now or datetime.now(UTC))
    except BudgetExceeded:
        if stale_after_s is None or not release_stale_holds(conn, stale_after_s, key_id=key.id):
            raise
    return _reserve(conn, key, value, request_id, now or datetime.now(UTC))


def _reserve(conn: psycopg.Connection, key: ApiKey, value: Decimal, request_id: str, now: datetime) -> Reservation:
    periods = period_starts(now)
    budgets = [(period, budget) for period, budget in (("day", key.budget_usd_day), ("month", key.budget_usd_month))
               if budget is not None]  # fmt: skip
    held: list[tuple[str, date]] = []
    # One budget: its single statement is atomic by itself. Two: both or neither, in one transaction.
    with conn.transaction() if len(budgets) > 1 else contextlib.nullcontext():
        for period, budget in budgets:
            start, reset_at = periods[period]
            # Add to the period's reservation only while the budget covers it, and record the hold.
            row = conn.execute(
                """WITH spend AS (
                       INSERT INTO key_spend AS s (key_id, period, period_start, reserved_usd)
                       SELECT %(key)s, %(period)s, %(start)s, %(amount)s WHERE %(amount)s <= %(budget)s
                       ON CONFLICT (key_id, period, period_start) DO UPDATE
                         SET reserved_usd = s.reserved_usd + excluded.reserved_usd
                         WHERE s.spent_usd + s.reserved_usd + excluded.reserved_usd <= %(budget)s
                       RETURNING s.key_id)
                   INSERT INTO budget_holds (request_id, key_id, period, period_start, amount_usd)
                   SELECT %(request)s, key_id, %(period)s, %(start)s, %(amount)s FROM spend
                   RETURNING 1""",
                {"amount": value, "key": key.id, "period": period, "start": start, "budget": budget,
                 "request": request_id},
            ).fetchone()  # fmt: skip
            if row is None:
                spent = conn.execute(
                    "SELECT spent_usd + reserved_usd FROM key_spend WHERE key_id = %s AND period = %s "
                    "AND period_start = %s",
                    (key.id, period, start),
                ).fetchone()
                committed = spent[0] if spent else Decimal(0)
                raise BudgetExceeded(
                    f"{'daily' if period == 'day' else 'monthly'} budget of {format_usd(budget)} for key "
                    f"{key.name!r} cannot cover this request (up to {format_usd(value)}); spent or reserved so far "
                    f"{format_usd(committed)}; resets at {reset_at.isoformat()}",
                    reset_at,
                )
            held.append((period, start))
    return Reservation(request_id=request_id, key_id=key.id, amount=value, periods=held)


def settle_budget(conn: psycopg.Connection, reservation: Reservation, actual: Decimal | float) -> None:
    """Replace the hold by the actual cost (0 when the request failed before any token); inside a transaction.

    Only what is still held is released: a hold the sweeper already released is not subtracted twice.
    """
    if not reservation.periods:
        return
    periods, starts = [p for p, _ in reservation.periods], [d for _, d in reservation.periods]
    params = {"request": reservation.request_id, "actual": to_stored_usd(actual), "key": reservation.key_id,
              "periods": periods, "starts": starts}  # fmt: skip
    if len(periods) > 1:  # lock the rows in the order a reservation takes them, or two could deadlock
        conn.execute(
            """SELECT 1 FROM key_spend WHERE key_id = %(key)s
                 AND (period, period_start) IN (SELECT * FROM unnest(%(periods)s::text[], %(starts)s::date[]))
               ORDER BY period FOR UPDATE""",
            params,
        )
    conn.execute(
        """WITH released AS (
               DELETE FROM budget_holds WHERE request_id = %(request)s
               RETURNING period, period_start, amount_usd)
           UPDATE key_spend s
              SET reserved_usd = greatest(s.reserved_usd - coalesce(r.amount_usd, 0), 0),
                  spent_usd = s.spent_usd + %(actual)s
             FROM (SELECT p.period, p.start, rel.amount_usd
                     FROM unnest(%(periods)s::text[], %(starts)s::date[]) AS p(period, start)
                     LEFT JOIN released rel ON rel.period = p.period AND rel.period_start = p.start) r
            WHERE s.key_id = %(key)s AND s.period = r.period AND s.period_start = r.start""",
        params,
    )


def release_stale_holds(conn: psycopg.Connection, older_than_s: float, *, key_id: int | None = None) -> int:
    """Release budget holds older than ``older_than_s`` (their process died); returns how many."""
    with conn.transaction():
        stale = conn.execute(
            """DELETE FROM budget_holds
                WHERE created_at < now() - make_interval(secs => %(age)s)
                  AND (%(key)s::bigint IS NULL OR key_id = %(key)s)
               RETURNING key_id, period, period_start, amount_usd""",
            {"age": older_than_s, "key": key_id},
        ).fetchall()
        totals: dict[tuple[int, str, date], Decimal] = {}
        for key, period, start, amount in stale:
            totals[(key, period, start)] = totals.get((key, period, start), Decimal(0)) + amount
        for (key, period, start), amount in sorted(totals.items()):  # the order reservations lock rows in
            conn.execute(
                """UPDATE key_spend SET reserved_usd = greatest(reserved_usd - %s, 0)
                   WHERE key_id = %s AND period = %s AND period_start = %s""",
                (amount, key, period, start),
            )
    if stale:
        log.warning(
            "released %d budget hold(s) older than %g s (their requests never settled)", len(stale), older_than_s
        )
    return len(stale)


def _minute(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).replace(second=0, microsecond=0)


def check_rate(conn: psycopg.Connection, key: ApiKey, now: datetime | None = None) -> None:
    """Count this request in the key's current minute; raise RateLimited past rpm or tpm.

    The minute's tokens include the holds of requests still running, so concurrent requests
    cannot together pass the tokens-per-minute limit before any of them finishes.
    """
    if key.rpm is None and key.tpm is None:
        return
    now = now or datetime.now(UTC)
    row = conn.execute(
        """INSERT INTO rate_windows (key_id, window_start, requests) VALUES (%s, %s, 1)
           ON CONFLICT (key_id, window_start) DO UPDATE SET requests = rate_windows.requests + 1
           RETURNING requests, tokens""",
        (key.id, _minute(now)),
    ).fetchone()
    assert row is not None
    retry_after = 60 - now.second
    if key.rpm is not None and row[0] > key.rpm:
        raise RateLimited(f"rate limit of {key.rpm} requests per minute reached; retry in {retry_after}s", retry_after)
    if key.tpm is not None and row[1] >= key.tpm:
        raise RateLimited(f"rate limit of {key.tpm} tokens per minute reached; retry in {retry_after}s", retry_after)


def add_rate_tokens(conn: psycopg.Connection, key_id: int, tokens: int, window_start: datetime | None = None) -> None:
    """Add ``tokens`` (negative to give back) to the key's window, the current minute unless named."""
    conn.execute(
        """INSERT INTO rate_windows (key_id, window_start, tokens) VALUES (%s, %s, greatest(%s, 0))
           ON CONFLICT (key_id, window_start) DO UPDATE
             SET tokens = greatest(rate_windows.tokens + %s, 0)""",
        (key_id, window_start or _minute(None), tokens, tokens),
    )


def hold_rate_tokens(conn: psycopg.Connection, key_id: int, tokens: int) -> RateHold:
    """Count a running request's worst-case tokens in the current minute; settled by :meth:`Accountant.record`."""
    window = _minute(None)
    add_rate_tokens(conn, key_id, tokens, window)
    return RateHold(key_id=key_id, window_start=window, tokens=tokens)


def write_ledger(conn: psycopg.Connection, entry: LedgerEntry) -> None:
    """Insert the request's one ledger row (a second write for the same request is ignored)."""
    conn.execute(
        """INSERT INTO ledger (request_id, key_id, key_name, route, status, error_kind, collection, config_version,
               prompt_version, index_version, model, prompt_tokens, cached_tokens, completion_tokens,
               embedding_tokens, cost_usd, latency_ms, pii_counts, trace_id, span_id, rollout_id, rollout_side)
           VALUES (%(request_id)s, %(key_id)s, %(key_name)s, %(route)s, %(status)s, %(error_kind)s, %(collection)s,
               %(config_version)s, %(prompt_version)s, %(index_version)s, %(model)s, %(prompt_tokens)s,
               %(cached_tokens)s, %(completion_tokens)s, %(embedding_tokens)s, %(cost_usd)s, %(latency_ms)s,
               %(pii_counts)s, %(trace_id)s, %(span_id)s, %(rollout_id)s, %(rollout_side)s)
           ON CONFLICT (request_id) DO NOTHING""",
        {
            **entry.__dict__,
            "cost_usd": to_stored_usd(entry.cost_usd),
            "latency_ms": Jsonb({k: round(v, 3) for k, v in entry.latency_ms.items()}),
            "pii_counts": Jsonb(entry.pii_counts),
        },
    )


@dataclass(frozen=True)
class BudgetLeft:
    """One budget of one key in the current period: what it allows, what is spent or held, what is left."""

    key_name: str
    period: str
    budget_usd: Decimal
    spent_usd: Decimal
    reserved_usd: Decimal
    resets_at: datetime

    @property
    def left_usd(self) -> Decimal:
        """What the key may still spend this period."""
        return max(self.budget_usd - self.spent_usd - self.reserved_usd, Decimal(0))


def budgets_left(conn: psycopg.Connection, keys: Sequence[ApiKey], now: datetime | None = None) -> list[BudgetLeft]:
    """The day and month budgets of ``keys`` (those that have one), with this period's spend."""
    periods = period_starts(now or datetime.now(UTC))
    budgeted = [k for k in keys if k.budget_usd_day is not None or k.budget_usd_month is not None]
    spend = {
        (key_id, period): (spent, reserved)
        for key_id, period, spent, reserved in conn.execute(
            """SELECT key_id, period, spent_usd, reserved_usd FROM key_spend WHERE key_id = ANY(%s)
               AND ((period = 'day' AND period_start = %s) OR (period = 'month' AND period_start = %s))""",
            ([k.id for k in budgeted], periods["day"][0], periods["month"][0]),
        ).fetchall()
    }
    found = []
    for key in budgeted:
        for period, budget in (("day", key.budget_usd_day), ("month", key.budget_usd_month)):
            if budget is not None:
                spent, reserved = spend.get((key.id, period), (Decimal(0), Decimal(0)))
                found.append(BudgetLeft(key.name, period, budget, spent, reserved, periods[period][1]))
    return found


class Accountant:
    """Shared by every request: the pool, the prices, whether auth is on, and each key's requests in flight."""

    def __init__(
        self,
        pool: ConnectionPool,
        pricing: Pricing,
        *,
        auth_enabled: bool = True,
        key_cache_ttl_s: float = 0.0,
        hold_max_age_s: float = 900.0,
        max_concurrent_per_key: int | None = None,
    ) -> None:
        self.pool = pool
        self.pricing = pricing
        self.auth_enabled = auth_enabled
        self.keys = VerifiedKeys(key_cache_ttl_s)
        self.inflight = InFlight(max_concurrent_per_key)
        self.hold_max_age_s = hold_max_age_s  # a budget hold older than this belongs to a dead request

    def cost(self, entry: LedgerEntry, embedding_model: str) -> float:
        """USD for the tokens an entry records (0 when no model answered)."""
        if not entry.model:
            return 0.0
        return self.pricing.request_cost(
            entry.model, embedding_model, entry.prompt_tokens, entry.completion_tokens, entry.cached_tokens,
            entry.embedding_tokens,
        )  # fmt: skip

    def record(
        self,
        entry: LedgerEntry,
        reservation: Reservation | None = None,
        rate: RateHold | None = None,
        after: Sequence[AfterAnswer] = (),
    ) -> None:
        """Settle the reservation and the tokens-per-minute hold, write the ledger row, then what the answer
        left behind (``after``, each in a savepoint: one failing loses neither the others nor the row),
        in one transaction.

        A database failure is logged, never raised into the response.
        """
        try:
            with self.pool.connection() as conn, conn.transaction():
                if reservation is not None:
                    settle_budget(conn, reservation, entry.cost_usd)
                if rate is not None:
                    used = entry.prompt_tokens + entry.completion_tokens
                    add_rate_tokens(conn, rate.key_id, used - rate.tokens, rate.window_start)
                write_ledger(conn, entry)
                perform(conn, after, entry.request_id)
        except (psycopg.Error, OSError) as exc:
            log.error("ledger write failed for request %s: %s", entry.request_id, type(exc).__name__)
