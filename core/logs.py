"""Process logging: one stderr handler on the root logger, at the level the process asks for."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
# Loggers of ragops' own packages. Below WARNING the level applies to them only: other libraries'
# INFO lines (the embedded PostgreSQL's initdb output, model loading) are not ragops' to report.
OWN_LOGGERS = ("ragops", "core", "app", "ingest", "evals")


def configure_logging(level: str | int) -> None:
    """Log to stderr: ragops' loggers from ``level``, other libraries' from ``level`` or WARNING, the higher."""
    number = level if isinstance(level, int) else logging.getLevelNamesMapping()[level.upper()]
    logging.basicConfig(format=LOG_FORMAT)  # a handler, unless the root logger has one already
    logging.getLogger().setLevel(max(number, logging.WARNING))
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(number)
