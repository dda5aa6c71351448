"""Errors of the eval harness; each means 'unusable input' (exit code 2) to the CLI."""

from __future__ import annotations

from ingest.errors import RagopsError


class EvalInputError(RagopsError):
    """A dataset, report, gate file or configuration the harness cannot use."""
