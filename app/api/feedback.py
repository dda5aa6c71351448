"""``/v1/feedback``: rate an answer by its ``request_id``; admins list their collections' ratings.

Metered and rate limited like every ``/v1`` route (one ledger row per call, no tokens, never billed).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from app.api.deps import AdminGrant, Configs, DbPool, Pipeline, authenticate, grant_of, tracing_of
from app.api.query import ERRORS
from app.api.schemas import NO_NUL, Strict, VersionsOut
from app.feedback import (
    REASONS,
    SCALES,
    Rating,
    Reason,
    Scale,
    check_sources,
    filter_comment,
    is_negative,
    list_feedback,
    parse_since,
    rateable,
    save_rating,
)
from app.keys import ApiKey
from core.access import Grant
from core.errors import BadRequest, ScopeError

router = APIRouter(prefix="/v1", tags=["feedback"])
MAX_TEXT_CHARS = 2000
MAX_SOURCES = 50
DocumentId = Annotated[int, Field(ge=1, le=2**63 - 1)]


def require_rater(request: Request) -> ApiKey | None:
    """A key that may rate: one with the ``query`` scope (its own answers) or ``admin`` (its collections')."""
    try:
        return authenticate(request, "query")
    except ScopeError:
        return authenticate(request, "admin")


def rater_grant(request: Request, key: Annotated[ApiKey | None, Depends(require_rater)]) -> Grant:
    """The collections the rating key is granted."""
    return grant_of(request, key)


class FeedbackRequest(Strict):
    """A rating of one answer."""

    request_id: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
        description="The answer's request_id (the X-Request-Id header; `chatcmpl-` ids are accepted as well).",
    )  # fmt: skip
    rating: int = Field(strict=True, description="thumbs: +1 or -1; stars: 1 to 5.")
    scale: Scale = Field(default="thumbs", description="What the rating counts: thumbs (+1/-1) or stars (1-5).")
    reason: Reason | None = Field(default=None, description=f"Why, for a poor answer: one of {', '.join(REASONS)}.")
    text: str | None = Field(
        default=None, max_length=MAX_TEXT_CHARS, pattern=NO_NUL,
        description="Free text; stored only after the answer's configuration's PII filter (refused when it has none).",
    )  # fmt: skip
    sources: list[DocumentId] = Field(
        default_factory=list, max_length=MAX_SOURCES,
        description="document_id of the citations (or other documents of the collection) that were right.",
    )  # fmt: skip


class FeedbackOut(BaseModel):
    """A stored rating."""

    id: int
    request_id: str
    collection: str
    scale: Scale
    rating: int
    negative: bool = Field(description="Thumbs down, or 1-2 stars.")
    reason: Reason | None
    text: str | None = Field(description="As stored: PII-filtered.")
    sources: list[int]
    created_at: datetime
    updated_at: datetime


class FeedbackSaved(FeedbackOut):
    """A rating as saved."""

    created: bool = Field(description="False when an earlier rating of the same answer was replaced.")


class FeedbackItem(FeedbackOut):
    """A rating with what produced the rated answer."""

    route: str
    versions: VersionsOut

    @classmethod
    def of(cls, row: dict[str, Any]) -> FeedbackItem:
        """From a :func:`app.feedback.list_feedback` row."""
        versions = VersionsOut(config=row["config_version"] or "", prompt=row["prompt_version"] or "",
                               index=row["index_version"] or "", model=row["model"] or "")  # fmt: skip
        return cls(**{k: v for k, v in row.items() if k in cls.model_fields}, versions=versions)


class FeedbackList(BaseModel):
    """One page of ratings."""

    collection: str
    items: list[FeedbackItem]
    next_after: int | None = Field(description="Pass as `after` for the next page; null on the last one.")


@router.post("/feedback", response_model=FeedbackSaved, responses=ERRORS)
def create_feedback(
    request: Request,
    body: FeedbackRequest,
    pool: DbPool,
    pipeline: Pipeline,
    catalog: Configs,
    key: Annotated[ApiKey | None, Depends(require_rater)],
    grant: Annotated[Grant, Depends(rater_grant)],
) -> FeedbackSaved:
    """Rate an answer: thumbs or stars, a reason, free text, the sources that were right; rating again replaces it.

    Only the key that asked, or an admin of the answer's collection, may rate it.
    """
    if body.rating not in SCALES[body.scale]:
        allowed = "+1 or -1" if body.scale == "thumbs" else "1 to 5"
        raise BadRequest(f"rating {body.rating} is not on the {body.scale} scale ({allowed})", field="rating")
    request_id = body.request_id.removeprefix("chatcmpl-")
    with pool.connection() as conn:
        rated = rateable(conn, request_id, key, grant)
        assert rated.collection is not None
        sources = check_sources(conn, rated.collection, body.sources)
    text = None
    if body.text is not None and body.text.strip():
        name = (rated.config_version or "").partition("@")[0]
        config = catalog.configs.get(name) or catalog.config(None)
        text = filter_comment(body.text, config, pipeline.pii_engine(config))
    rating = Rating(scale=body.scale, rating=body.rating, reason=body.reason, text=text, sources=sources)
    with pool.connection() as conn:
        saved = FeedbackSaved(**save_rating(conn, rated, key, rating))
    if rated.trace_id and rated.span_id:  # next to the answer's spans in the team's tracing tool (never the text)
        attributes = {"ragops.feedback.scale": body.scale, "ragops.feedback.rating": body.rating,
                      "ragops.feedback.negative": is_negative(body.scale, body.rating),
                      "ragops.feedback.reason": body.reason or ""}  # fmt: skip
        tracing_of(request).record_in_trace("ragops.feedback", rated.trace_id, rated.span_id, attributes)
    return saved


@router.get("/feedback", response_model=FeedbackList, responses=ERRORS)
def read_feedback(
    pool: DbPool,
    grant: AdminGrant,
    collection: Annotated[str | None, Query(max_length=200, pattern=NO_NUL, description="unset: 'default'.")] = None,
    since: Annotated[
        str | None, Query(max_length=40, description="Updated since: a duration (7d, 24h) or an ISO date.")
    ] = None,
    negative: Annotated[bool | None, Query(description="Only poor (true) or only good (false) ratings.")] = None,
    after: Annotated[int, Query(ge=0, description="`next_after` of the previous page.")] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> FeedbackList:
    """Ratings of a collection the admin key administers, with the versions that produced each answer."""
    name = grant.collection(collection)
    start = parse_since(since) if since else None
    with pool.connection() as conn:
        rows = list_feedback(conn, name, since=start, negative=negative, after_id=after, limit=limit)
    items = [FeedbackItem.of(r) for r in rows]
    return FeedbackList(collection=name, items=items, next_after=items[-1].id if len(items) == limit else None)
