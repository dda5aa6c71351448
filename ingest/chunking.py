"""Token-aware recursive chunking that keeps each chunk's heading path and character span.

Two budgets: the configured one (``chunk_size`` tokens of the configured tiktoken encoding) and,
when an embedder is given, the embedder's own input limit in its own tokens. A chunk whose
embedded text (title and heading path included) would be longer than the model reads is split
further at the largest unit that fits, so that the model never cuts a chunk short: MiniLM reads
256 word pieces, and a 200-token cl100k chunk of numbers, rare words or non-English text is longer.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from langchain_text_splitters import RecursiveCharacterTextSplitter

from core.config import ChunkingSettings
from core.embedding import Embedder
from core.tokens import get_encoding
from ingest.loaders import SECTION_SEPARATOR, Document

# Paragraphs, then lines, then sentences, then words: split at the largest unit that fits.
_SEPARATORS = ["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", ""]


@dataclass(frozen=True)
class Chunk:
    """One piece of a document, as stored and embedded."""

    ordinal: int
    text: str
    token_count: int
    char_start: int
    char_end: int
    section: str
    title: str
    # How many characters of the title and heading path the embedder sees, when all of them would
    # leave too little room for the text (a very long title or heading); None: all of them.
    head_chars: int | None = None

    @property
    def head(self) -> str:
        """The title and heading path, as prepended to the embedded text."""
        head = SECTION_SEPARATOR.join(part for part in (self.title, self.section) if part)
        return head if self.head_chars is None else head[: self.head_chars]

    @property
    def embed_text(self) -> str:
        """What the embedder sees: the title and heading path give a short chunk its context."""
        head = self.head
        return f"{head}\n{self.text}" if head else self.text

    @property
    def content_hash(self) -> str:
        """sha256 of :attr:`embed_text`: equal hashes mean an existing vector can be reused."""
        return hashlib.sha256(self.embed_text.encode()).hexdigest()


class Chunker:
    """Splits documents into chunks of at most ``chunk_size`` tokens that ``embedder`` reads whole.

    ``embedder``: the model the chunks are embedded with; None, or one that knows no input limit:
    the configured budget alone.
    """

    def __init__(self, settings: ChunkingSettings, embedder: Embedder | None = None) -> None:
        self.settings = settings
        encoding = get_encoding(settings.encoding)

        def length(text: str) -> int:
            return len(encoding.encode(text, disallowed_special=()))

        self._length = length
        self._splitter = _splitter(settings.chunk_size, settings.chunk_overlap, length)
        self._fit = _EmbedderFit(self, embedder, embedder.max_tokens) if embedder and embedder.max_tokens else None

    def split(self, document: Document) -> list[Chunk]:
        """The document's chunks in order; an empty document has none."""
        chunks: list[Chunk] = []
        for piece in self._splitter.create_documents([document.text]):
            text = piece.page_content
            start = int(piece.metadata.get("start_index", -1))
            if start < 0:  # not found verbatim (cannot happen with strip-only edits): best effort
                start = max(document.text.find(text), 0)
            chunks.append(self.chunk(document, text, start))
        if self._fit is not None:
            chunks = self._fit.fitted(document, chunks)
        return [dataclasses.replace(chunk, ordinal=i) for i, chunk in enumerate(chunks)]

    def chunk(self, document: Document, text: str, start: int) -> Chunk:
        """The chunk of ``document`` holding ``text`` from character ``start`` (its ordinal set by :meth:`split`)."""
        return Chunk(
            ordinal=0,
            text=text,
            token_count=self._length(text),
            char_start=start,
            char_end=start + len(text),
            section=SECTION_SEPARATOR.join(document.section_at(start)),
            title=document.title,
        )


def _splitter(size: int, overlap: int, length: Callable[[str], int]) -> RecursiveCharacterTextSplitter:
    return RecursiveCharacterTextSplitter(
        chunk_size=size,
        chunk_overlap=overlap,
        length_function=length,
        separators=_SEPARATORS,
        keep_separator="end",
        add_start_index=True,
        strip_whitespace=True,
    )


class _EmbedderFit:
    """Splits the chunks an embedder would cut short until it reads each whole, counted in its own tokens."""

    def __init__(self, chunker: Chunker, embedder: Embedder, limit: int) -> None:
        self.chunker, self.embedder, self.limit = chunker, embedder, limit
        self._specials = self.count("")  # [CLS] and [SEP] for MiniLM: once per input, not per piece
        # head -> characters of it kept: a long title or heading path is measured once, not once per chunk
        self._head_cuts: dict[str, int] = {}

    def count(self, text: str) -> int:
        """``text``'s length to the embedder, special tokens included."""
        return self.embedder.count_tokens([text])[0]

    def fitted(self, document: Document, chunks: list[Chunk]) -> list[Chunk]:
        """The chunks the embedder reads whole as they are, the others split; one tokenizer pass decides."""
        counts = self.embedder.count_tokens([chunk.embed_text for chunk in chunks])
        if all(n <= self.limit for n in counts):
            return chunks
        fitted: list[Chunk] = []
        for chunk, n in zip(chunks, counts, strict=True):
            fitted.extend([chunk] if n <= self.limit else self._split(document, chunk))
        return fitted

    def _split(self, document: Document, chunk: Chunk) -> list[Chunk]:
        """``chunk`` in pieces read whole: at the largest separator that fits, else cut at the last token that does."""
        chunk = self._with_short_head(chunk)
        if self.count(chunk.embed_text) <= self.limit:
            return [chunk]
        budget = max(self.limit - self.count(f"{chunk.head}\n" if chunk.head else ""), 1)
        overlap = min(self.chunker.settings.chunk_overlap, budget // 4)
        splitter = _splitter(budget, overlap, lambda text: self.count(text) - self._specials)
        pieces: list[tuple[str, int]] = []
        for split in splitter.create_documents([chunk.text]):
            at = int(split.metadata.get("start_index", -1))
            if at < 0:  # the splitter lost it (it steps back by the overlap in characters): after the last one
                after = pieces[-1][1] - chunk.char_start + 1 if pieces else 0
                at = max(chunk.text.find(split.page_content, after), 0)
            pieces.append((split.page_content, chunk.char_start + at))
        if len(pieces) < 2 or any(len(text) >= len(chunk.text) for text, _ in pieces):
            pieces = self._cut(chunk)  # no separator inside (one long "word"): cut by tokens
        fitted: list[Chunk] = []
        for text, start in pieces:
            piece = self.chunker.chunk(document, text, start)
            if piece.section == chunk.section:  # the same head: cut the same way
                piece = dataclasses.replace(piece, head_chars=chunk.head_chars)
            # Counts of parts need not add up to the count of the whole, and a piece may start under another
            # heading: split again what still does not fit. Every piece is shorter than its chunk, so this ends
            # (a lone character that cannot fit is kept, and the embedder counts it as cut).
            fits = self.count(piece.embed_text) <= self.limit or len(text) >= len(chunk.text)
            fitted.extend([piece] if fits else self._split(document, piece))
        return fitted

    def _with_short_head(self, chunk: Chunk) -> Chunk:
        """``chunk`` with its head cut to half the embedder's limit when longer: its text keeps room of its own."""
        head = chunk.head
        if head not in self._head_cuts:
            self._head_cuts[head] = self._prefix_within(head, "", self.limit // 2)
        kept = self._head_cuts[head]
        return chunk if kept == len(head) else dataclasses.replace(chunk, head_chars=kept)

    def _cut(self, chunk: Chunk) -> list[tuple[str, int]]:
        """``chunk``'s text in consecutive pieces, the longest read whole beside its head (at least a character)."""
        head, text = f"{chunk.head}\n" if chunk.head else "", chunk.text
        pieces: list[tuple[str, int]] = []
        offset = 0
        while offset < len(text):
            end = offset + max(self._prefix_within(text[offset:], head, self.limit), 1)
            space = text.rfind(" ", offset, end)
            if end < len(text) and space > offset + (end - offset) // 2:  # end at a word when one is near
                end = space + 1
            piece = text[offset:end]
            if piece.strip():
                pieces.append((piece.strip(), chunk.char_start + offset + len(piece) - len(piece.lstrip())))
            offset = end
        return pieces

    def _prefix_within(self, text: str, before: str, limit: int) -> int:
        """Characters of the longest prefix of ``text`` that, after ``before``, counts at most ``limit`` tokens."""
        if self.count(before + text) <= limit:
            return len(text)
        return _longest_prefix(len(text), lambda n: self.count(before + text[:n]) <= limit)


def _longest_prefix(length: int, fits: Callable[[int], bool]) -> int:
    """The largest ``n <= length`` with ``fits(n)``, by bisection (token counts grow with the prefix); 0 if none."""
    lo, hi = 0, length
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
