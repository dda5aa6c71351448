"""What the RAG pipeline hands around: questions, citations, prepared requests and answers.

Plain data, shared by the pipeline, the API, metering and the eval harness, so that none of
them needs to import the pipeline to read an answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from app.generators.base import GenerationRequest, Generator
from app.pii import PiiSession
from core.config import LoadedConfig, RetrievalMode
from core.errors import BadRequest
from core.prompts import Prompt
from ingest.versions import IndexVersion

Role = Literal["system", "user", "assistant"]


def json_nodes(value: Any) -> Iterator[Any]:
    """Every value, key and item inside a parsed JSON value (a loop, not recursion: bodies may nest deeply)."""
    items = [value]
    while items:
        item = items.pop()
        yield item
        if isinstance(item, dict):
            items.extend(item.keys())
            items.extend(item.values())
        elif isinstance(item, list):
            items.extend(item)


@dataclass(frozen=True)
class Turn:
    """One chat message."""

    role: Role
    content: str


@dataclass(frozen=True)
class Question:
    """A question, or the last user turn of a chat, with retrieval options."""

    text: str
    history: tuple[Turn, ...] = ()
    config: str | None = None
    top_k: int | None = None
    filters: dict[str, Any] | None = None
    collection: str | None = None
    index_version: int | None = None  # None: the active version (the eval harness pins its own)
    mode: RetrievalMode | None = None  # None: the configuration's retrieval mode
    prompt: str | None = None  # None: the configuration's prompt (a rollout's candidate may name another)

    @classmethod
    def from_turns(cls, turns: Sequence[Turn], **options: Any) -> Question:
        """The last turn of a conversation as the question, the earlier ones as its history."""
        if not turns or turns[-1].role != "user":
            raise BadRequest("the last message must have role 'user'", field="messages")
        return cls(text=turns[-1].content, history=tuple(turns[:-1]), **options)


@dataclass(frozen=True)
class Citation:
    """A retrieved chunk the answer may cite as ``[n]``."""

    n: int
    document_id: int
    source: str
    title: str
    section: str
    chunk_id: int
    score: float
    snippet: str


@dataclass(frozen=True)
class Versions:
    """Exactly what produced an answer."""

    config: str
    prompt: str
    index: str
    model: str
    git_commit: str | None = None
    rollout: int | None = None  # the rollout this answer took part in, and its side (live or candidate)
    rollout_side: str | None = None


@dataclass
class Timings:
    """Milliseconds per stage."""

    embed_ms: float = 0.0
    retrieve_ms: float = 0.0
    generate_ms: float = 0.0
    ttft_ms: float | None = None
    total_ms: float = 0.0
    pii_ms: float = 0.0  # question and context filtering, before generation
    pii_answer_ms: float = 0.0  # output filtering (already inside generate_ms)


@dataclass
class Prepared:
    """A question ready for generation: retrieval is done, the prompt rendered."""

    question: Question
    config: LoadedConfig
    prompt: Prompt
    index: IndexVersion
    citations: list[Citation]
    request: GenerationRequest
    generator: Generator
    embedding_tokens: int
    timings: Timings
    pii: PiiSession
    started: float = field(default_factory=time.perf_counter)
    # Set when the model first answers (it has read the prompt): from then on its prompt tokens are spent.
    generation_started: bool = False
    # Raw model output so far, in memory only: what a failed or abandoned stream is billed for,
    # including text the PII filter was still holding back.
    generated: list[str] = field(default_factory=list)
    # The question's vector (None in keyword mode) and every retrieved chunk's score, best first: what drift
    # monitoring records (no text).
    query_vector: np.ndarray | None = None
    hit_scores: list[float] = field(default_factory=list)
    # The text of each citation's chunk as the model read it ([n] is context[n - 1]), in memory only: drift
    # monitoring measures the answer's support share on it.
    context: list[str] = field(default_factory=list)
    rollout_id: int | None = None  # set when a rollout routed the request (app.rollouts.routing)
    rollout_side: str | None = None
    rollout: Any = None  # the routing's Assignment (app.rollouts.routing), for queueing the question

    @property
    def embedding_model(self) -> str:
        """The model that embedded the question (and prices its embedding tokens)."""
        return self.config.config.index.embedding.model

    @property
    def generator_model(self) -> str:
        """The model that will answer."""
        return self.generator.model_for(self.request)

    def versions(self, model: str) -> Versions:
        """Versions record, with the model that actually answered."""
        return Versions(
            config=self.config.version,
            prompt=self.prompt.version,
            index=self.index.name,
            model=model,
            git_commit=self.config.git_commit,
            rollout=self.rollout_id,
            rollout_side=self.rollout_side,
        )


@dataclass(frozen=True)
class AnswerUsage:
    """Tokens of one answer."""

    prompt_tokens: int
    completion_tokens: int
    embedding_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Answer:
    """A complete answer."""

    text: str
    citations: list[Citation]
    usage: AnswerUsage
    versions: Versions
    timings: Timings
    finish_reason: str = "stop"
    pii: dict[str, dict[str, int]] = field(default_factory=dict)  # entities filtered, per stage and type


@dataclass(frozen=True)
class AnswerDelta:
    """Streamed answer text."""

    text: str


@dataclass(frozen=True)
class AnswerDone:
    """The end of a streamed answer."""

    answer: Answer
