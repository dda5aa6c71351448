"""Uploaded documents: kept as files under ``<data_dir>/uploads/<collection>/``, then ingested like any source.

Keeping the file (not only its chunks) makes an upload reindexable with new chunking or a new
embedding model, like every other source. Files are written to a temporary name and renamed,
so a job reading the folder never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import psycopg

from core.access import Grant
from core.config import NAME_PATTERN
from core.errors import SourceError, UnsupportedFileType, UploadTooLarge
from core.settings import Settings
from ingest import documents
from ingest.jobs import Job

_READ_BYTES = 1 << 16


@dataclass(frozen=True)
class SavedUpload:
    """One stored file."""

    filename: str
    path: Path
    bytes: int


def upload_folder(settings: Settings, collection: str) -> Path:
    """The folder holding ``collection``'s uploads."""
    if not NAME_PATTERN.match(collection):
        raise SourceError(f"collection {collection!r} must match {NAME_PATTERN.pattern}")
    return settings.uploads_dir / collection


def check_upload_name(settings: Settings, filename: str | None) -> str:
    """The bare file name, refused when empty or hidden (400) or of an unsupported type (415)."""
    name = Path((filename or "").replace("\\", "/")).name
    if not name or name.startswith("."):
        raise SourceError(f"file name {filename!r} is empty or hidden")
    suffix = Path(name).suffix.lower()
    if suffix not in settings.upload_types:
        raise UnsupportedFileType(
            f"{name}: file type {suffix or '(none)'!r} is not accepted; accepted: {', '.join(settings.upload_types)}"
        )
    return name


def save_upload(settings: Settings, collection: str, filename: str | None, data: BinaryIO) -> SavedUpload:
    """Store one uploaded file (size checked while copying: 413 beyond ``upload_max_bytes``)."""
    name = check_upload_name(settings, filename)
    folder = upload_folder(settings, collection)
    folder.mkdir(parents=True, exist_ok=True)
    limit = settings.upload_max_bytes
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-")
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while block := data.read(_READ_BYTES):
                size += len(block)
                if size > limit:
                    raise UploadTooLarge(f"{name} is larger than the limit of {limit} bytes")
                out.write(block)
        os.replace(tmp, folder / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return SavedUpload(filename=name, path=folder / name, bytes=size)


UploadStatus = Literal["pending", "ingested", "skipped", "failed", "cancelled"]


@dataclass(frozen=True)
class UploadedDocument:
    """What became of one uploaded file: its document ids once its job ingested it, or why it was not."""

    source: str
    status: UploadStatus
    document_ids: list[int] = field(default_factory=list)
    reason: str | None = None
    quarantined: str | None = None  # under the data folder, when the file could not be read


def uploaded_documents(conn: psycopg.Connection, job: Job) -> list[UploadedDocument]:
    """The files an upload queued ``job`` for, each with its document ids (a JSONL file has one per line)."""
    names: list[str] = job.params.get("uploads", [])
    if not names:
        return []
    skipped = {entry["source"]: entry for entry in job.errors}
    ids: dict[str, list[int]] = {name: [] for name in names}
    if job.status == "succeeded":
        rows = conn.execute(
            """SELECT id, split_part(source, '#', 1) FROM documents
               WHERE collection = %s AND split_part(source, '#', 1) = ANY(%s) ORDER BY id""",
            (job.params["collection"], names),
        ).fetchall()
        for document_id, name in rows:
            ids[name].append(document_id)
    result = []
    for name in names:
        if name in skipped:
            entry = skipped[name]
            result.append(
                UploadedDocument(name, "skipped", reason=entry["reason"], quarantined=entry.get("quarantined"))
            )
        elif job.status == "succeeded":
            result.append(UploadedDocument(name, "ingested", ids[name]))
        else:
            ended: UploadStatus = "failed" if job.status == "failed" else "cancelled"
            result.append(UploadedDocument(name, ended if job.finished else "pending"))
    return result


def delete_document(
    conn: psycopg.Connection, settings: Settings, document_id: int, grant: Grant
) -> tuple[str, str] | None:
    """Delete a document from every index version; also its uploaded file, so a reindex cannot bring it back.

    Returns (collection, source), or None when there is no such document in a granted collection.
    """
    row = conn.execute("SELECT collection, source FROM documents WHERE id = %s", (document_id,)).fetchone()
    if row is None or not grant.may_use(row[0]):
        return None
    collection, source = row
    documents.delete_documents(conn, [document_id])
    folder = settings.uploads_dir.resolve() / collection
    path = (folder / source.split("#", 1)[0]).resolve()
    if path.is_file() and path.is_relative_to(folder) and "#" not in source:
        path.unlink()
    return collection, source
