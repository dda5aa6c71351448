"""The admin API over HTTP: reindex jobs run by the in-process worker, uploads, index activation and rollback."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.keys import create_key
from app.main import create_app
from core.config import EmbeddingSettings, IndexSettings
from core.db import Database
from core.settings import Settings
from ingest import versions
from tests.app.conftest import authed
from tests.utils.corpus import corpus_document_count, write_corpus
from tests.utils.jobs import job_settings, write_many
from tests.utils.pdf import text_pdf
from tests.utils.server import serve_in_thread


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "docs")


@pytest.fixture
def settings(database: Database, tmp_path: Path, docs: Path) -> Settings:
    uploads = tmp_path / "data" / "uploads"
    return job_settings(database, tmp_path, [docs, uploads], worker_in_process=True, upload_max_bytes=2000)


@pytest.fixture
def keys(database: Database) -> dict[str, str]:
    with database.connect() as conn:
        return {
            scope: create_key(conn, scope, [scope], collections=["*"], configs=["*"])[1] for scope in ("admin", "query")
        }


@pytest.fixture
def admin(settings: Settings, keys: dict[str, str]) -> Iterator[TestClient]:
    with authed(TestClient(create_app(settings)), keys["admin"]) as client:
        yield client


def wait(client: TestClient | httpx.Client, job_id: int, timeout_s: float = 120) -> dict[str, Any]:
    """Poll a job until it is finished; returns its last state."""
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = client.get(f"/v1/admin/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def reindex(client: TestClient | httpx.Client, **body: object) -> dict[str, Any]:
    response = client.post("/v1/admin/reindex", json=body)
    assert response.status_code == 202, response.text
    return wait(client, response.json()["job_id"])


def test_reindex_activate_and_roll_back(admin: TestClient, docs: Path) -> None:
    first = reindex(admin, source=str(docs))
    assert first["status"] == "succeeded" and first["activated"], first
    assert first["docs_done"] == first["docs_total"] == corpus_document_count() and first["errors"] == []
    assert first["docs_per_s"] > 0 and first["eta_s"] is None
    full = reindex(admin, mode="full", config="small", activate=True)
    assert full["status"] == "succeeded" and full["activated"]
    assert [j["id"] for j in admin.get("/v1/admin/jobs").json()["jobs"]] == [full["id"], first["id"]]

    indexes = {i["id"]: i for i in admin.get("/v1/admin/indexes").json()["indexes"]}
    old, new = first["index_version_id"], full["index_version_id"]
    # The reindex switched its collection; the default (for every other collection) stayed.
    assert indexes[new]["collections"] == ["default"] and not indexes[new]["active"], indexes[new]
    assert indexes[old]["active"] and indexes[old]["collections"] == [] and indexes[new]["documents"] == 6

    rollback = admin.post(f"/v1/admin/indexes/{old}/activate", params={"collection": "default"})
    assert rollback.status_code == 200 and rollback.json()["previous_id"] == new, rollback.text
    assert rollback.json()["active"]["id"] == old and rollback.json()["collection"] == "default"
    indexes = {i["id"]: i for i in admin.get("/v1/admin/indexes").json()["indexes"]}
    assert indexes[new]["collections"] == [] and indexes[old]["active"]  # back on the default

    refused = admin.delete(f"/v1/admin/indexes/{old}")
    assert refused.status_code == 409 and "is active" in refused.json()["error"]["message"]
    assert admin.delete(f"/v1/admin/indexes/{new}").status_code == 200
    assert admin.get(f"/v1/admin/indexes/{new}/activate").status_code == 405
    missing = admin.post(f"/v1/admin/indexes/{new}/activate")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "NotFound"
    assert admin.post(f"/v1/admin/jobs/{first['id']}/cancel").status_code == 409  # already succeeded
    assert admin.get("/v1/admin/jobs/999999").status_code == 404


def test_index_of_another_embedding_model_is_refused(
    admin: TestClient, docs: Path, settings: Settings, keys: dict[str, str]
) -> None:
    """A version whose vectors come from another model: activation 409 unless forced, then queries 409.

    The other model's version is registered with an empty chunk table (only MiniLM is installed
    here); nothing reads its vectors, which is the point.
    """
    built = reindex(admin, source=str(docs))
    assert built["status"] == "succeeded" and built["activated"]
    other = IndexSettings(embedding=EmbeddingSettings(model="/models/e5-large-v2"))
    with Database(url=settings.database_url.get_secret_value()).connect() as conn:  # type: ignore[union-attr]
        version = versions.mark_version_ready(conn, versions.ensure_index_version(conn, other, 1024, "test"))

    refused = admin.post(f"/v1/admin/indexes/{version.id}/activate")
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["type"] == "IndexModelMismatch" and "e5-large-v2" in error["message"], error
    assert "all-MiniLM-L6-v2" in error["message"] and "reindex" in error["message"]
    assert admin.get("/v1/admin/indexes").json()["indexes"][0]["active"] is False  # nothing switched

    assert admin.post(f"/v1/admin/indexes/{version.id}/activate", params={"force": True}).status_code == 200
    query = admin.post(
        "/v1/query", json={"question": "How many PTO days?"}, headers={"Authorization": f"Bearer {keys['query']}"}
    )
    assert query.status_code == 409 and query.json()["error"]["type"] == "IndexModelMismatch", query.text
    back = admin.post(f"/v1/admin/indexes/{built['index_version_id']}/activate")
    assert back.status_code == 200 and back.json()["previous_id"] == version.id


def test_upload_then_delete_documents(admin: TestClient, settings: Settings) -> None:
    files = [
        ("files", ("holidays.md", b"# Holidays\n\nThe office closes on 24 December.\n", "text/markdown")),
        ("files", ("parking.txt", b"Visitors park on level -2.\n", "text/plain")),
    ]
    response = admin.post("/v1/admin/documents", files=files, data={"collection": "uploads"})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert [f["filename"] for f in accepted["files"]] == ["holidays.md", "parking.txt"]
    assert accepted["status_url"] == f"/v1/admin/jobs/{accepted['job_id']}"
    job = wait(admin, accepted["job_id"])
    assert job["status"] == "succeeded" and job["result"]["counts"]["added"] == 2
    assert job["result"]["counts"]["chunks_truncated"] == 0  # the ingest summary, as the API shows it
    stored = settings.uploads_dir / "uploads" / "holidays.md"
    assert stored.read_bytes().startswith(b"# Holidays")

    with Database(url=settings.database_url.get_secret_value()).connect() as conn:  # type: ignore[union-attr]
        ids = dict(conn.execute("SELECT source, id FROM documents WHERE collection = 'uploads'").fetchall())
    # Each uploaded file's document id, from the job the upload answered with.
    assert admin.get(accepted["status_url"]).json()["documents"] == [
        {"source": name, "status": "ingested", "document_ids": [ids[name]], "reason": None, "quarantined": None}
        for name in ("holidays.md", "parking.txt")
    ]
    doc_id = ids["holidays.md"]
    deleted = admin.delete(f"/v1/admin/documents/{doc_id}")
    assert deleted.status_code == 200 and deleted.json()["source"] == "holidays.md"
    assert not stored.exists()  # a later reindex cannot bring it back
    assert admin.delete(f"/v1/admin/documents/{doc_id}").status_code == 404


@pytest.mark.parametrize(
    ("name", "body", "status", "message"),
    [
        ("tool.exe", b"MZ", 415, "file type '.exe' is not accepted"),
        ("big.md", b"x" * 5000, 413, "larger than"),
        (".hidden.md", b"# x\n", 400, "empty or hidden"),
    ],
)
def test_uploads_refused_store_nothing(
    admin: TestClient, settings: Settings, name: str, body: bytes, status: int, message: str
) -> None:
    files = [("files", ("fine.md", b"# fine\n", "text/markdown")), ("files", (name, body, "application/octet-stream"))]
    response = admin.post("/v1/admin/documents", files=files)
    assert response.status_code == status and message in response.json()["error"]["message"]
    assert not (settings.uploads_dir / "default").exists() or not any((settings.uploads_dir / "default").iterdir())


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("inside.txt", "a zip, renamed .pdf\n" * 20)
    return buffer.getvalue()


def test_hostile_uploads_become_per_document_errors_and_the_worker_lives_on(
    database: Database, tmp_path: Path, docs: Path, keys: dict[str, str]
) -> None:
    """Broken, lying and binary files are stored (their type is allowed), then skipped by the job with a reason.

    The upload route has its own body limit: files larger than the JSON limit (max_body_bytes) are accepted.
    """
    settings = job_settings(
        database, tmp_path, [docs, tmp_path / "data" / "uploads"], worker_in_process=True,
        upload_max_bytes=512 * 1024, upload_max_files=10, max_body_bytes=4096,
    )  # fmt: skip
    lying = text_pdf("Visitors sign in at the front desk.", claimed_pages=2_000_000_000)
    hostile = {  # name -> (content, reason given on the job)
        "truncated.pdf": (lying[: len(lying) // 2], "corrupt PDF"),
        "archive.pdf": (zip_bytes(), "no %PDF header"),
        "bomb.pdf": (text_pdf("x", inflate_to=200_000_000), "corrupt PDF"),  # ~200 KB inflating to 200 MB
        "garbage.txt": (bytes(range(256)) * 8, "binary content"),
        "garbage.md": (b"\x89\xff\xc3(" * 500, "not valid UTF-8"),
    }
    files = [("files", (name, body, "application/octet-stream")) for name, (body, _) in hostile.items()]
    files.append(("files", ("lying.pdf", lying, "application/pdf")))  # claims 2e9 pages, has one
    with authed(TestClient(create_app(settings)), keys["admin"]) as admin:
        response = admin.post("/v1/admin/documents", files=files)
        assert response.status_code == 202, response.text
        job = wait(admin, response.json()["job_id"])
        assert job["status"] == "succeeded", job
        assert job["result"]["counts"]["added"] == 1  # lying.pdf, with its one real page
        reasons = {e["source"]: e["reason"] for e in job["errors"]}
        assert set(reasons) == set(hostile)
        for name, (_, reason) in hostile.items():
            assert reason in reasons[name], reasons[name]
        # Unreadable files leave the uploads folder for the quarantine, which the job's errors name.
        uploaded = settings.uploads_dir / "default"
        assert sorted(p.name for p in uploaded.iterdir()) == ["lying.pdf"]
        for entry in job["errors"]:
            assert entry["quarantined"] == f"quarantine/default/{entry['source']}"
            assert (settings.data_dir / entry["quarantined"]).read_bytes() == hostile[entry["source"]][0]
        files_out = {d["source"]: d for d in job["documents"]}
        assert files_out["lying.pdf"]["status"] == "ingested" and len(files_out["lying.pdf"]["document_ids"]) == 1
        assert files_out["garbage.md"]["status"] == "skipped" and "not valid UTF-8" in files_out["garbage.md"]["reason"]
        assert files_out["truncated.pdf"]["quarantined"] == "quarantine/default/truncated.pdf"

        after = admin.post("/v1/admin/documents", files=[("files", ("after.md", b"# After\n\nStill here.\n"))])
        again = wait(admin, after.json()["job_id"])
        assert again["status"] == "succeeded"  # the worker survived
        assert again["errors"] == []  # the quarantined files are not skipped again by every later job

        too_big = admin.post("/v1/admin/documents", files=[("files", ("big.txt", b"x" * (512 * 1024 + 1)))])
        assert too_big.status_code == 413 and too_big.json()["error"]["type"] == "UploadTooLarge"
        many = [("files", (f"f{i}.md", b"# f\n")) for i in range(11)]
        assert admin.post("/v1/admin/documents", files=many).status_code == 413
        body = b"x" * (settings.upload_body_max_bytes + 1)
        whole = admin.post("/v1/admin/documents", content=body, headers={"content-type": "multipart/form-data"})
        assert whole.status_code == 413 and whole.json()["error"]["type"] == "BodyTooLarge"


@pytest.mark.parametrize("source", ["../docs", "/etc", "docs/../../etc", "escape"])
def test_sources_outside_the_roots_are_a_400(admin: TestClient, docs: Path, tmp_path: Path, source: str) -> None:
    (docs / "escape").symlink_to(tmp_path)
    response = admin.post("/v1/admin/reindex", json={"source": source})
    error = response.json()["error"]
    assert response.status_code == 400 and error["type"] == "SourceError"
    assert "'..'" in error["message"] or "outside the allowed roots" in error["message"]


def test_admin_routes_need_the_admin_scope(admin: TestClient, keys: dict[str, str]) -> None:
    response = admin.get("/v1/admin/jobs", headers={"Authorization": f"Bearer {keys['query']}"})
    assert response.status_code == 403 and "admin" in response.json()["error"]["message"]


def test_queries_answered_without_errors_during_full_reindex_and_activation(
    settings: Settings, keys: dict[str, str], docs: Path
) -> None:
    """Real uvicorn; one client asks questions non-stop while a full build runs and is activated, then rolled back."""
    write_many(docs / "many.jsonl", 200)
    app = create_app(settings)
    headers = {"Authorization": f"Bearer {keys['admin']}"}
    with serve_in_thread(app) as url, httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        first = reindex(client, source=str(docs))
        assert first["status"] == "succeeded", first
        statuses: list[int] = []
        versions: set[str] = set()
        stop = threading.Event()

        def ask() -> None:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['query']}"}, timeout=60) as asker:
                while not stop.is_set():
                    r = asker.post("/v1/query", json={"question": "When does the on-call rotation change?"})
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        versions.add(r.json()["versions"]["index"])

        thread = threading.Thread(target=ask)
        thread.start()
        try:
            full = reindex(client, mode="full", config="small", activate=True)
            time.sleep(1.0)
            rollback = client.post(f"/v1/admin/indexes/{first['index_version_id']}/activate")
            time.sleep(1.0)
        finally:
            stop.set()
            thread.join(60)
    assert full["status"] == "succeeded" and rollback.status_code == 200
    assert len(statuses) >= 5 and set(statuses) == {200}
    assert len(versions) == 2  # answered from the old version, the new one, then the old one again
