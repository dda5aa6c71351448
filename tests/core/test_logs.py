"""RAGOPS_LOG_LEVEL: read in any case, refused when it names no level, applied to the root logger."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from core.logs import configure_logging
from core.settings import Settings


@pytest.fixture
def root_level() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


def test_log_level_is_read_in_any_case_and_refused_when_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGOPS_LOG_LEVEL", "debug")
    assert Settings().log_level == "DEBUG"
    monkeypatch.setenv("RAGOPS_LOG_LEVEL", "verbose")
    with pytest.raises(ValidationError, match="log_level"):
        Settings()


@pytest.mark.usefixtures("root_level")
def test_configure_logging_sets_the_root_level() -> None:
    configure_logging("ERROR")
    assert logging.getLogger().level == logging.ERROR
    assert logging.getLogger("ingest.worker").getEffectiveLevel() == logging.ERROR
