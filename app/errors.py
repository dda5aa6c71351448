"""Errors of the serving layer. Each maps to one HTTP status in ``app/main.py``."""

from __future__ import annotations

from ingest.errors import RagopsError


class BadRequest(RagopsError):
    """The request is well-formed JSON but cannot be served as asked (422)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(RagopsError):
    """A named configuration, prompt or resource does not exist (404)."""


class NoActiveIndex(RagopsError):
    """Nothing has been ingested and activated yet (503)."""


class GenerationError(RagopsError):
    """The generator failed after the request was accepted (502)."""


class PromptTooLong(GenerationError):
    """The model rejected the prompt as longer than its context (422)."""


class GeneratorUnavailable(GenerationError):
    """The model server is down, refusing or timing out (503 with Retry-After)."""

    retry_after_s = 5


class GenerationTimeout(GeneratorUnavailable):
    """The model server did not answer within the configured timeout (503)."""
