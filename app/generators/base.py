"""The generator seam: one abstract method, ``stream``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from app.search_sql import ChunkHit
from core.config import LoadedConfig
from core.tokens import count_tokens

NOT_FOUND_ANSWER = "The documents do not contain this information."
# ChatML wraps each message in a few tokens; counted so that estimates are not low.
_TOKENS_PER_MESSAGE = 4


# What a configuration feeds a generator besides the question and the retrieved passages: the
# prompt, and these generation settings. Each generator says which of them it reads, so the eval
# gate can tell a change it measured from one the answering generator never saw.
GENERATION_INPUTS = ("prompt", "generation.model", "generation.max_tokens", "generation.temperature",
                     "generation.extractive")  # fmt: skip


def generation_inputs(config: LoadedConfig, prompt_version: str) -> dict[str, Any]:
    """The value of every :data:`GENERATION_INPUTS` entry for a configuration (the prompt by its version)."""
    g = config.config.generation
    return {
        "prompt": prompt_version,
        "generation.model": g.model,
        "generation.max_tokens": g.max_tokens,
        "generation.temperature": g.temperature,
        "generation.extractive": g.extractive.model_dump(),
    }


def count_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """Tokens of a rendered chat prompt by tiktoken (used before, or instead of, the model's count)."""
    return sum(count_tokens(m["content"]) + _TOKENS_PER_MESSAGE for m in messages)


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk as the generator sees it, labelled ``[n]`` for citation."""

    n: int
    hit: ChunkHit


@dataclass(frozen=True)
class RareTerms:
    """The question's lexemes held by few of the collection's chunks (or none), as the index stems them."""

    lexemes: frozenset[str]
    text_search_config: str  # the index's PostgreSQL text search configuration: which stemmer made them


@dataclass(frozen=True)
class GenerationRequest:
    """Everything a generator may use: the rendered prompt, and the passages behind it."""

    question: str  # the standalone question: a chat's short follow-up with the user turn before it
    messages: list[dict[str, str]]
    passages: list[Passage]
    model: str
    max_tokens: int
    temperature: float = 0.0
    # The question's words that few of the collection's chunks hold, when the generator asked for them
    # (:attr:`Generator.rare_term_share`); None: not known.
    rare_terms: RareTerms | None = None


@dataclass(frozen=True)
class Usage:
    """Tokens as the model counted them (or tiktoken where the model does not say)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True)
class Delta:
    """A piece of answer text."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The end of a generation."""

    usage: Usage
    model: str
    finish_reason: str = "stop"


class Generator(ABC):
    """Turns a request into answer text."""

    name: str
    # The GENERATION_INPUTS whose change can change this generator's answers (an unknown one: all).
    reads: ClassVar[frozenset[str]] = frozenset(GENERATION_INPUTS)

    @abstractmethod
    def stream(self, request: GenerationRequest) -> Iterator[Delta | Finished]:
        """Yield deltas, then exactly one :class:`Finished`; raise a GenerationError on failure."""

    @property
    def reads_sentence_vectors(self) -> bool:
        """Whether passages should carry their chunks' stored sentence vectors (``ChunkHit.sentence_vectors``)."""
        return False

    @property
    def rare_term_share(self) -> float:
        """Above 0: requests carry the question's lexemes held by fewer than this share of the chunks."""
        return 0.0

    def model_for(self, request: GenerationRequest) -> str:
        """The model name that will answer ``request`` (what the ledger and prices key on)."""
        return request.model

    def model_for_config(self, config: LoadedConfig) -> str:
        """The model that answers for a configuration (checked against the price list at start-up)."""
        return config.config.generation.model

    def check_ready(self, timeout_s: float) -> None:  # noqa: B027 - optional hook, ready by default
        """Raise if the generator cannot answer right now (readiness probe)."""
