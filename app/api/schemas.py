"""HTTP request and response models: the API's contract, separate from the pipeline's types."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from app.answers import Answer, Citation, json_nodes
from core.config import MAX_TOP_K, RetrievalMode
from core.errors import BadRequest

MAX_QUESTION_CHARS = 20_000
BIGINT_MAX = 2**63 - 1
# A row id in a URL: beyond PostgreSQL's bigint it is a 422, not a database error.
RowId = Annotated[int, Path(ge=-BIGINT_MAX - 1, le=BIGINT_MAX, description="An id (a 64-bit integer).")]
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL: refused with a 422 naming the field


def plain_json(value: Any) -> Any:
    """Refuse what JSON parsing lets through but PostgreSQL's jsonb and UTF-8 cannot hold (422, not 500)."""
    for item in json_nodes(value):
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("must not contain NaN or Infinity")
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                raise ValueError("must not contain lone surrogates (\\ud800-\\udfff)") from None
    return value


Filters = Annotated[dict[str, Any] | None, AfterValidator(plain_json)]
FILTERS_DESCRIPTION = "Metadata the chunks' documents must contain (JSON containment)."


class Strict(BaseModel):
    """Unknown fields are an error, so a typo never silently changes behaviour; values are not coerced.

    Strict types: ``"top_k": true`` or ``"stream": "yes"`` is a 422, as the published schema says,
    not a quietly converted 1 or True.
    """

    model_config = ConfigDict(extra="forbid", strict=True)


class RetrievalOptions(Strict):
    """Options shared by /v1/query and /v1/chat."""

    config: str | None = Field(default=None, description="Configuration name (configs/NAME.yaml); default if unset.")
    top_k: int | None = Field(
        default=None, ge=1, le=MAX_TOP_K, description="Chunks to retrieve; the config's if unset."
    )
    filters: Filters = Field(default=None, description=FILTERS_DESCRIPTION)
    collection: str | None = Field(
        default=None, max_length=200, pattern=NO_NUL, description="Search this collection; unset = 'default'."
    )
    mode: RetrievalMode | None = Field(
        default=None, description="Retrieval mode for this request (hybrid, vector, keyword); the config's if unset."
    )
    stream: bool = Field(default=False, description="Server-Sent Events: citations, deltas, usage, done.")


class QueryRequest(RetrievalOptions):
    """One question."""

    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS, pattern=NO_NUL)


class ChatMessage(Strict):
    """One turn."""

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_QUESTION_CHARS, pattern=NO_NUL)


class ChatRequest(RetrievalOptions):
    """A conversation; the last message is the user's question."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=100)


class CitationOut(BaseModel):
    """A retrieved chunk the answer may cite as [n]."""

    n: int
    document_id: int
    source: str
    title: str
    section: str
    chunk_id: int
    score: float
    snippet: str

    @classmethod
    def of(cls, citation: Citation) -> CitationOut:
        """From the pipeline's type."""
        return cls(**citation.__dict__)


class UsageOut(BaseModel):
    """Tokens of one answer."""

    prompt_tokens: int
    completion_tokens: int
    embedding_tokens: int
    cached_tokens: int = 0
    total_tokens: int
    cost_usd: float = Field(description="Priced from recorded usage with configs/pricing.yaml.")

    def openai(self) -> dict[str, object]:
        """The same usage in OpenAI's shape (cached tokens under ``prompt_tokens_details``)."""
        return {
            "cost_usd": self.cost_usd,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


class VersionsOut(BaseModel):
    """What produced the answer."""

    config: str
    prompt: str
    index: str
    model: str
    git_commit: str | None = None
    rollout: int | None = Field(default=None, description="The rollout this answer took part in, if any.")
    rollout_side: str | None = Field(default=None, description="live or candidate (the rollout's canary side).")


class TimingsOut(BaseModel):
    """Milliseconds per stage."""

    embed_ms: float
    retrieve_ms: float
    generate_ms: float
    ttft_ms: float | None
    total_ms: float
    pii_ms: float = Field(default=0.0, description="PII filtering of the question and context (0 when off).")
    pii_answer_ms: float = Field(default=0.0, description="PII filtering of the answer (part of generate_ms).")


PiiCounts = dict[str, dict[str, int]]
PII_DESCRIPTION = "Personal data filtered, per stage (question, context, answer) and entity type: counts, no values."


class QueryResponse(BaseModel):
    """An answer with its evidence and provenance."""

    answer: str
    citations: list[CitationOut]
    usage: UsageOut
    versions: VersionsOut
    timings: TimingsOut
    pii: PiiCounts = Field(default_factory=dict, description=PII_DESCRIPTION)
    request_id: str

    @classmethod
    def of(cls, answer: Answer, request_id: str, cost_usd: float) -> QueryResponse:
        """From the pipeline's type."""
        return cls(
            answer=answer.text,
            citations=[CitationOut.of(c) for c in answer.citations],
            usage=usage_out(answer, cost_usd),
            versions=VersionsOut(**answer.versions.__dict__),
            timings=TimingsOut(**answer.timings.__dict__),
            pii=answer.pii,
            request_id=request_id,
        )


def usage_out(answer: Answer, cost_usd: float) -> UsageOut:
    """The usage block of a response."""
    u = answer.usage
    return UsageOut(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        embedding_tokens=u.embedding_tokens,
        cached_tokens=u.cached_tokens,
        total_tokens=u.total_tokens,
        cost_usd=round(cost_usd, 9),
    )


class ErrorBody(BaseModel):
    """OpenAI-style error detail."""

    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    """Every error response: ``{"error": {...}}``."""

    error: ErrorBody


class OpenAIMessage(BaseModel):
    """An OpenAI chat message (content may be text parts)."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Annotated[str, Field(pattern=NO_NUL)] | list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _bounded_plain_text(self) -> OpenAIMessage:
        plain_json(self.content)
        if len(self.text()) > MAX_QUESTION_CHARS:
            raise ValueError(f"content is longer than {MAX_QUESTION_CHARS} characters")
        return self

    def text(self) -> str:
        """The message's text, joining text parts."""
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatCompletionRequest(BaseModel):
    """OpenAI ``/v1/chat/completions``; ``model`` names a ragops configuration. Unknown OpenAI fields are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str = Field(
        min_length=1, max_length=200, pattern=NO_NUL, description="A configuration, or 'config@collection'."
    )
    messages: list[OpenAIMessage] = Field(min_length=1, max_length=100)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    top_k: int | None = Field(default=None, ge=1, le=MAX_TOP_K)
    filters: Filters = Field(default=None, description=FILTERS_DESCRIPTION)
    collection: str | None = Field(
        default=None, max_length=200, pattern=NO_NUL, description="Search this collection (OpenAI clients: extra_body)."
    )

    def target(self) -> tuple[str, str | None]:
        """The configuration and collection ``model`` and ``collection`` name (they must agree when both do)."""
        config, at, collection = self.model.partition("@")
        if not at:
            return self.model, self.collection
        if not config or not collection:
            raise BadRequest("model must be a configuration or 'config@collection'", field="model")
        if self.collection is not None and self.collection != collection:
            raise BadRequest(
                f"model names the collection {collection!r} but collection is {self.collection!r}", field="collection"
            )
        return config, collection


class ConfigOut(BaseModel):
    """A configuration and the prompt it uses."""

    name: str
    version: str
    description: str
    prompt: str
    prompt_version: str
    retrieval_mode: str
    generation_backend: str
    git_commit: str | None


class ConfigsResponse(BaseModel):
    """Every configuration and prompt version."""

    default: str
    configs: list[ConfigOut]
    prompts: dict[str, str]
