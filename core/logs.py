"""Process logging: one stderr handler on the root logger, at the level the process asks for."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def configure_logging(level: str | int) -> None:
    """Log to stderr at ``level`` and above (a handler is added only if the root logger has none)."""
    logging.basicConfig(format=LOG_FORMAT)
    logging.getLogger().setLevel(level)
