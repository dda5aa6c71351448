"""Token-aware recursive chunking that keeps each chunk's heading path and character span."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from langchain_text_splitters import RecursiveCharacterTextSplitter

from core.config import ChunkingSettings
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

    @property
    def embed_text(self) -> str:
        """What the embedder sees: the title and heading path give a short chunk its context."""
        head = SECTION_SEPARATOR.join(part for part in (self.title, self.section) if part)
        return f"{head}\n{self.text}" if head else self.text

    @property
    def content_hash(self) -> str:
        """sha256 of :attr:`embed_text`: equal hashes mean an existing vector can be reused."""
        return hashlib.sha256(self.embed_text.encode()).hexdigest()


class Chunker:
    """Splits documents into chunks of at most ``chunk_size`` tokens."""

    def __init__(self, settings: ChunkingSettings) -> None:
        self.settings = settings
        encoding = get_encoding(settings.encoding)

        def length(text: str) -> int:
            return len(encoding.encode(text, disallowed_special=()))

        self._length = length
        self._splitter = RecursiveCharacterTextSplitter(
            chunk_size=settings.chunk_size,
            chunk_overlap=settings.chunk_overlap,
            length_function=length,
            separators=_SEPARATORS,
            keep_separator="end",
            add_start_index=True,
            strip_whitespace=True,
        )

    def split(self, document: Document) -> list[Chunk]:
        """The document's chunks in order; an empty document has none."""
        chunks: list[Chunk] = []
        for piece in self._splitter.create_documents([document.text]):
            text = piece.page_content
            start = int(piece.metadata.get("start_index", -1))
            if start < 0:  # not found verbatim (cannot happen with strip-only edits): best effort
                start = max(document.text.find(text), 0)
            chunks.append(
                Chunk(
                    ordinal=len(chunks),
                    text=text,
                    token_count=self._length(text),
                    char_start=start,
                    char_end=start + len(text),
                    section=SECTION_SEPARATOR.join(document.section_at(start)),
                    title=document.title,
                )
            )
        return chunks
