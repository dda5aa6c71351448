"""Every error ragops raises on purpose, in one tree.

Each class carries the HTTP status it answers with and, where waiting helps, a retry hint in
seconds; the API maps an error once (``status_of``) and the CLI prints its message. Internal
errors never reach a client: anything that is not a :class:`RagopsError` is a 500 "internal error".
"""

from __future__ import annotations

from datetime import UTC, datetime


class RagopsError(Exception):
    """Base of every error ragops raises on purpose (400 unless a subclass says otherwise)."""

    status: int = 400
    retry_after_s: int | None = None
    field: str | None = None  # the request field at fault, when there is one


def status_of(exc: BaseException) -> int:
    """The HTTP status of an error: its own for ours, 500 for anything else."""
    return exc.status if isinstance(exc, RagopsError) else 500


# ---------------------------------------------------------------- configuration and storage


class ConfigError(RagopsError):
    """A configuration or prompt file is missing or invalid (404 when a request names it)."""

    status = 404


class DatabaseError(RagopsError):
    """PostgreSQL is unreachable or answered with an unexpected error (503)."""

    status = 503
    retry_after_s = 2


class MigrationError(DatabaseError):
    """A migration cannot be applied, or an applied one was edited."""


class SourceError(RagopsError):
    """An ingest source does not exist or cannot be read (400)."""


class UploadTooLarge(SourceError):
    """An uploaded file is larger than the configured limit (413)."""

    status = 413


class UnsupportedFileType(SourceError):
    """An uploaded file's type is not one ragops ingests (415)."""

    status = 415


class IndexVersionError(RagopsError):
    """An index version does not exist or cannot be changed as asked (400)."""


class IndexModelMismatch(RagopsError):
    """An index version's vectors come from another embedding model than the configuration's (409).

    Searching them with that configuration's question vectors would return neighbours of noise:
    refused, rather than answered badly.
    """

    status = 409


class IngestBusy(RagopsError):
    """Another ingest is already writing to the same index version (409)."""

    status = 409


class EmbeddingError(RagopsError):
    """The embedding model could not be loaded or failed on a batch."""


class EvalInputError(RagopsError):
    """A dataset, report, gate file or configuration the eval harness cannot use (CLI exit 2)."""


# ---------------------------------------------------------------- jobs


class JobCancelled(RagopsError):
    """The job was cancelled while it ran."""


class JobLost(RagopsError):
    """Another worker took the job over (this worker was presumed dead)."""


class WorkerStopping(RagopsError):
    """The worker is shutting down; the job goes back to the queue."""


# ---------------------------------------------------------------- requests


class BadRequest(RagopsError):
    """The request is well-formed JSON but cannot be served as asked (422)."""

    status = 422

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(RagopsError):
    """A named configuration, prompt or resource does not exist (404)."""

    status = 404

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Conflict(RagopsError):
    """The resource is in a state that refuses the change, e.g. dropping the active index (409)."""

    status = 409


class NoActiveIndex(RagopsError):
    """Nothing has been ingested and activated yet (503)."""

    status = 503
    retry_after_s = 2


class AuthError(RagopsError):
    """Missing, malformed, unknown or revoked API key (401)."""

    status = 401


class ScopeError(RagopsError):
    """The key lacks the scope the route needs (403)."""

    status = 403


class AccessDenied(RagopsError):
    """The key is not granted the collection, configuration or action it names (403).

    Worded the same whether the named thing exists or not.
    """

    status = 403

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class BudgetExceeded(RagopsError):
    """The key's budget cannot cover this request's worst-case cost (429 until the period resets)."""

    status = 429

    def __init__(self, message: str, reset_at: datetime) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, int((reset_at - datetime.now(UTC)).total_seconds()))


class RateLimited(RagopsError):
    """Too many requests or tokens this minute (429 with Retry-After)."""

    status = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ClientGone(RagopsError):
    """The client closed the connection before its answer was generated: the rest of the work is skipped.

    Nobody reads the response; the status (nginx's 499) is for the ledger and the metrics.
    """

    status = 499


class PiiUnavailable(RagopsError):
    """The PII filter failed or timed out; the text was not let through unfiltered (503)."""

    status = 503
    retry_after_s = 2


class PiiBlocked(BadRequest):
    """The caller sent personal data of a type the policy blocks (422); names the types, never values."""

    def __init__(self, entity_types: list[str], counts: dict[str, dict[str, int]]) -> None:
        super().__init__(
            f"the request contains personal data this service does not accept: {', '.join(entity_types)}",
            field="question",
        )
        self.entity_types = entity_types
        self.counts = counts


# ---------------------------------------------------------------- generation


class GenerationError(RagopsError):
    """The generator failed after the request was accepted (502)."""

    status = 502


class PromptTooLong(GenerationError):
    """The model rejected the prompt as longer than its context (422)."""

    status = 422


class GeneratorUnavailable(GenerationError):
    """The model server is down, refusing or timing out (503 with Retry-After)."""

    status = 503
    retry_after_s = 5


class GenerationTimeout(GeneratorUnavailable):
    """The model server did not answer within the configured timeout (503)."""


class VllmMissing(RagopsError):
    """vLLM is not installed in the interpreter that should run it."""
