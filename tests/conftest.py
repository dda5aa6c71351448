"""Session-wide real services: one embedded PostgreSQL + pgvector and one embedding model.

Each test that touches the database gets its own database, cloned from a migrated template
(``CREATE DATABASE ... TEMPLATE``, a file copy), so tests never see each other's rows.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as in serve and worker: see core.runtime.limit_blas_threads

from threadpoolctl import threadpool_limits

from core.config import EmbeddingSettings
from core.db import Database, EmbeddedPostgres
from core.embedding import Embedder, get_embedder
from core.migrations import migrate
from core.settings import get_settings
from tests.utils.tiny_llama import write_tiny_llama
from tests.utils.vllm_server import VllmServer, require_vllm_python

# In case a plugin loaded numpy before the variable above was set.
threadpool_limits(limits=int(os.environ["OPENBLAS_NUM_THREADS"]), user_api="blas")

REPO = Path(__file__).resolve().parent.parent
TEMPLATE_DB = "ragops_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded PostgreSQL for the whole session; yields its admin URI."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "pgdata")
    uri = server.start()
    try:
        with psycopg.connect(uri, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
            admin.execute(f"CREATE DATABASE {TEMPLATE_DB}")
        with Database(url=make_conninfo(uri, dbname=TEMPLATE_DB)).connect() as conn:
            migrate(conn)
        yield uri
    finally:
        server.stop()


def clone_template(pg_server: str, name: str, template: str = TEMPLATE_DB) -> Database:
    """Database ``name``, made anew from a template (the migrated one unless named; a previous ``name`` is dropped)."""
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    return Database(url=make_conninfo(pg_server, dbname=name))


@pytest.fixture
def database(pg_server: str) -> Iterator[Database]:
    """A fresh, migrated database for one test."""
    name = f"test_{os.getpid()}_{next(_counter)}"
    try:
        yield clone_template(pg_server, name)
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def conn(database: Database) -> Iterator[psycopg.Connection]:
    """A connection to the test's database."""
    with database.connect() as connection:
        yield connection


@pytest.fixture(scope="session")
def embedder(models_dir: Path) -> Embedder:
    """The real default embedding model (all-MiniLM-L6-v2 from its wheel, default backend), loaded once."""
    return get_embedder(EmbeddingSettings(), cache_root=models_dir)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """A real vLLM (CPU build) serving a tiny random-weight Llama as ``ragops-llm``, shared by the session.

    Skipped when the vLLM venv is missing, unless RAGOPS_REQUIRE_VLLM=1 (``./dev.sh test``), then failed.
    """
    python = require_vllm_python()
    model_dir = write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    server = VllmServer(model_dir, python=python, served_model_name="ragops-llm", max_model_len=2048)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export cache for the session (and the CLI processes its tests start): exporting takes seconds."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, models_dir: Path) -> Iterator[None]:
    """No test reads the developer's .env or RAGOPS_* variables, or the repo's .ragops folder."""
    for key in list(os.environ):
        if key.startswith("RAGOPS_") or key == "DATABASE_URL":
            monkeypatch.delenv(key)
    monkeypatch.setenv("RAGOPS_DATA_DIR", str(tmp_path / ".ragops"))
    monkeypatch.setenv("RAGOPS_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("RAGOPS_CONFIGS_DIR", str(REPO / "configs"))
    monkeypatch.setenv("RAGOPS_PROMPTS_DIR", str(REPO / "prompts"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
