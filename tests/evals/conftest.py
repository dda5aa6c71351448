"""One eval database for the session: the sample index is built once and reused by every eval test."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from pydantic import SecretStr

from ingest.db import Database
from ingest.embedding import Embedder
from ingest.runtime import Runtime
from ingest.settings import Settings
from tests.conftest import REPO, TEMPLATE_DB


@pytest.fixture(scope="session")
def runtime(pg_server: str, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS evalgate WITH (FORCE)")
        admin.execute(f"CREATE DATABASE evalgate TEMPLATE {TEMPLATE_DB}")
    database = Database(url=make_conninfo(pg_server, dbname="evalgate"))
    settings = Settings(
        database_url=SecretStr(database.url), data_dir=tmp_path_factory.mktemp("eval"),
        configs_dir=REPO / "configs", prompts_dir=REPO / "prompts",
    )  # fmt: skip
    with database.connect() as conn:
        yield Runtime(settings=settings, database=database, conn=conn)
