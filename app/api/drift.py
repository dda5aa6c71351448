"""``GET /v1/admin/drift``: a collection's drift windows, latest verdicts and content gaps (admin scope).

A collection-scoped admin sees only its collections; naming another answers 403 with the same
message whether it exists or not (core.access.Grant.collection); a granted name with no documents
is a 404 naming the caller's collections, as on the other routes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from app import drift
from app.api.deps import AdminGrant, Configs, DbPool
from app.api.key_first import AdminKeyFirst
from app.api.schemas import NO_NUL, ErrorResponse
from app.feedback import parse_since
from app.retrieval import require_collection
from core.drift import store

router = APIRouter(prefix="/v1/admin", tags=["admin"], route_class=AdminKeyFirst)
ERRORS: dict[int | str, dict[str, object]] = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 422)}


class DriftWindowOut(BaseModel):
    """One judged window of one signal."""

    config: str
    signal: str
    window_start: datetime
    window_end: datetime
    state: str
    alarm: bool
    n: int
    reference_n: int
    statistic: float | None
    p_value: float | None
    psi: float | None
    reference_value: float | None
    window_value: float | None
    reference_id: int | None


class GapOut(BaseModel):
    """A cluster of poorly retrieved questions (counts; PII-filtered example questions only with a transcript store)."""

    cluster: int
    questions: int
    mean_top_score: float
    examples: list[str]


class DriftResponse(BaseModel):
    """A collection's drift time series, the newest verdict per signal, and its content gaps."""

    collection: str
    config: str
    alarms: list[str]
    latest: list[DriftWindowOut]
    windows: list[DriftWindowOut]
    content_gaps: list[GapOut]


def _out(row: store.WindowRow) -> DriftWindowOut:
    return DriftWindowOut.model_validate({k: v for k, v in store.as_dict(row).items() if k != "collection"})


@router.get("/drift", response_model=DriftResponse, responses=ERRORS)
def read_drift(
    pool: DbPool,
    catalog: Configs,
    grant: AdminGrant,
    collection: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
    config: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
    since: Annotated[
        str | None,
        Query(max_length=40, pattern=NO_NUL, description="Windows since: a duration (7d, 24h) or an ISO date."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 2000,
) -> DriftResponse:
    """Drift windows of one collection and configuration, newest verdicts and content gaps."""
    name = grant.collection(collection)
    loaded = catalog.config(grant.config(config, catalog.default_config))
    with pool.connection() as conn:
        require_collection(conn, name, grant)
        rows = store.read_windows(
            conn,
            collections=frozenset({name}),
            collection=name,
            config=loaded.name,
            since=parse_since(since) if since else None,
            limit=limit,
        )
        gaps = drift.content_gaps(
            conn, name, loaded.name, loaded.config.drift, examples=loaded.config.feedback.transcripts.enabled
        )
    latest: dict[str, store.WindowRow] = {}
    for row in rows:
        latest[row.signal] = row
    return DriftResponse(
        collection=name,
        config=loaded.name,
        alarms=sorted(s for s, r in latest.items() if r.alarm),
        latest=[_out(r) for r in latest.values()],
        windows=[_out(r) for r in rows],
        content_gaps=[GapOut.model_validate(g.__dict__) for g in gaps],
    )
