"""``/v1/admin/rollouts``: start, watch, promote and abort staged rollouts (admin of the collection).

A collection-scoped admin key sees and acts on its collections' rollouts only; any other rollout
answers 404, like one that does not exist. A rollout starts only from a passed eval gate run
(``ragops rollout gate`` records one and prints its id): the gate lives in ``evals``, which the API
never imports.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.api.deps import AdminGrant, AdminKey, Configs, DbPool, Pipeline
from app.api.key_first import AdminKeyFirst
from app.api.schemas import BIGINT_MAX, ErrorResponse, RowId, Strict
from app.retrieval import require_collection
from app.rollouts import service, store
from core.access import Grant
from core.config import NAME_PATTERN
from core.errors import NotFound

NAME = NAME_PATTERN.pattern
router = APIRouter(prefix="/v1/admin/rollouts", tags=["rollouts"], route_class=AdminKeyFirst)
ERRORS: dict[int | str, dict[str, object]] = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 422)}


class RolloutRequest(Strict):
    """A candidate for one collection: any of configuration, prompt and index version, and its gate run."""

    collection: str | None = Field(
        default=None, pattern=NAME, description="unset: 'default', or the key's only collection."
    )
    gate_id: int = Field(ge=1, le=BIGINT_MAX, description="A passed gate run of this candidate (ragops rollout gate).")
    config: str | None = Field(default=None, pattern=NAME, description="Candidate configuration.")
    prompt: str | None = Field(default=None, pattern=NAME, description="Candidate prompt (prompts/NAME.md).")
    index_version: int | None = Field(default=None, ge=1, description="Candidate index version id.")
    live_config: str | None = Field(
        default=None, pattern=NAME, description="The live configuration it competes with; default if unset."
    )


class SideOut(BaseModel):
    """What answers one side."""

    config: str
    prompt: str
    index_version: int


class RolloutOut(BaseModel):
    """A rollout's state, its samples so far and the sequential test's latest state."""

    id: int
    collection: str
    status: str
    live: SideOut
    candidate: SideOut
    gate_id: int | None
    guards: dict[str, Any]
    samples: dict[str, int] = Field(description="Paired questions per stage.")
    decision: dict[str, Any] | None
    reason: str | None
    created_by: str
    created_at: datetime
    stage_started_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, rollout: store.Rollout, samples: dict[str, int]) -> RolloutOut:
        """The API view of a rollout."""
        return cls(
            id=rollout.id, collection=rollout.collection, status=rollout.status,
            live=SideOut(**rollout.live.as_dict()), candidate=SideOut(**rollout.candidate.as_dict()),
            gate_id=rollout.gate_id, guards=rollout.guards.model_dump(mode="json"), samples=samples,
            decision=rollout.decision, reason=rollout.reason, created_by=rollout.created_by,
            created_at=rollout.created_at, stage_started_at=rollout.stage_started_at, finished_at=rollout.finished_at,
        )  # fmt: skip


class RolloutsResponse(BaseModel):
    """Rollouts, newest first."""

    rollouts: list[RolloutOut]


def _out(conn: Any, rollout: store.Rollout) -> RolloutOut:
    return RolloutOut.of(rollout, store.sample_counts(conn, rollout.id))


def _own(conn: Any, rollout_id: int, grant: Grant) -> store.Rollout:
    rollout = store.get_rollout(conn, rollout_id)
    if rollout is None or not grant.may_use(rollout.collection):
        raise NotFound(f"no rollout {rollout_id}")
    return rollout


@router.post("", status_code=201, response_model=RolloutOut, responses=ERRORS)
def create_rollout(
    body: RolloutRequest, pool: DbPool, catalog: Configs, grant: AdminGrant, key: AdminKey, pipeline: Pipeline
) -> RolloutOut:
    """Start a rollout in shadow from a passed gate run; 409 when the collection has an active one."""
    collection = grant.collection(body.collection)
    for name in (body.config, body.live_config):
        if name is not None:
            grant.config(name, catalog.default_config)
    with pool.connection() as conn:
        require_collection(conn, collection, grant)
        rollout = service.start_rollout(
            conn, catalog, collection, gate_id=body.gate_id, config=body.config, prompt=body.prompt,
            index_version=body.index_version, live_config=body.live_config,
            created_by=f"key:{key.name}" if key is not None else "admin",
        )  # fmt: skip
        if pipeline.rollouts is not None:
            pipeline.rollouts.forget()
        return _out(conn, rollout)


@router.get("", response_model=RolloutsResponse, responses=ERRORS)
def read_rollouts(pool: DbPool, grant: AdminGrant, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> RolloutsResponse:
    """Rollouts of the key's collections, newest first."""
    with pool.connection() as conn:
        found = store.list_rollouts(conn, collections=grant.collections, limit=limit)
        return RolloutsResponse(rollouts=[_out(conn, r) for r in found])


@router.get("/{rollout_id}", response_model=RolloutOut, responses=ERRORS)
def read_rollout(rollout_id: RowId, pool: DbPool, grant: AdminGrant) -> RolloutOut:
    """A rollout's stage, samples, and the sequential test's state per guarded measure."""
    with pool.connection() as conn:
        return _out(conn, _own(conn, rollout_id, grant))


@router.post("/{rollout_id}/promote", response_model=RolloutOut, responses=ERRORS)
def promote_rollout(rollout_id: RowId, pool: DbPool, grant: AdminGrant, pipeline: Pipeline) -> RolloutOut:
    """Promote now: the candidate's index version is activated for the collection in one transaction."""
    with pool.connection() as conn:
        _own(conn, rollout_id, grant)
        rollout = service.promote_rollout(conn, rollout_id)
        if pipeline.rollouts is not None:
            pipeline.rollouts.forget()
        return _out(conn, rollout)


@router.post("/{rollout_id}/abort", response_model=RolloutOut, responses=ERRORS)
def abort_rollout(rollout_id: RowId, pool: DbPool, grant: AdminGrant, pipeline: Pipeline) -> RolloutOut:
    """Stop: every answer comes from the live versions again (they were never changed)."""
    with pool.connection() as conn:
        _own(conn, rollout_id, grant)
        rollout = service.abort_rollout(conn, rollout_id)
        if pipeline.rollouts is not None:
            pipeline.rollouts.forget()
        return _out(conn, rollout)
