"""Keys scoped to collections and configurations: every key x route x collection cell, and no citation across.

One database holds three collections (the samples in ``default``, and ``hr`` and ``support`` with
documents of their own); four keys hold different grants. Jobs are queued but never run (no
worker), so the matrix changes nothing it later reads.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from app import search_sql
from app.answers import Question
from app.keys import create_key
from app.main import create_app
from app.rag import RagPipeline
from app.retrieval import search_hybrid
from core.access import Grant
from core.catalog import Catalog
from core.config import load_config
from core.db import Database
from core.embedding import Embedder
from core.errors import AccessDenied
from core.settings import Settings
from ingest import versions
from ingest.pipeline import IngestPipeline
from tests.conftest import REPO
from tests.utils.accounts import new_key
from tests.utils.jobs import SMALL_CHUNKS, job_settings
from tests.utils.server import serve_in_thread
from tests.utils.sse import parse_sse

SALARY = "What is the salary band for a level 3 engineer?"
TEAM_DOCS = {
    "hr": {
        "salaries.md": "# Salary bands\n\nA level 3 engineer earns between 98,000 and 121,000 kroner a year. "
        "Salary bands are reviewed every April by the compensation committee.",
        "payroll.md": "# Payroll\n\nPayroll runs on the 25th of each month; salary advances need HR approval.",
    },
    "support": {
        "refunds.md": "# Refunds\n\nAnnual plans are refunded pro rata within 30 days of purchase. "
        "Engineers on the support rotation approve refunds above 500 euros.",
        "escalation.md": "# Escalation\n\nA level 3 ticket is escalated to an engineer within four business hours.",
    },
}
OPEN_CONFIG = "pii:\n  enabled: false\n"  # a configuration a scoped key must not reach

# name -> (scopes, collections)
KEYS: dict[str, tuple[list[str], list[str]]] = {
    "global-admin": (["query", "admin"], ["*"]),
    "hr-admin": (["query", "admin"], ["hr"]),
    "support-query": (["query"], ["support"]),
    "support-default-query": (["query"], ["support", "default"]),
}
COLLECTIONS = ("default", "hr", "support")


def team_folders(root: Path) -> Path:
    for collection, docs in TEAM_DOCS.items():
        for name, text in docs.items():
            (root / collection).mkdir(parents=True, exist_ok=True)
            (root / collection / name).write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def teams(private_database: Database, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``hr`` and ``support`` ingested beside the samples, on the same (default) index version."""
    root = team_folders(tmp_path_factory.mktemp("teams"))
    config = load_config("default", REPO / "configs")
    with private_database.connect() as conn:
        for collection in TEAM_DOCS:
            IngestPipeline(conn, config, embedder, collection=collection).run(root / collection)
    return root


@pytest.fixture(scope="module")
def settings(private_database: Database, teams: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    tmp = tmp_path_factory.mktemp("tenancy")
    built = job_settings(private_database, tmp, [REPO / "samples", teams, tmp / "data" / "uploads"], vllm_url=None)
    (built.configs_dir / "open.yaml").write_text(OPEN_CONFIG, encoding="utf-8")
    return built


@pytest.fixture(scope="module")
def keys(private_database: Database) -> dict[str, str]:
    """Each key named after its role, granted the default configuration only."""
    with private_database.connect() as conn:
        return {
            name: create_key(conn, name, scopes, collections=collections, configs=["default"])[1]
            for name, (scopes, collections) in KEYS.items()
        }


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def collections_of(database: Database, document_ids: list[int]) -> set[str]:
    with database.connect() as conn:
        rows = conn.execute("SELECT collection FROM documents WHERE id = ANY(%s)", (document_ids,)).fetchall()
    return {r[0] for r in rows}


def _answer(client: TestClient, key: str, path: str, body: dict[str, Any]) -> tuple[int, list[int]]:
    """Status and cited document ids, from JSON or from the SSE stream."""
    response = client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
    if response.status_code != 200:
        return response.status_code, []
    if body.get("stream"):
        frames = [json.loads(data) for _, data in parse_sse(response.text) if data and data != "[DONE]"]
        cited = [c for f in frames for c in (f if isinstance(f, list) else f.get("citations", []))]
    else:
        cited = response.json()["citations"]
    return 200, [c["document_id"] for c in cited]


MESSAGES = [{"role": "user", "content": SALARY}]
ANSWER_ROUTES = {
    "query": lambda c: ("/v1/query", {"question": SALARY, "collection": c}),
    "query-stream": lambda c: ("/v1/query", {"question": SALARY, "collection": c, "stream": True}),
    "chat": lambda c: ("/v1/chat", {"messages": MESSAGES, "collection": c}),
    "completions-model": lambda c: ("/v1/chat/completions", {"model": f"default@{c}", "messages": MESSAGES}),
    "completions-extra-stream": lambda c: (
        "/v1/chat/completions",
        {"model": "default", "collection": c, "messages": MESSAGES, "stream": True},
    ),
}


def allowed(key: str, collection: str, scope: str) -> bool:
    scopes, collections = KEYS[key]
    return scope in scopes and ("*" in collections or collection in collections)


@pytest.mark.parametrize("collection", COLLECTIONS)
@pytest.mark.parametrize("route", ANSWER_ROUTES)
@pytest.mark.parametrize("key_name", KEYS)
def test_answers_come_only_from_granted_collections(
    client: TestClient, keys: dict[str, str], private_database: Database, key_name: str, route: str, collection: str
) -> None:
    path, body = ANSWER_ROUTES[route](collection)
    status, cited = _answer(client, keys[key_name], path, body)
    if not allowed(key_name, collection, "query"):
        assert status == 403
        return
    assert status == 200 and cited, (status, cited)
    assert collections_of(private_database, cited) == {collection}


def _admin_call(client: TestClient, key: str, route: str, collection: str, default_version: int) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    if route == "reindex":
        return client.post("/v1/admin/reindex", json={"collection": collection}, headers=headers).status_code
    if route == "upload":
        files = {"files": ("note.md", b"# Note\n\nA note for the team.", "text/markdown")}
        return client.post(
            "/v1/admin/documents", files=files, data={"collection": collection}, headers=headers
        ).status_code
    # Activating the version the collection already follows changes nothing the other cells read.
    url = f"/v1/admin/indexes/{default_version}/activate"
    return client.post(url, params={"collection": collection}, headers=headers).status_code


@pytest.mark.parametrize("collection", COLLECTIONS)
@pytest.mark.parametrize("route", ["reindex", "upload", "activate"])
@pytest.mark.parametrize("key_name", KEYS)
def test_admin_acts_only_inside_its_collections(
    client: TestClient, keys: dict[str, str], private_database: Database, key_name: str, route: str, collection: str
) -> None:
    with private_database.connect() as conn:
        default = versions.active_index_version(conn)
    assert default is not None
    status = _admin_call(client, keys[key_name], route, collection, default.id)
    expected = (
        {"reindex": 202, "upload": 202, "activate": 200}[route] if allowed(key_name, collection, "admin") else 403
    )
    assert status == expected


@pytest.mark.parametrize(
    ("key_name", "request_", "expected"),
    [
        ("hr-admin", ("POST", "/v1/admin/indexes/1/activate", None), 403),  # the default moves every collection
        ("hr-admin", ("DELETE", "/v1/admin/indexes/999", None), 403),
        ("hr-admin", ("POST", "/v1/admin/reindex", {"collection": "hr", "source": "/etc"}), 403),  # a server path
        ("global-admin", ("DELETE", "/v1/admin/indexes/999", None), 404),
        ("support-query", ("GET", "/v1/admin/jobs", None), 403),
        ("support-query", ("GET", "/v1/usage", None), 403),
        ("hr-admin", ("GET", "/v1/usage", None), 200),
    ],
)
def test_global_actions_need_a_global_admin(
    client: TestClient, keys: dict[str, str], key_name: str, request_: tuple[str, str, Any], expected: int
) -> None:
    method, path, body = request_
    response = client.request(method, path, json=body, headers={"Authorization": f"Bearer {keys[key_name]}"})
    assert response.status_code == expected, response.text


def test_jobs_documents_and_usage_of_other_collections_stay_invisible(
    client: TestClient, keys: dict[str, str], private_database: Database
) -> None:
    hr, support, glob = (
        {"Authorization": f"Bearer {keys[name]}"} for name in ("hr-admin", "support-default-query", "global-admin")
    )
    queued = client.post("/v1/admin/reindex", json={"collection": "support"}, headers=glob).json()["job_id"]
    assert (
        client.post("/v1/query", json={"question": SALARY, "collection": "support"}, headers=support).status_code == 200
    )

    seen = client.get("/v1/admin/jobs", params={"limit": 500}, headers=hr).json()["jobs"]
    assert seen and {j["params"]["collection"] for j in seen} == {"hr"}
    assert client.get(f"/v1/admin/jobs/{queued}", headers=hr).status_code == 404  # as if it did not exist
    assert client.post(f"/v1/admin/jobs/{queued}/cancel", headers=hr).status_code == 404
    assert client.get(f"/v1/admin/jobs/{queued}", headers=glob).json()["status"] == "queued"  # not cancelled

    with private_database.connect() as conn:
        other = conn.execute("SELECT id FROM documents WHERE collection = 'support' LIMIT 1").fetchone()[0]  # type: ignore[index]
    assert client.delete(f"/v1/admin/documents/{other}", headers=hr).status_code == 404
    assert collections_of(private_database, [other]) == {"support"}  # still there

    assert client.post("/v1/query", json={"question": SALARY, "collection": "hr"}, headers=hr).status_code == 200
    own = {r["group"] for r in client.get("/v1/usage", params={"group_by": "key"}, headers=hr).json()["rows"]}
    everyone = {r["group"] for r in client.get("/v1/usage", params={"group_by": "key"}, headers=glob).json()["rows"]}
    assert own == {"hr-admin"} and {"support-default-query", "global-admin"} <= everyone


def test_refusals_do_not_reveal_which_names_exist(client: TestClient, keys: dict[str, str]) -> None:
    support = {"Authorization": f"Bearer {keys['support-query']}"}
    messages = {}
    for collection in ("hr", "no-such-collection"):
        response = client.post("/v1/query", json={"question": SALARY, "collection": collection}, headers=support)
        assert response.status_code == 403
        messages[collection] = response.json()["error"]["message"].replace(collection, "NAME")
    assert messages["hr"] == messages["no-such-collection"]
    configs = {}
    for config in ("open", "no-such-config"):
        response = client.post("/v1/query", json={"question": SALARY, "config": config}, headers=support)
        assert response.status_code == 403, response.text
        configs[config] = response.json()["error"]["message"].replace(config, "NAME")
    assert configs["open"] == configs["no-such-config"]
    listed = client.get("/v1/configs", headers=support).json()["configs"]
    assert [c["name"] for c in listed] == ["default"]
    glob = {"Authorization": f"Bearer {keys['global-admin']}"}
    unknown = client.post("/v1/query", json={"question": SALARY, "config": "no-such-config"}, headers=glob)
    assert unknown.status_code == 403  # every key here is granted the default configuration only


@pytest.mark.parametrize(
    ("key_name", "answered_from"),
    [("support-query", "support"), ("hr-admin", "hr"), ("support-default-query", "default")],
)
def test_unnamed_collection_is_default_or_the_keys_only_one(
    client: TestClient, keys: dict[str, str], private_database: Database, key_name: str, answered_from: str
) -> None:
    status, cited = _answer(client, keys[key_name], "/v1/query", {"question": SALARY})
    assert status == 200 and collections_of(private_database, cited) == {answered_from}


def test_model_and_collection_must_agree(client: TestClient, keys: dict[str, str]) -> None:
    glob = {"Authorization": f"Bearer {keys['global-admin']}"}
    body = {"model": "default@hr", "collection": "support", "messages": MESSAGES}
    response = client.post("/v1/chat/completions", json=body, headers=glob)
    assert response.status_code == 422 and response.json()["error"]["param"] == "collection"
    for model in ("@hr", "default@"):
        bad = client.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES}, headers=glob)
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "model"


def test_the_pipeline_refuses_ungranted_collections_without_the_route(
    settings: Settings, private_database: Database
) -> None:
    """Defence in depth: the pipeline checks the grant itself, and every search must name one collection."""
    catalog = Catalog.load(settings.configs_dir, settings.prompts_dir, settings.config)
    with private_database.pool(2) as pool:
        pipeline = RagPipeline(settings, catalog, pool)
        with pytest.raises(AccessDenied):
            pipeline.prepare(Question(text=SALARY, collection="hr"), Grant.of(["support"], ["*"]))
        prepared = pipeline.prepare(Question(text=SALARY), Grant.of(["support"], ["*"]))
    assert prepared.question.collection == "support"
    for search in (search_sql.search_vector, search_sql.search_keyword, search_sql.term_statistics, search_hybrid):
        parameter = inspect.signature(search).parameters["collection"]
        assert parameter.default is inspect.Parameter.empty and parameter.kind is inspect.Parameter.KEYWORD_ONLY
    with private_database.connect() as conn, pytest.raises(TypeError):
        search_sql.search_keyword(conn, versions.active_index_version(conn), SALARY, 5, collection=None)  # type: ignore[arg-type]


def test_collections_answer_from_their_own_index_versions(
    database: Database, embedder: Embedder, tmp_path: Path
) -> None:
    """Two collections on different versions answer concurrently; switching one leaves the other alone."""
    root = team_folders(tmp_path / "teams")
    default = load_config("default", REPO / "configs")
    small = load_config("small", job_settings(database, tmp_path, [root]).configs_dir)
    assert SMALL_CHUNKS and default.config.index.version_hash() != small.config.index.version_hash()
    with database.connect() as conn:
        v1 = IngestPipeline(conn, default, embedder, collection="support").run(root / "support").index_version
        IngestPipeline(conn, default, embedder, collection="hr").run(root / "hr")
        report = IngestPipeline(conn, small, embedder, collection="hr").run(root / "hr", activate=True)
        v2 = report.index_version
        assert report.activated and versions.active_index_version(conn).id == v1.id  # type: ignore[union-attr]
        assert versions.collection_versions(conn) == {"hr": v2.id}
    settings = job_settings(database, tmp_path, [root], vllm_url=None)
    key = new_key(database, ["query", "admin"], collections=["hr", "support"])
    headers = {"Authorization": f"Bearer {key}"}

    def ask(collection: str) -> str:
        response = client.post("/v1/query", json={"question": SALARY, "collection": collection}, headers=headers)
        assert response.status_code == 200, response.text
        return str(response.json()["versions"]["index"])

    app = create_app(settings)
    with TestClient(app) as client, ThreadPoolExecutor(4) as pool:
        seen = list(pool.map(ask, ["hr", "support"] * 8))
        assert seen == [v2.name, v1.name] * 8
        # hr rolls back to the default while support keeps answering, always from v1.
        running = [pool.submit(ask, "support") for _ in range(8)]
        rollback = client.post(f"/v1/admin/indexes/{v1.id}/activate", params={"collection": "hr"}, headers=headers)
        assert rollback.status_code == 200 and rollback.json()["previous_id"] == v2.id, rollback.text
        assert {f.result() for f in running} == {v1.name}
        assert ask("hr") == v1.name
        with database.connect() as conn:
            assert versions.collection_versions(conn) == {}
        # Now v2 answers nothing and can be dropped; the default cannot.
        glob = {"Authorization": f"Bearer {new_key(database, ['admin'])}"}
        assert client.delete(f"/v1/admin/indexes/{v1.id}", headers=glob).status_code == 409
        assert client.delete(f"/v1/admin/indexes/{v2.id}", headers=glob).status_code == 200


def test_models_list_the_keys_configurations_with_the_official_client(
    client: TestClient, keys: dict[str, str], settings: Settings
) -> None:
    everything = new_key_for(settings, collections=["*"], configs=["*"])
    with serve_in_thread(client.app, lifespan=False) as url:  # type: ignore[arg-type]
        scoped = openai.OpenAI(base_url=f"{url}/v1", api_key=keys["support-query"])
        assert [m.id for m in scoped.models.list()] == ["default"]  # not "open": it was not granted
        models = openai.OpenAI(base_url=f"{url}/v1", api_key=everything).models.list()
        assert [m.id for m in models] == ["default", "open", "small"]
        reply = scoped.chat.completions.create(
            model="default",
            messages=MESSAGES,
            extra_body={"collection": "support"},  # type: ignore[arg-type]
        )
    assert reply.choices[0].message.content


def new_key_for(settings: Settings, **grant: list[str]) -> str:
    url = settings.database_url.get_secret_value()  # type: ignore[union-attr]
    return new_key(Database(url=url), ["query"], **grant)


@pytest.mark.parametrize(
    ("key_name", "visible"),
    [("global-admin", {"default", "hr", "support"}), ("support-default-query", {"default", "support"})],
)
def test_collections_and_their_documents_are_listed_within_the_grant(
    client: TestClient, keys: dict[str, str], key_name: str, visible: set[str]
) -> None:
    headers = {"Authorization": f"Bearer {keys[key_name]}"}
    listed = client.get("/v1/collections", headers=headers).json()["collections"]
    assert {c["name"] for c in listed} >= visible and {c["name"] for c in listed} <= visible | {"uploads"}
    support = next(c for c in listed if c["name"] == "support")
    assert support["documents"] == len(TEAM_DOCS["support"]) and support["index_version_id"] is not None

    first = client.get("/v1/collections/support/documents", params={"limit": 1}, headers=headers).json()
    rest = client.get(
        "/v1/collections/support/documents", params={"after": first["next_after"]}, headers=headers
    ).json()
    pages = first["documents"] + rest["documents"]
    assert sorted(d["source"] for d in pages) == sorted(TEAM_DOCS["support"]) and rest["next_after"] is None
    assert all(d["chunks"] and d["chunks"] > 0 for d in pages)
    assert client.get("/v1/collections/hr/documents", headers=headers).status_code == (200 if "hr" in visible else 403)


def test_an_unknown_collection_is_a_404_naming_the_keys_collections(client: TestClient, keys: dict[str, str]) -> None:
    headers = {"Authorization": f"Bearer {keys['global-admin']}"}
    version = client.get("/v1/admin/indexes", headers=headers).json()["indexes"][0]["id"]
    for response in (
        client.post("/v1/query", json={"question": SALARY, "collection": "suport"}, headers=headers),
        client.get("/v1/collections/suport/documents", headers=headers),
        client.post(f"/v1/admin/indexes/{version}/activate", params={"collection": "suport"}, headers=headers),
    ):
        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert error["param"] == "collection" and "'suport'" in error["message"] and "support" in error["message"]
