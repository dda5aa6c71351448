"""The extractive generator: answers with the retrieved sentences that best match the question.

Deterministic and honest: it quotes the documents with citations, and says the documents do
not contain the answer when no sentence scores above the configured threshold. It is the
default when no vLLM server is configured, not a test stand-in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

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
from ingest.loaders import SECTION_SEPARATOR

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])|\n+")
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
_STOPWORDS = frozenset(
    "a an and are as at be but by can do does did for from has have how i if in into is it its me my of on or "
    "our should so than that the their them then there these they this to was we what when where which who "
    "whom why will with would you your about after before any all each many much more most other some such "
    "only own same very just also".split()
)
MODEL_NAME = "extractive"

_LIST_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\d{1,2}[.)])\s+")
_TABLE_RULE = re.compile(r"^[\s|:-]+$")
_EMPHASIS = re.compile(r"\*\*|__|`")
_HEADING_MAX_WORDS = 10
_SHORT_ITEM_WORDS = 4


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


@dataclass(frozen=True)
class Candidate:
    """A quotable sentence, list item or table row, and the text it is scored with.

    A list item or table row means little alone (``Year 1 (your first 12 months): 15 days``): it is
    scored together with the line that introduces its list, or its table's header row, and the
    heading above it, so a question about PTO finds the bullet under the PTO allowance heading.
    """

    quote: str
    scored: str
    n: int


def _is_heading(line: str) -> bool:
    """A heading left as a line of chunk text: short, and not ending like a sentence or a lead-in."""
    return len(line.split()) <= _HEADING_MAX_WORDS and not line.endswith((".", "!", "?", ":", ";", ","))


def _table_cells(line: str) -> list[str]:
    """The cells of a table row as loaders write it (``a | b | c``, with or without outer pipes)."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def passage_candidates(text: str, n: int, section: str = "") -> list[Candidate]:
    """The candidates of one passage: prose sentences, and list items and table rows read with their context.

    Headings and lead-in lines (ending in ``:``) are never quoted on their own; they are the context
    of the items below them. ``section`` is the chunk's heading path, the context of its first lines.
    """
    heading = section.split(SECTION_SEPARATOR)[-1].strip()
    lead = ""
    header: list[str] = []
    out: list[Candidate] = []
    for raw in text.splitlines():
        line = _EMPHASIS.sub("", raw).strip()
        if not line:
            header = []  # a blank line ends a table; a list keeps its lead-in across blank lines
            continue
        if "|" in line and len(_table_cells(line)) >= 2:
            if _TABLE_RULE.match(line):
                continue
            cells = _table_cells(line)
            if not header:
                header = cells
                continue
            pairs = "; ".join(f"{h}: {c}" for h, c in zip(header, cells, strict=False) if c)
            quote = pairs if len(header) == len(cells) else " | ".join(cells)
            out.append(Candidate(quote, f"{heading}: {quote}" if heading else quote, n))
            continue
        header = []
        item = _LIST_ITEM.match(line)
        if item:
            body = line[item.end() :].strip()
            if body.isupper():
                heading, lead = body, ""
                continue
            if len(body) >= 3:
                context = lead or heading
                scored = f"{context} {body}" if context else body
                # "1 minute" quoted alone answers nothing: a short item is quoted with its lead-in.
                quote = f"{lead} {body}" if lead and len(body.split()) < _SHORT_ITEM_WORDS else body
                out.append(Candidate(quote, scored, n))
            continue
        if _is_heading(line):
            heading, lead = line, ""
            continue
        sentences = split_sentences(line)
        lead = ""
        if line.endswith(":"):  # "The delays after each attempt are:" introduces the list below it
            lead = sentences.pop() if sentences else line
        out.extend(Candidate(s, s, n) for s in sentences)
    return out


class ExtractiveGenerator(Generator):
    """Scores sentences by embedding similarity plus word overlap; quotes the best ones."""

    name = "extractive"
    # Quotes retrieved sentences: the prompt, model, max_tokens and temperature never reach it.
    reads = frozenset({"generation.extractive"})

    def __init__(self, embedder: Embedder, settings: ExtractiveSettings) -> None:
        self.embedder = embedder
        self.settings = settings

    def candidates(self, request: GenerationRequest) -> list[Candidate]:
        """Every distinct quotable unit of the passages, in passage order."""
        seen: set[str] = set()
        out = []
        for passage in request.passages:
            for candidate in passage_candidates(passage.hit.text, passage.n, passage.hit.section):
                if candidate.quote not in seen:
                    seen.add(candidate.quote)
                    out.append(candidate)
        return out

    def select(self, request: GenerationRequest) -> list[tuple[float, str, int]]:
        """(score, sentence, citation number) of the sentences that make the answer, best first."""
        candidates = self.candidates(request)
        if not candidates:
            return []
        vectors = self.embedder.embed_batch([request.question] + [c.scored for c in candidates])
        similarity = vectors[1:] @ vectors[0]
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
