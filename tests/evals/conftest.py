"""One eval database for the session: the sample index is built once and reused by every eval test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from core.embedding import Embedder
from core.runtime import Runtime
from core.settings import Settings
from tests.conftest import REPO, clone_template


@pytest.fixture(scope="session")
def runtime(pg_server: str, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    database = clone_template(pg_server, "evalgate")
    settings = Settings(
        database_url=SecretStr(database.url), data_dir=tmp_path_factory.mktemp("eval"),
        configs_dir=REPO / "configs", prompts_dir=REPO / "prompts",
    )  # fmt: skip
    with database.connect() as conn:
        yield Runtime(settings=settings, database=database, conn=conn)
