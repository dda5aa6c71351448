"""Chunking: token limits (ours and the embedder's), overlap, spans that point back into the text, heading paths."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from core.config import ChunkingSettings
from core.embedding import Embedder
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


# --- the embedder's own limit (MiniLM reads 256 word pieces, special tokens included) ----------

_RANDOM = random.Random(16)
# Each cl100k token of these is more than 1.28 word pieces: 200 cl100k tokens are more than MiniLM reads.
ACCOUNT_NUMBERS = "# Ledger\n\n" + "\n\n".join(
    f"Batch {i}: " + " ".join(str(_RANDOM.randrange(10**11, 10**12)) for _ in range(40)) for i in range(4)
)
RUSSIAN = "# Устав\n\n" + " ".join(
    f"Статья {i}. Федерация является демократическим правовым государством с республиканской формой правления."
    for i in range(30)
)
# Plain English that fits 256 cl100k tokens, but not with its title and heading path in front.
DEEP_HEADINGS = "# Operations Handbook\n\n## Incident Response Procedures\n\n### Escalation Paths\n\n" + " ".join(
    f"Step {i}: the on-call engineer records the alert, checks the dashboards and pages the owning team."
    for i in range(40)
)


@pytest.mark.parametrize(
    ("text", "size"),
    [(ACCOUNT_NUMBERS, 200), (RUSSIAN, 200), (DEEP_HEADINGS, 256)],
    ids=["numbers", "russian", "headings"],
)
def test_chunks_fit_what_the_embedder_reads(embedder: Embedder, text: str, size: int) -> None:
    """No chunk, as embedded (title and headings in front), is longer than the model reads in its own tokens."""
    doc = _document(text)
    settings = ChunkingSettings(chunk_size=size, chunk_overlap=30)
    limit = embedder.max_tokens
    assert limit == 256
    unfitted = Chunker(settings).split(doc)
    assert embedder.count_truncated([c.embed_text for c in unfitted]) > 0  # the case this guards against
    chunks = Chunker(settings, embedder).split(doc)
    assert len(chunks) > len(unfitted)
    assert max(embedder.count_tokens([c.embed_text for c in chunks])) <= limit
    assert embedder.count_truncated([c.embed_text for c in chunks]) == 0
    for i, chunk in enumerate(chunks):
        assert chunk.ordinal == i and chunk.head_chars is None
        assert chunk.token_count == count_tokens(chunk.text) <= size
        assert doc.text[chunk.char_start : chunk.char_end] == chunk.text
    covered = " ".join(c.text for c in chunks)
    assert all(word in covered for word in doc.text.split())


def test_chunks_the_embedder_reads_whole_are_left_as_they_were(embedder: Embedder) -> None:
    """Fitting splits only what overflows: elsewhere chunks (and so stored vectors) stay the same."""
    settings = ChunkingSettings(chunk_size=64, chunk_overlap=16)
    plain, fitted = Chunker(settings).split(_document()), Chunker(settings, embedder).split(_document())
    assert fitted == plain


def test_a_title_too_long_for_the_embedder_is_cut_in_what_it_reads(embedder: Embedder) -> None:
    """A thousand-word title would leave the text no room: the model reads half its limit of it; rows keep it all."""
    title = " ".join(f"Zygomorphic{i}" for i in range(1000))
    doc = _document(f"# {title[:250]}\n\nA short body about backups. " * 3)
    doc = dataclasses.replace(doc, title=title)
    chunks = Chunker(ChunkingSettings(chunk_size=64, chunk_overlap=0), embedder).split(doc)
    assert chunks and all(c.title == title for c in chunks)
    assert all(c.head_chars is not None and c.embed_text.endswith(c.text) for c in chunks)
    counts = embedder.count_tokens([c.embed_text for c in chunks])
    assert max(counts) <= embedder.max_tokens
    assert embedder.count_tokens([chunks[0].head])[0] <= embedder.max_tokens // 2
