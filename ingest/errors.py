"""The errors ingest raises; callers map them to CLI messages or HTTP statuses once."""

from __future__ import annotations


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
