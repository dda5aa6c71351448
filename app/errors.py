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


class Conflict(RagopsError):
    """The resource is in a state that refuses the change, e.g. dropping the active index (409)."""


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


class PiiBlocked(BadRequest):
    """The caller sent personal data of a type the policy blocks (422); names the types, never values."""

    def __init__(self, entity_types: list[str], counts: dict[str, dict[str, int]]) -> None:
        super().__init__(
            f"the request contains personal data this service does not accept: {', '.join(entity_types)}",
            field="question",
        )
        self.entity_types = entity_types
        self.counts = counts


def http_status(exc: BaseException) -> int:
    """The HTTP status of an error: the one mapping, used by handlers and the ledger."""
    from app.accounting import BudgetExceeded, RateLimited
    from app.keys import AuthError, ScopeError
    from ingest.errors import (
        ConfigError,
        DatabaseError,
        IndexModelMismatch,
        IngestBusy,
        PiiUnavailable,
        UnsupportedFileType,
        UploadTooLarge,
    )

    # Most specific first: the first matching class decides.
    table: list[tuple[type[BaseException], int]] = [
        (AuthError, 401),
        (ScopeError, 403),
        (BudgetExceeded, 429),
        (RateLimited, 429),
        (PromptTooLong, 422),
        (PiiUnavailable, 503),
        (GeneratorUnavailable, 503),
        (GenerationError, 502),
        (BadRequest, 422),
        (NotFound, 404),
        (ConfigError, 404),
        (Conflict, 409),
        (IngestBusy, 409),
        (IndexModelMismatch, 409),
        (UploadTooLarge, 413),
        (UnsupportedFileType, 415),
        (NoActiveIndex, 503),
        (DatabaseError, 503),
        (RagopsError, 400),
    ]
    return next((code for kind, code in table if isinstance(exc, kind)), 500)
