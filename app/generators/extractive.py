"""The extractive generator: answers with the retrieved sentences that best match the question.

Deterministic and honest: it quotes the documents with citations, and says the documents do
not contain the answer when no sentence scores above the configured threshold. It is the
default when no vLLM server is configured, not a test stand-in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

from app.generators.base import (
    NOT_FOUND_ANSWER,
    Delta,
    Finished,
    GenerationRequest,
    Generator,
    Usage,
    count_prompt_tokens,
)
from core.config import ExtractiveSettings, LoadedConfig
from core.embedding import Embedder
from core.tokens import count_tokens

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])|\n+")
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
_STOPWORDS = frozenset(
    "a an and are as at be but by can do does did for from has have how i if in into is it its me my of on or "
    "our should so than that the their them then there these they this to was we what when where which who "
    "whom why will with would you your about after before any all each many much more most other some such "
    "only own same very just also".split()
)
MODEL_NAME = "extractive"


def split_sentences(text: str) -> list[str]:
    """Sentences (or list items / lines) of a passage, trimmed, without fragments."""
    return [s.strip() for s in _SENTENCE_END.split(text) if len(s.strip()) >= 12]


def content_words(text: str) -> set[str]:
    """Lower-cased words minus stopwords, with a naive plural fold."""
    words = set()
    for word in _WORD.findall(text.lower()):
        if word in _STOPWORDS:
            continue
        words.add(word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word)
    return words


def word_weights(question_words: set[str], sentence_words: list[set[str]]) -> dict[str, float]:
    """Inverse frequency of each question word among the candidate sentences.

    A word found in nearly every retrieved sentence (the company's name) is no evidence that a
    sentence answers the question; a word found in none (``wi-fi``) is likely its subject. With
    plain overlap, a question naming the company scored well against any sentence naming it.
    """
    n = len(sentence_words)
    return {x: math.log((n + 1) / (sum(x in words for words in sentence_words) + 0.5)) for x in question_words}


class ExtractiveGenerator(Generator):
    """Scores sentences by embedding similarity plus word overlap; quotes the best ones."""

    name = "extractive"
    # Quotes retrieved sentences: the prompt, model, max_tokens and temperature never reach it.
    reads = frozenset({"generation.extractive"})

    def __init__(self, embedder: Embedder, settings: ExtractiveSettings) -> None:
        self.embedder = embedder
        self.settings = settings

    def select(self, request: GenerationRequest) -> list[tuple[float, str, int]]:
        """(score, sentence, citation number) of the sentences that make the answer, best first."""
        candidates: list[tuple[str, int]] = []
        seen: set[str] = set()
        for passage in request.passages:
            for sentence in split_sentences(passage.hit.text):
                if sentence not in seen:
                    seen.add(sentence)
                    candidates.append((sentence, passage.n))
        if not candidates:
            return []
        vectors = self.embedder.embed_batch([request.question] + [s for s, _ in candidates])
        similarity = vectors[1:] @ vectors[0]
        sentence_words = [content_words(s) for s, _ in candidates]
        weights = word_weights(content_words(request.question), sentence_words)
        total = sum(weights.values())
        w = self.settings.lexical_weight
        scored = []
        for (sentence, n), sim, words in zip(candidates, similarity, sentence_words, strict=True):
            overlap = sum(weights[x] for x in weights.keys() & words) / total if total else 0.0
            scored.append(((1 - w) * float(sim) + w * overlap, sentence, n))
        scored.sort(key=lambda item: (-item[0], item[2], item[1]))
        best = [item for item in scored if item[0] >= self.settings.min_relevance]
        return best[: self.settings.max_sentences]

    def stream(self, request: GenerationRequest) -> Iterator[Delta | Finished]:
        """Yield the answer word by word (so clients exercise the same streaming path as with vLLM)."""
        chosen = self.select(request)
        answer = " ".join(f"{sentence} [{n}]" for _, sentence, n in chosen) if chosen else NOT_FOUND_ANSWER
        for piece in re.findall(r"\S+\s*", answer):
            yield Delta(piece)
        # Counted like an LLM prompt, so the worst-case reservation equals the settled cost.
        yield Finished(
            usage=Usage(prompt_tokens=count_prompt_tokens(request.messages), completion_tokens=count_tokens(answer)),
            model=MODEL_NAME,
        )

    def model_for(self, request: GenerationRequest) -> str:
        """Always ``extractive``."""
        return MODEL_NAME

    def model_for_config(self, config: LoadedConfig) -> str:
        """Always ``extractive``."""
        return MODEL_NAME
