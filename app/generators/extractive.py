"""The extractive generator: answers with the retrieved sentences that best match the question.

Deterministic and honest: it quotes the documents with citations, and says the documents do
not contain the answer when no sentence scores above the configured threshold. It is the
default when no vLLM server is configured, not a test stand-in.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from collections.abc import Callable, Iterator

import numpy as np
import snowballstemmer

from app.generators.base import (
    NOT_FOUND_ANSWER,
    Delta,
    Finished,
    GenerationRequest,
    Generator,
    RareTerms,
    Usage,
    count_prompt_tokens,
)
from core.config import ExtractiveSettings, LoadedConfig
from core.embedding import Embedder
from core.tokens import count_tokens
from ingest.sentences import Candidate, passage_candidates

log = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
_STOPWORDS = frozenset(
    "a an and are as at be but by can do does did for from has have how i if in into is it its me my of on or "
    "our should so than that the their them then there these they this to was we what when where which who "
    "whom why will with would you your about after before any all each many much more most other some such "
    "only own same very just also".split()
)
MODEL_NAME = "extractive"


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


# Words as PostgreSQL's default text search parser splits them: hyphenated words whole and in parts,
# decimals ("5.3") whole; an apostrophe ends a word ("freight's" -> "freight").
_LEXEME_WORD = re.compile(r"\d+(?:\.\d+)+|[^\W_]+(?:-[^\W_]+)*")


@functools.lru_cache(maxsize=64)
def _stemmer(text_search_config: str) -> Callable[[str], str] | None:
    """The Snowball stemmer of a PostgreSQL text search configuration of the same name (``simple``: none)."""
    if text_search_config == "simple":
        return str
    if text_search_config not in snowballstemmer.algorithms():
        return None
    return functools.lru_cache(maxsize=65536)(snowballstemmer.stemmer(text_search_config).stemWord)


def lexemes(text: str, text_search_config: str) -> set[str] | None:
    """The lexemes PostgreSQL's ``to_tsvector`` would read in ``text`` (stop words aside); None: unknown stemmer."""
    stem = _stemmer(text_search_config)
    if stem is None:
        return None
    out = set()
    for word in _LEXEME_WORD.findall(text.lower()):
        out.add(stem(word))
        if "-" in word:
            out.update(stem(part) for part in word.split("-"))
    return out


def carries_rare_term(texts: list[str], rare: RareTerms) -> bool:
    """Whether any of ``texts`` holds one of the question's rare lexemes (True when that cannot be told)."""
    for text in texts:
        found = lexemes(text, rare.text_search_config)
        if found is None or found & rare.lexemes:
            return True
    return False


class ExtractiveGenerator(Generator):
    """Scores sentences by embedding similarity plus word overlap; quotes the best ones."""

    name = "extractive"
    # Quotes retrieved sentences: the prompt, model, max_tokens and temperature never reach it.
    reads = frozenset({"generation.extractive"})

    def __init__(self, embedder: Embedder, settings: ExtractiveSettings) -> None:
        self.embedder = embedder
        self.settings = settings
        # Benchmarks only (bench/extractive.py): ignore stored vectors and embed every candidate per request.
        self.reembed_candidates = False
        # Candidates scored with the vector pooled at ingest, and those embedded per request (no vector stored,
        # or the passage's candidates did not match the stored ones).
        self.vectors_stored = 0
        self.vectors_embedded = 0
        self._counts_lock = threading.Lock()

    @property
    def reads_sentence_vectors(self) -> bool:
        """True: candidates are scored with the sentence vectors pooled at ingest."""
        return not self.reembed_candidates

    @property
    def rare_term_share(self) -> float:
        """The configuration's ``rare_term_share``: answers must quote one of the question's rare words."""
        return self.settings.rare_term_share

    def candidates(self, request: GenerationRequest) -> list[Candidate]:
        """Every distinct quotable unit of the passages, in passage order."""
        return self.candidates_with_vectors(request)[0]

    def candidates_with_vectors(self, request: GenerationRequest) -> tuple[list[Candidate], list[np.ndarray | None]]:
        """:meth:`candidates`, and each one's vector stored at ingest (None: to be embedded).

        Stored vectors are taken by candidate ordinal when the passage (PII-filtered) gives as many
        candidates as its chunk did at ingest; a zero row is a sentence the model did not read.
        """
        seen: set[str] = set()
        out: list[Candidate] = []
        vectors: list[np.ndarray | None] = []
        for passage in request.passages:
            candidates = passage_candidates(passage.hit.text, passage.n, passage.hit.section)
            stored = passage.hit.sentence_vectors
            if stored is not None and len(stored) != len(candidates):
                log.warning(
                    "chunk %d: %d candidates but %d stored sentence vectors; embedding its candidates",
                    passage.hit.chunk_id, len(candidates), len(stored),
                )  # fmt: skip
                stored = None
            for i, candidate in enumerate(candidates):
                if candidate.quote not in seen:
                    seen.add(candidate.quote)
                    out.append(candidate)
                    row = None if stored is None else stored[i]
                    vectors.append(row if row is not None and row.any() else None)
        return out, vectors

    def similarities(self, question: str, candidates: list[Candidate], stored: list[np.ndarray | None]) -> np.ndarray:
        """Cosine of each candidate to the question, from the vectors pooled at ingest where there are some.

        A pooled vector has read its sentence inside the whole chunk, so it ranks well but scores less
        sharply than the sentence embedded alone: the ``rescore`` candidates nearest the question are
        embedded now and get their exact cosine, and no other candidate may outscore the lowest of them
        on similarity. Candidates without a stored vector are embedded too. The question's vector is the
        one retrieval computed (the embedder's query cache).
        """
        if self.reembed_candidates:
            vectors = self.embedder.embed_batch([question] + [c.scored for c in candidates])
            return vectors[1:] @ vectors[0]
        query = self.embedder.embed_query(question)
        similarity = np.zeros(len(candidates), dtype=np.float32)
        pooled = [i for i, vector in enumerate(stored) if vector is not None]
        if pooled:
            similarity[pooled] = np.stack([vector for vector in stored if vector is not None]) @ query
        nearest = sorted(pooled, key=lambda i: -similarity[i])[: self.settings.rescore]
        missing = [i for i, vector in enumerate(stored) if vector is None]
        embed = missing + nearest
        if embed:
            similarity[embed] = self.embedder.embed_batch([candidates[i].scored for i in embed]) @ query
        rest = sorted(set(pooled) - set(nearest))
        if nearest and rest:
            similarity[rest] = np.minimum(similarity[rest], similarity[nearest].min())
        if missing:
            log.debug("embedded %d of %d candidates without stored sentence vectors", len(missing), len(candidates))
        with self._counts_lock:
            self.vectors_stored += len(pooled)
            self.vectors_embedded += len(missing)
        return similarity

    def select(self, request: GenerationRequest) -> list[tuple[float, str, int]]:
        """(score, sentence, citation number) of the sentences that make the answer, best first."""
        candidates, stored = self.candidates_with_vectors(request)
        if not candidates:
            return []
        similarity = self.similarities(request.question, candidates, stored)
        sentence_words = [content_words(c.scored) for c in candidates]
        question_words = content_words(request.question)
        weights = word_weights(question_words, sentence_words)
        total = sum(weights.values())
        w = self.settings.lexical_weight
        scored = []
        for candidate, sim, words in zip(candidates, similarity, sentence_words, strict=True):
            overlap = sum(weights[x] for x in weights.keys() & words) / total if total else 0.0
            scored.append(((1 - w) * float(sim) + w * overlap, candidate.quote, candidate.n))
        scored.sort(key=lambda item: (-item[0], item[2], item[1]))
        best = [item for item in scored if item[0] >= self.settings.min_relevance][: self.settings.max_sentences]
        if best and request.rare_terms and request.rare_terms.lexemes:
            # Sentences about the company in general score well against any question naming it: an answer
            # must hold what is specific to the question (or sit under a heading that does).
            sections = {p.n: p.hit.section for p in request.passages}
            read = {c.quote: c.scored for c in candidates}
            texts = [f"{sections.get(n, '')}\n{read[quote]}" for _, quote, n in best]
            if not carries_rare_term(texts, request.rare_terms):
                return []
        return best

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
