"""``/v1/admin``: reindex jobs, document upload and deletion, index versions (admin scope)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from pydantic import BaseModel, Field

from app import uploads
from app.api.deps import AdminKey, AppSettings, Configs, DbPool
from app.api.key_first import AdminKeyFirst
from app.api.schemas import ErrorResponse, Strict
from core.errors import Conflict, IndexVersionError, NotFound, UploadTooLarge
from ingest import jobs, versions
from ingest.pipeline import DEFAULT_COLLECTION

router = APIRouter(prefix="/v1/admin", tags=["admin"], route_class=AdminKeyFirst)
ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 415, 422)
}


class ReindexRequest(Strict):
    """What to reindex, and how."""

    source: str | None = Field(
        default=None, description="Folder or file under an allowed root; unset = the collection's earlier sources."
    )
    config: str | None = Field(
        default=None, description="Configuration whose index settings to build; default if unset."
    )
    collection: str = Field(default=DEFAULT_COLLECTION, max_length=64)
    mode: Literal["incremental", "full"] = Field(
        default="incremental",
        description="incremental: update the config's version in place; full: a fresh version beside the live one.",
    )
    activate: bool | None = Field(
        default=None, description="Activate the version once built; unset = only when no version is active."
    )
    sync: bool = Field(default=False, description="Also delete the collection's documents the source no longer has.")


class JobAccepted(BaseModel):
    """A queued job."""

    job_id: int
    status: str


class JobOut(BaseModel):
    """A job's state and progress."""

    id: int
    kind: str
    status: str
    params: dict[str, Any]
    docs_done: int
    docs_total: int | None
    chunks_done: int
    docs_per_s: float | None
    eta_s: float | None
    errors: list[dict[str, str]] = Field(description="Documents skipped, with the reason: [{source, reason}].")
    error: str | None
    result: dict[str, Any] | None
    index_version_id: int | None
    activated: bool
    attempts: int
    cancel_requested: bool
    worker_id: str | None
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: jobs.Job) -> JobOut:
        """The API view of a job."""
        fields = {name: getattr(job, name) for name in cls.model_fields if name not in ("docs_per_s", "eta_s")}
        return cls(**fields, docs_per_s=job.docs_per_s, eta_s=job.eta_s)


class JobsResponse(BaseModel):
    """Jobs, newest first."""

    jobs: list[JobOut]


class IndexOut(BaseModel):
    """One index version."""

    id: int
    name: str
    status: str
    active: bool
    settings: dict[str, Any]
    embedding_model: str
    dimension: int
    documents: int | None = None
    chunks: int | None = None
    created_by: str
    created_at: datetime
    activated_at: datetime | None

    @classmethod
    def of(cls, version: versions.IndexVersion, documents: int | None = None, chunks: int | None = None) -> IndexOut:
        """The API view of a version."""
        return cls(
            id=version.id, name=version.name, status=version.status, active=version.is_active,
            settings=version.settings, embedding_model=version.embedding_model, dimension=version.dimension,
            documents=documents, chunks=chunks, created_by=version.created_by, created_at=version.created_at,
            activated_at=version.activated_at,
        )  # fmt: skip


class IndexesResponse(BaseModel):
    """Every index version, newest first."""

    indexes: list[IndexOut]


class ActivateResponse(BaseModel):
    """The now active version, and the one it replaced (activate that one to roll back)."""

    active: IndexOut
    previous_id: int | None


class UploadedFile(BaseModel):
    """One stored upload."""

    filename: str
    bytes: int


class UploadAccepted(BaseModel):
    """Stored files and the job that ingests them."""

    job_id: int
    collection: str
    files: list[UploadedFile]


class DocumentDeleted(BaseModel):
    """A deleted document."""

    id: int
    collection: str
    source: str


def _job_or_404(job: jobs.Job | None, job_id: int) -> jobs.Job:
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def _version_or_404(conn: Any, version_id: int) -> versions.IndexVersion:
    try:
        return versions.get_index_version(conn, version_id)
    except IndexVersionError:
        raise NotFound(f"no index version {version_id}") from None


@router.post("/reindex", status_code=202, response_model=JobAccepted, responses=ERRORS)
def create_reindex(body: ReindexRequest, pool: DbPool, settings: AppSettings, key: AdminKey) -> JobAccepted:
    """Queue a reindex job; watch it at /v1/admin/jobs/{id}."""
    with pool.connection() as conn:
        job = jobs.enqueue_reindex(
            conn, settings, source=body.source, config=body.config, collection=body.collection,
            mode=body.mode, activate=body.activate, sync=body.sync,
        )  # fmt: skip
    return JobAccepted(job_id=job.id, status=job.status)


@router.get("/jobs", response_model=JobsResponse, responses=ERRORS)
def read_jobs(
    pool: DbPool,
    key: AdminKey,
    status: Annotated[Literal["queued", "running", "succeeded", "failed", "cancelled"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobsResponse:
    """Jobs, newest first."""
    with pool.connection() as conn:
        return JobsResponse(jobs=[JobOut.of(j) for j in jobs.list_jobs(conn, status=status, limit=limit)])


@router.get("/jobs/{job_id}", response_model=JobOut, responses=ERRORS)
def read_job(job_id: int, pool: DbPool, key: AdminKey) -> JobOut:
    """A job's status, counts, docs/s, ETA and per-document errors."""
    with pool.connection() as conn:
        return JobOut.of(_job_or_404(jobs.get_job(conn, job_id), job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses=ERRORS)
def cancel_job(job_id: int, pool: DbPool, key: AdminKey) -> JobOut:
    """Cancel a queued job, or stop a running one at its next batch (its index is never activated)."""
    with pool.connection() as conn:
        job = _job_or_404(jobs.cancel_job(conn, job_id), job_id)
    if job.finished and job.status != "cancelled":
        raise Conflict(f"job {job_id} already {job.status}")
    return JobOut.of(job)


@router.post("/documents", status_code=202, response_model=UploadAccepted, responses=ERRORS)
def create_documents(
    pool: DbPool,
    settings: AppSettings,
    key: AdminKey,
    files: Annotated[list[UploadFile], File(description="One or more documents (.md .txt .html .pdf .jsonl).")],
    collection: Annotated[str, Form(max_length=64)] = DEFAULT_COLLECTION,
    config: Annotated[str | None, Form()] = None,
) -> UploadAccepted:
    """Store uploaded documents and queue the job that ingests them."""
    if len(files) > settings.upload_max_files:
        raise UploadTooLarge(f"{len(files)} files in one upload; at most {settings.upload_max_files}")
    for upload in files:  # refuse the whole request before storing anything
        uploads.check_upload_name(settings, upload.filename)
        if upload.size is not None and upload.size > settings.upload_max_bytes:
            raise UploadTooLarge(f"{upload.filename} is larger than {settings.upload_max_bytes} bytes")
    saved = [uploads.save_upload(settings, collection, u.filename, u.file) for u in files]
    with pool.connection() as conn:
        job = jobs.enqueue_reindex(
            conn, settings, source=str(uploads.upload_folder(settings, collection).resolve()), config=config,
            collection=collection,
        )  # fmt: skip
    files_out = [UploadedFile(filename=s.filename, bytes=s.bytes) for s in saved]
    return UploadAccepted(job_id=job.id, collection=collection, files=files_out)


@router.delete("/documents/{document_id}", response_model=DocumentDeleted, responses=ERRORS)
def delete_document(document_id: int, pool: DbPool, settings: AppSettings, key: AdminKey) -> DocumentDeleted:
    """Delete a document from every index version (and its uploaded file)."""
    with pool.connection() as conn:
        deleted = uploads.delete_document(conn, settings, document_id)
    if deleted is None:
        raise NotFound(f"no document {document_id}")
    return DocumentDeleted(id=document_id, collection=deleted[0], source=deleted[1])


@router.get("/indexes", response_model=IndexesResponse, responses=ERRORS)
def read_indexes(pool: DbPool, key: AdminKey) -> IndexesResponse:
    """Index versions with status, settings and size."""
    with pool.connection() as conn:
        rows = versions.list_index_versions(conn)
    return IndexesResponse(indexes=[IndexOut.of(v, docs, chunks) for v, docs, chunks in rows])


@router.post("/indexes/{version_id}/activate", response_model=ActivateResponse, responses=ERRORS)
def activate_index(
    version_id: int,
    pool: DbPool,
    catalog: Configs,
    key: AdminKey,
    force: Annotated[
        bool, Query(description="Activate even when the default configuration embeds with another model.")
    ] = False,
) -> ActivateResponse:
    """Switch queries to this version in one transaction; activating the previous one rolls back.

    A version built with another embedding model than the default configuration's is refused (409):
    every query embedding with that configuration would be refused until the next activation.
    """
    with pool.connection() as conn:
        candidate = _version_or_404(conn, version_id)
        if not force:
            versions.check_embedding_model(candidate, catalog.config(None))
        previous = versions.active_index_version(conn)
        version = versions.activate_index_version(conn, version_id)
    return ActivateResponse(active=IndexOut.of(version), previous_id=previous.id if previous else None)


@router.delete("/indexes/{version_id}", response_model=IndexOut, responses=ERRORS)
def delete_index(version_id: int, pool: DbPool, key: AdminKey) -> IndexOut:
    """Drop an inactive version and its chunks; the active one is refused (409)."""
    with pool.connection() as conn:
        version = _version_or_404(conn, version_id)
        if version.is_active:
            raise Conflict(f"index version {version.name} is active; activate another version before deleting it")
        return IndexOut.of(versions.drop_index_version(conn, version_id))
