"""``/v1/admin``: reindex jobs, document upload and deletion, index versions (admin scope).

A collection-scoped admin key acts only inside its collections: it sees their jobs, uploads to and
deletes from them, and switches their index versions. What affects every collection (the default
index version, dropping a version, reindexing from a server path) needs a global admin. Jobs and
documents outside the grant answer 404, like ones that do not exist.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from pydantic import BaseModel, Field

from app import online_eval, uploads
from app.api.deps import AdminGrant, AppSettings, Configs, DbPool
from app.api.key_first import AdminKeyFirst
from app.api.schemas import NO_NUL, ErrorResponse, RowId, Strict
from app.retrieval import require_collection
from core.access import Grant
from core.errors import Conflict, IndexVersionError, NotFound, UploadTooLarge
from ingest import jobs, versions

router = APIRouter(prefix="/v1/admin", tags=["admin"], route_class=AdminKeyFirst)
ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 415, 422)
}


class ReindexRequest(Strict):
    """What to reindex, and how."""

    source: str | None = Field(
        default=None,
        description="A folder or file under an allowed root (global admin only); unset: the earlier sources.",
    )
    config: str | None = Field(
        default=None, description="Configuration whose index settings to build; default if unset."
    )
    collection: str | None = Field(
        default=None, max_length=64, description="unset: 'default', or the key's only collection."
    )
    mode: Literal["incremental", "full"] = Field(
        default="incremental",
        description="incremental: update the config's version in place; full: a fresh version beside the live one.",
    )
    activate: bool | None = Field(
        default=None,
        description="Answer the collection from the version once built; unset = only when nothing answers it yet.",
    )
    sync: bool = Field(default=False, description="Also delete the collection's documents the source no longer has.")


class JobAccepted(BaseModel):
    """A queued job."""

    job_id: int
    status: str


class UploadedDocumentOut(BaseModel):
    """What became of one uploaded file."""

    source: str = Field(description="The file's name in the collection's uploads folder (its documents' source).")
    status: Literal["pending", "ingested", "skipped", "failed", "cancelled"]
    document_ids: list[int] = Field(description="Once ingested: its document ids (one per line of a JSONL file).")
    reason: str | None = Field(description="Why it was skipped.")
    quarantined: str | None = Field(description="Where an unreadable file was moved, under the data folder.")


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
    documents: list[UploadedDocumentOut] = Field(
        default_factory=list, description="An upload's job: each uploaded file and, once ingested, its document ids."
    )

    @classmethod
    def of(cls, job: jobs.Job, documents: list[uploads.UploadedDocument]) -> JobOut:
        """The API view of a job; ``documents``: an upload's files (:func:`app.uploads.uploaded_documents`)."""
        derived = ("docs_per_s", "eta_s", "documents")
        fields = {name: getattr(job, name) for name in cls.model_fields if name not in derived}
        files = [UploadedDocumentOut(**vars(d)) for d in documents]
        return cls(**fields, docs_per_s=job.docs_per_s, eta_s=job.eta_s, documents=files)


class JobsResponse(BaseModel):
    """Jobs, newest first."""

    jobs: list[JobOut]


class IndexOut(BaseModel):
    """One index version."""

    id: int
    name: str
    status: str
    active: bool = Field(description="The default version: answers every collection without a version of its own.")
    collections: list[str] = Field(description="Collections answered from this version rather than the default.")
    settings: dict[str, Any]
    embedding_model: str
    dimension: int
    documents: int | None = None
    chunks: int | None = None
    created_by: str
    created_at: datetime
    activated_at: datetime | None

    @classmethod
    def of(
        cls,
        version: versions.IndexVersion,
        collections: list[str],
        documents: int | None = None,
        chunks: int | None = None,
    ) -> IndexOut:
        """The API view of a version; ``collections``: the granted ones answered from it rather than the default."""
        return cls(
            id=version.id, name=version.name, status=version.status, active=version.is_active, collections=collections,
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
    collection: str | None = Field(description="The collection switched; null: the default version moved.")
    previous_id: int | None


class UploadedFile(BaseModel):
    """One stored upload."""

    filename: str
    bytes: int


class UploadAccepted(BaseModel):
    """Stored files and the job that ingests them: its ``documents`` give each file's document ids once done."""

    job_id: int
    status_url: str = Field(description="GET it (admin scope): the job's status and each file's document ids.")
    collection: str
    files: list[UploadedFile]


class DocumentDeleted(BaseModel):
    """A deleted document."""

    id: int
    collection: str
    source: str


def _job_or_404(job: jobs.Job | None, job_id: int, grant: Grant) -> jobs.Job:
    if job is None or not grant.may_use(job.collection):
        raise NotFound(f"no job {job_id}")
    return job


def _own_collections(conn: Any, version_id: int, grant: Grant) -> list[str]:
    return [c for c, v in versions.collection_versions(conn).items() if v == version_id and grant.may_use(c)]


def _version_or_404(conn: Any, version_id: int) -> versions.IndexVersion:
    try:
        return versions.get_index_version(conn, version_id)
    except IndexVersionError:
        raise NotFound(f"no index version {version_id}") from None


@router.post("/reindex", status_code=202, response_model=JobAccepted, responses=ERRORS)
def create_reindex(
    body: ReindexRequest, pool: DbPool, settings: AppSettings, catalog: Configs, grant: AdminGrant
) -> JobAccepted:
    """Queue a reindex job; watch it at /v1/admin/jobs/{id}."""
    collection = grant.collection(body.collection)
    config = grant.config(body.config, catalog.default_config)
    if body.source is not None:  # a server path may hold any team's files
        grant.require_all_collections("reindexing from a server path")
    with pool.connection() as conn:
        job = jobs.enqueue_reindex(
            conn, settings, source=body.source, config=config, collection=collection,
            mode=body.mode, activate=body.activate, sync=body.sync,
        )  # fmt: skip
    return JobAccepted(job_id=job.id, status=job.status)


@router.get("/jobs", response_model=JobsResponse, responses=ERRORS)
def read_jobs(
    pool: DbPool,
    grant: AdminGrant,
    status: Annotated[Literal["queued", "running", "succeeded", "failed", "cancelled"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobsResponse:
    """Jobs of the key's collections, newest first."""
    with pool.connection() as conn:
        found = jobs.list_jobs(conn, status=status, limit=limit, collections=grant.collections)
        return JobsResponse(jobs=[JobOut.of(j, uploads.uploaded_documents(conn, j)) for j in found])


@router.get("/jobs/{job_id}", response_model=JobOut, responses=ERRORS)
def read_job(job_id: RowId, pool: DbPool, grant: AdminGrant) -> JobOut:
    """A job's status, counts, docs/s, ETA and per-document errors."""
    with pool.connection() as conn:
        job = _job_or_404(jobs.get_job(conn, job_id), job_id, grant)
        return JobOut.of(job, uploads.uploaded_documents(conn, job))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses=ERRORS)
def cancel_job(job_id: RowId, pool: DbPool, grant: AdminGrant) -> JobOut:
    """Cancel a queued job, or stop a running one at its next batch (its index is never activated)."""
    with pool.connection() as conn:
        _job_or_404(jobs.get_job(conn, job_id), job_id, grant)
        job = _job_or_404(jobs.cancel_job(conn, job_id), job_id, grant)
        documents = uploads.uploaded_documents(conn, job)
    if job.finished and job.status != "cancelled":
        raise Conflict(f"job {job_id} already {job.status}")
    return JobOut.of(job, documents)


@router.post("/documents", status_code=202, response_model=UploadAccepted, responses=ERRORS)
def create_documents(
    pool: DbPool,
    settings: AppSettings,
    catalog: Configs,
    grant: AdminGrant,
    files: Annotated[list[UploadFile], File(description="One or more documents (.md .txt .html .pdf .jsonl).")],
    collection: Annotated[
        str | None, Form(max_length=64, description="unset: 'default', or the key's only collection.")
    ] = None,
    config: Annotated[str | None, Form()] = None,
) -> UploadAccepted:
    """Store uploaded documents and queue the job that ingests them."""
    collection = grant.collection(collection)
    config = grant.config(config, catalog.default_config)
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
            collection=collection, uploads=[s.filename for s in saved],
        )  # fmt: skip
    files_out = [UploadedFile(filename=s.filename, bytes=s.bytes) for s in saved]
    return UploadAccepted(job_id=job.id, status_url=f"/v1/admin/jobs/{job.id}", collection=collection, files=files_out)


@router.delete("/documents/{document_id}", response_model=DocumentDeleted, responses=ERRORS)
def delete_document(document_id: RowId, pool: DbPool, settings: AppSettings, grant: AdminGrant) -> DocumentDeleted:
    """Delete a document from every index version (and its uploaded file)."""
    with pool.connection() as conn:
        deleted = uploads.delete_document(conn, settings, document_id, grant)
    if deleted is None:
        raise NotFound(f"no document {document_id}")
    return DocumentDeleted(id=document_id, collection=deleted[0], source=deleted[1])


@router.get("/indexes", response_model=IndexesResponse, responses=ERRORS)
def read_indexes(pool: DbPool, grant: AdminGrant) -> IndexesResponse:
    """Index versions with status, settings, size and the (granted) collections answered from each."""
    with pool.connection() as conn:
        rows = versions.list_index_versions(conn)
        own = versions.collection_versions(conn)
    return IndexesResponse(
        indexes=[
            IndexOut.of(v, sorted(c for c, i in own.items() if i == v.id and grant.may_use(c)), docs, chunks)
            for v, docs, chunks in rows
        ]
    )


@router.post("/indexes/{version_id}/activate", response_model=ActivateResponse, responses=ERRORS)
def activate_index(
    version_id: RowId,
    pool: DbPool,
    catalog: Configs,
    grant: AdminGrant,
    collection: Annotated[
        str | None,
        Query(
            max_length=64,
            pattern=NO_NUL,
            description="Switch only this collection; unset: the default version (global admin).",
        ),
    ] = None,
    force: Annotated[
        bool, Query(description="Activate even when the default configuration embeds with another model.")
    ] = False,
) -> ActivateResponse:
    """Switch queries to this version in one transaction; activating the previous one rolls back.

    With ``collection``, only that collection switches and every other keeps its version. A version
    built with another embedding model than the default configuration's is refused (409): every
    query embedding with that configuration would be refused until the next activation.
    """
    if collection is None:
        grant.require_all_collections("activating the default index version")
    else:
        collection = grant.collection(collection)
    with pool.connection() as conn:
        if collection is not None:
            require_collection(conn, collection, grant)
        candidate = _version_or_404(conn, version_id)
        if not force:
            versions.check_embedding_model(candidate, catalog.config(None))
        previous = versions.active_index_version(conn, collection)
        version = versions.activate_index_version(conn, version_id, collection)
        own = _own_collections(conn, version.id, grant)
    return ActivateResponse(
        active=IndexOut.of(version, own), collection=collection, previous_id=previous.id if previous else None
    )


@router.delete("/indexes/{version_id}", response_model=IndexOut, responses=ERRORS)
def delete_index(version_id: RowId, pool: DbPool, grant: AdminGrant) -> IndexOut:
    """Drop a version no collection is answered from, and its chunks (global admin); an active one is refused (409)."""
    grant.require_all_collections("dropping an index version")
    with pool.connection() as conn:
        version = _version_or_404(conn, version_id)
        own = _own_collections(conn, version_id, grant)
        if version.is_active or own:
            where = f"the collections {', '.join(own)}" if own else "the default"
            raise Conflict(
                f"index version {version.name} is active for {where}; activate another version before deleting it"
            )
        return IndexOut.of(versions.drop_index_version(conn, version_id), [])


class QualityRow(BaseModel):
    """Online evaluation of one collection x configuration x prompt x index version x day (means over answers)."""

    day: str
    collection: str
    config_version: str
    prompt_version: str
    index_version: str
    answers: int = Field(description="Sampled answers evaluated.")
    refusal_rate: float | None
    citations_mean: float | None
    pii_entities_mean: float | None
    latency_ms_mean: float | None
    cost_usd_mean: float | None
    top_score: float | None = Field(description="Mean best retrieval score.")
    margin: float | None = Field(description="Mean lead of the best retrieval score over the second.")
    support: float | None = Field(description="Mean share of answer sentences a cited chunk supports.")
    faithfulness: float | None = Field(description="Mean LLM-judged faithfulness (ragas) of judged answers.")
    answer_relevancy: float | None = Field(description="Mean LLM-judged answer relevancy (ragas) of judged answers.")
    judged: int = Field(description="Answers the judge scored for faithfulness.")
    answer_relevancy_judged: int = Field(description="Answers the judge scored for answer relevancy.")
    judge_cost_usd: float = Field(description="What judging these answers cost.")
    judge_failures: dict[str, dict[str, int]] = Field(
        description="Per judge metric: why a score is missing (timeout, unreachable, bad_json, ...) -> answers."
    )
    judge_skipped: dict[str, int] = Field(
        description="Answers picked for the judge but not judged, by reason (cap: the daily spend cap was reached)."
    )


class JudgeSpendRow(BaseModel):
    """The LLM judge's spend on one UTC day for one configuration (what its daily cap is checked against)."""

    day: str
    config: str
    usd: float
    answers: int = Field(description="Answers sent to the judge.")


class QualityResponse(BaseModel):
    """Online evaluation figures since a day."""

    since: str
    rows: list[QualityRow]
    judge_spend: list[JudgeSpendRow]


@router.get("/quality", response_model=QualityResponse, responses=ERRORS)
def read_quality(
    pool: DbPool,
    grant: AdminGrant,
    collection: Annotated[
        str | None, Query(max_length=64, pattern=NO_NUL, description="unset: every collection of the key.")
    ] = None,
    since: Annotated[
        str | None, Query(max_length=40, pattern=NO_NUL, description="YYYY-MM-DD or 7d (the default).")
    ] = None,
) -> QualityResponse:
    """Online evaluation of sampled live answers, per collection, configuration, prompt, index version and day."""
    first = online_eval.since_day(since)
    collections = None if grant.all_collections else sorted(grant.collections or ())
    with pool.connection() as conn:
        if collection is not None:  # another key's collection: 403, an unknown one: 404, as everywhere
            collections = [grant.collection(collection)]
            require_collection(conn, collections[0], grant)
        rows = online_eval.quality_report(conn, first, collections)
        spend = online_eval.judge_spend(conn, first, collections)
    return QualityResponse(
        since=first.isoformat(), rows=[QualityRow(**r) for r in rows], judge_spend=[JudgeSpendRow(**s) for s in spend]
    )
