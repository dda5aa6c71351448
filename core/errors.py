"""The errors ingest raises; callers map them to CLI messages or HTTP statuses once."""

from __future__ import annotations

from datetime import UTC, datetime


class RagopsError(Exception):
    """Base of every error ragops raises on purpose."""


class ConfigError(RagopsError):
    """A configuration or prompt file is missing or invalid."""


class DatabaseError(RagopsError):
    """PostgreSQL is unreachable or answered with an unexpected error."""


class MigrationError(DatabaseError):
    """A migration cannot be applied, or an applied one was edited."""


class SourceError(RagopsError):
    """An ingest source does not exist or cannot be read."""


class IndexVersionError(RagopsError):
    """An index version does not exist or cannot be changed as asked."""


class IndexModelMismatch(RagopsError):
    """An index version's vectors come from another embedding model than the configuration's (409).

    Searching them with that configuration's question vectors would return neighbours of noise:
    refused, rather than answered badly.
    """


class IngestBusy(RagopsError):
    """Another ingest is already writing to the same index version."""


class EmbeddingError(RagopsError):
    """The embedding model could not be loaded or failed on a batch."""


class PiiUnavailable(RagopsError):
    """The PII filter failed or timed out; the text was not let through unfiltered (503)."""

    retry_after_s = 2


class UploadTooLarge(SourceError):
    """An uploaded file is larger than the configured limit (413)."""


class UnsupportedFileType(SourceError):
    """An uploaded file's type is not one ragops ingests (415)."""


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
    from core.errors import (
        AuthError,
        BudgetExceeded,
        ConfigError,
        DatabaseError,
        IndexModelMismatch,
        IngestBusy,
        PiiUnavailable,
        RateLimited,
        ScopeError,
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


class EvalInputError(RagopsError):
    """A dataset, report, gate file or configuration the harness cannot use."""


class JobCancelled(RagopsError):
    """The job was cancelled while it ran."""


class JobLost(RagopsError):
    """Another worker took the job over (this worker was presumed dead)."""


class WorkerStopping(RagopsError):
    """The worker is shutting down; the job goes back to the queue."""


class BudgetExceeded(RagopsError):
    """The key's budget cannot cover this request's worst-case cost (429)."""

    def __init__(self, message: str, reset_at: datetime) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, int((reset_at - datetime.now(UTC)).total_seconds()))


class RateLimited(RagopsError):
    """Too many requests or tokens this minute (429 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AuthError(RagopsError):
    """Missing, malformed, unknown or revoked API key (401)."""


class ScopeError(RagopsError):
    """The key lacks the scope the route needs (403)."""
