"""Chunking: token limits, overlap, spans that point back into the text, heading paths."""

from __future__ import annotations

import itertools

import pytest

from core.config import ChunkingSettings
from core.tokens import count_tokens
from ingest.chunking import Chunker
from ingest.loaders import load_bytes

LONG_MD = "# Handbook\n\n" + "\n\n".join(
    f"## Part {i}\n\n" + " ".join(f"Sentence {i}.{j} explains rule number {j} of part {i}." for j in range(12))
    for i in range(6)
)


def _document(text: str = LONG_MD):  # type: ignore[no-untyped-def]
    result = next(iter(load_bytes("handbook.md", text.encode())))
    assert result.document is not None
    return result.document


@pytest.mark.parametrize(("size", "overlap"), [(32, 0), (64, 16), (200, 30)])
def test_chunks_respect_the_token_limit_and_point_into_the_text(size: int, overlap: int) -> None:
    doc = _document()
    chunks = Chunker(ChunkingSettings(chunk_size=size, chunk_overlap=overlap)).split(doc)
    assert len(chunks) > 1
    for i, chunk in enumerate(chunks):
        assert chunk.ordinal == i
        assert chunk.token_count == count_tokens(chunk.text) <= size
        assert doc.text[chunk.char_start : chunk.char_end] == chunk.text
    # every word of the document lands in some chunk
    covered = " ".join(c.text for c in chunks)
    assert all(word in covered for word in doc.text.split())


def test_overlap_repeats_text_between_neighbours() -> None:
    chunks = Chunker(ChunkingSettings(chunk_size=48, chunk_overlap=16)).split(_document())
    assert any(a.char_end > b.char_start for a, b in itertools.pairwise(chunks))


def test_chunks_carry_the_heading_path_and_title() -> None:
    chunks = Chunker(ChunkingSettings(chunk_size=64, chunk_overlap=0)).split(_document())
    part3 = [c for c in chunks if "Sentence 3.5" in c.text]
    assert part3
    assert part3[0].section == "Handbook > Part 3"
    assert part3[0].title == "Handbook"
    assert part3[0].embed_text.startswith("Handbook > Handbook > Part 3\n")


def test_special_token_text_is_plain_text() -> None:
    doc = _document("# T\n\nThe string <|endoftext|> is just text here.")
    chunks = Chunker(ChunkingSettings(chunk_size=64, chunk_overlap=0)).split(doc)
    assert "<|endoftext|>" in chunks[0].text


def test_same_text_same_hash_different_text_different_hash() -> None:
    chunker = Chunker(ChunkingSettings(chunk_size=64, chunk_overlap=0))
    first = chunker.split(_document())
    again = chunker.split(_document())
    assert [c.content_hash for c in first] == [c.content_hash for c in again]
    assert len({c.content_hash for c in first}) == len(first)
