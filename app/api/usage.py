"""``/v1/usage``: what each key, day, configuration or model cost (admin scope)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, BeforeValidator

from app.api.deps import AdminGrant, AdminKey, DbPool
from app.api.query import ERRORS
from app.usage import usage

router = APIRouter(prefix="/v1", tags=["usage"])


class UsageRow(BaseModel):
    """Totals of one group."""

    group: str
    requests: int
    errors: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    embedding_tokens: int
    cost_usd: float


class UsageResponse(BaseModel):
    """Totals per group over a time range."""

    start: datetime
    end: datetime
    group_by: str
    rows: list[UsageRow]
    total_cost_usd: float
    total_requests: int


# A bare number (1700000000, -5, 1.5e9), which pydantic would take for a timestamp; a date (2026-11-01) is not one.
_BARE_NUMBER = re.compile(r"\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*")


def _no_bare_number(value: object) -> object:
    """A date is written as a date: pydantic would read a bare number as a Unix timestamp."""
    if isinstance(value, str) and _BARE_NUMBER.fullmatch(value):
        raise ValueError("expected a date (YYYY-MM-DD) or an ISO 8601 date-time")
    return value


When = Annotated[datetime | date | None, BeforeValidator(_no_bare_number)]


def _as_datetime(value: date | datetime) -> datetime:
    """In UTC: ISO 8601 allows offsets PostgreSQL refuses (beyond +-15:59), the same instant in UTC never is."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.combine(value, time.min, UTC)


@router.get("/usage", response_model=UsageResponse, responses=ERRORS)
def read_usage(
    pool: DbPool,
    key: AdminKey,
    grant: AdminGrant,
    start: Annotated[When, Query(alias="from", description="Inclusive; default 30 days ago.")] = None,
    end: Annotated[When, Query(alias="to", description="Exclusive; default now.")] = None,
    group_by: Annotated[Literal["key", "day", "config", "model", "payer"], Query()] = "key",
) -> UsageResponse:
    """Requests, tokens and cost from the ledger, grouped by key, day, configuration or model.

    A global admin sees every key's; a collection-scoped admin sees its own key's only.
    """
    until = _as_datetime(end) if end else datetime.now(UTC) + timedelta(seconds=1)
    since = _as_datetime(start) if start else until - timedelta(days=30)
    with pool.connection() as conn:
        own = None if grant.all_collections or key is None else key.id
        rows = [UsageRow(**r) for r in usage(conn, since, until, group_by, key_id=own)]
    return UsageResponse(
        start=since, end=until, group_by=group_by, rows=rows,
        total_cost_usd=round(sum(r.cost_usd for r in rows), 9), total_requests=sum(r.requests for r in rows),
    )  # fmt: skip
