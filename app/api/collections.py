"""``/v1/collections``: the collections a key may use, and their documents (query scope)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from app.api.deps import DbPool, QueryGrant
from app.api.schemas import ErrorResponse
from app.retrieval import require_collection
from ingest import documents, versions

router = APIRouter(prefix="/v1", tags=["collections"])
ERRORS: dict[int | str, dict[str, object]] = {code: {"model": ErrorResponse} for code in (401, 403, 404, 422)}


class CollectionOut(BaseModel):
    """A collection the key may use."""

    name: str
    documents: int
    updated_at: datetime
    index_version_id: int | None = Field(description="The version answering it (its own, else the default).")


class CollectionsResponse(BaseModel):
    """The key's collections that hold documents, by name."""

    collections: list[CollectionOut]


class DocumentOut(BaseModel):
    """A stored document."""

    id: int
    source: str
    title: str
    content_hash: str
    updated_at: datetime
    chunks: int | None = Field(description="Its chunks in the answering index version; null: not in that version.")


class DocumentsResponse(BaseModel):
    """A page of a collection's documents, by id."""

    collection: str
    index_version_id: int | None
    documents: list[DocumentOut]
    next_after: int | None = Field(description="Pass as ?after= for the next page; null: this was the last.")


@router.get("/collections", response_model=CollectionsResponse, responses=ERRORS)
def read_collections(pool: DbPool, grant: QueryGrant) -> CollectionsResponse:
    """The collections this key may use that hold documents, with the index version answering each."""
    with pool.connection() as conn:
        found = documents.list_collections(conn, grant.collections)
    return CollectionsResponse(collections=[CollectionOut(**vars(c)) for c in found])


@router.get("/collections/{collection}/documents", response_model=DocumentsResponse, responses=ERRORS)
def read_documents(
    collection: Annotated[str, Path(max_length=64, pattern=r"^[^\x00]*$")],
    pool: DbPool,
    grant: QueryGrant,
    after: Annotated[int, Query(ge=0, le=2**62, description="Documents with a larger id than this.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DocumentsResponse:
    """A collection's documents with ids, sources and chunk counts, a page at a time."""
    collection = grant.collection(collection)
    with pool.connection() as conn:
        require_collection(conn, collection, grant)
        version = versions.active_index_version(conn, collection)
        version_id = version.id if version else None
        page = documents.list_documents(conn, collection, version_id, after_id=after, limit=limit)
    return DocumentsResponse(
        collection=collection,
        index_version_id=version_id,
        documents=[DocumentOut(**vars(d)) for d in page],
        next_after=page[-1].id if len(page) == limit else None,
    )
