"""One database with the bundled samples ingested, and one app serving it, for the API tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.keys import create_key
from app.main import create_app
from core.config import load_config
from core.db import Database
from core.embedding import Embedder
from core.settings import Settings
from ingest.pipeline import IngestPipeline
from tests.conftest import REPO, clone_template
from tests.utils.accounts import PRICED

SAMPLES = REPO / "samples"


SAMPLES_TEMPLATE = "samples_template"


@pytest.fixture(scope="session")
def samples_template(pg_server: str, embedder: Embedder) -> str:
    """A database with the bundled samples ingested with configs/default.yaml, once per session.

    Nothing stays connected to it, so every database that needs the samples is a copy of it
    (CREATE DATABASE ... TEMPLATE): the samples are embedded and analyzed once, not per module.
    """
    database = clone_template(pg_server, SAMPLES_TEMPLATE)
    with database.connect() as conn:
        IngestPipeline(conn, load_config("default", REPO / "configs"), embedder).run(SAMPLES)
    return SAMPLES_TEMPLATE


def serve_samples(pg_server: str, samples_template: str, name: str) -> Database:
    """Database ``name`` holding the bundled samples (a copy of the session's samples template)."""
    return clone_template(pg_server, name, template=samples_template)


def index_state(database: Database) -> list[tuple[Any, ...]]:
    """What a read-only API test must leave as it found: documents, index versions, queued jobs."""
    with database.connect() as conn:
        return [
            *conn.execute("SELECT 'document', id, content_hash FROM documents ORDER BY id").fetchall(),
            *conn.execute("SELECT 'index', id, status, is_active FROM index_versions ORDER BY id").fetchall(),
            *conn.execute("SELECT 'own index', collection, index_version_id FROM collection_indexes").fetchall(),
            *conn.execute("SELECT 'job', id, kind FROM jobs ORDER BY id").fetchall(),
        ]


@pytest.fixture(scope="session")
def served_database(pg_server: str, samples_template: str) -> Iterator[Database]:
    """The samples, shared by every API test that only reads them; its index must end as it began.

    Tests that delete documents, queue jobs or activate versions take ``private_database``:
    otherwise what the later tests see would depend on the order the files run in.
    """
    database = serve_samples(pg_server, samples_template, "served")
    before = index_state(database)
    yield database
    assert index_state(database) == before, "a test changed the shared index: give it private_database"


@pytest.fixture(scope="module")
def private_database(pg_server: str, samples_template: str, request: pytest.FixtureRequest) -> Iterator[Database]:
    """The samples in a database of the test module's own, for tests that change the index or queue jobs."""
    name = "private_" + request.module.__name__.rsplit(".", 1)[-1]
    yield serve_samples(pg_server, samples_template, name)
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def make_settings(database: Database, tmp: Path, **overrides: object) -> Settings:
    """Settings for an app on ``database`` with the repository's configs and prompts.

    A full build asked to activate would run the whole eval gate first (evals' activation check):
    app tests run without it unless they ask (tests/ingest/test_activation_gate.py, test_rollout_gate).
    """
    values: dict[str, object] = {
        "database_url": SecretStr(database.url),
        "data_dir": tmp,
        "configs_dir": REPO / "configs",
        "prompts_dir": REPO / "prompts",
        "activation_checks": False,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def api_key(served_database: Database) -> str:
    """A key with both scopes and no limits, for the API tests."""
    with served_database.connect() as conn:
        return create_key(conn, "tests", ["query", "admin"], collections=["*"], configs=["*"])[1]


def authed(client: TestClient, key: str) -> TestClient:
    """Send ``key`` as the bearer token on every request."""
    client.headers["Authorization"] = f"Bearer {key}"
    return client


@pytest.fixture(scope="session")
def client(served_database: Database, api_key: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The API over the samples, extractive generator (no vLLM URL)."""
    app = create_app(make_settings(served_database, tmp_path_factory.mktemp("app"), vllm_url=None))
    with authed(TestClient(app), api_key) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def priced_configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's configs with a pricing file that makes extractive answers cost money."""
    folder = tmp_path_factory.mktemp("priced")
    shutil.copy(REPO / "configs" / "default.yaml", folder / "default.yaml")
    (folder / "pricing.yaml").write_text(PRICED)
    return folder


@pytest.fixture(scope="module")
def priced_app(served_database: Database, priced_configs: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Billing tests send one key's requests many at a time: no per-key concurrency limit (test_abuse.py has it)."""
    settings = make_settings(
        served_database, tmp_path_factory.mktemp("pa"), configs_dir=priced_configs, key_max_concurrent=0
    )
    return create_app(settings)


@pytest.fixture(scope="module")
def priced(priced_app: Any, api_key: str) -> Iterator[TestClient]:
    with authed(TestClient(priced_app), api_key) as client:
        yield client
