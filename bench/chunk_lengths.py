"""Chunks the embedder would cut short, before and after chunks were fitted to its own tokens.

MiniLM reads at most 256 word pieces ([CLS] and [SEP] included); a chunk of 200 cl100k tokens,
with its title and heading path in front (what is embedded), can be longer. For the bundled
samples and each shared dataset, every document is chunked twice with the same settings: by the
rule before (cl100k tokens only, ``Chunker(settings)``) and by ingest's rule (also fitted to the
embedder, ``Chunker(settings, embedder)``), and each chunk's embedded text is counted with the
embedder's own tokenizer (:meth:`core.embedding.Embedder.count_tokens`, what it compares with
its limit when it counts truncated texts). Nothing is embedded: this measures lengths, not vectors.

Two settings: configs/default.yaml (200/30 tokens) and the ingest benchmark's 256/32, where a
256-token chunk overflows far more often. The datasets are read where they lie (``RAGOPS_DATASETS``,
default ../shared/datasets), never copied into the repository.

    python -m bench chunks
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.common import DATASETS, ROOT, write_result
from bench.ingest_bench import CHUNK_OVERLAP, CHUNK_SIZE
from core.config import ChunkingSettings, load_config
from core.embedding import Embedder, get_embedder
from ingest.chunking import Chunker
from ingest.loaders import Document, load_file
from ingest.sources import scan_source

CORPORA = {
    "samples": ROOT / "samples",
    "wikiqa": DATASETS / "wikiqa" / "corpus.jsonl",
    "xquad_en": DATASETS / "xquad_en" / "corpus.jsonl",
    "pubmedqa_docs": DATASETS / "pubmedqa" / "corpus_docs.jsonl",
    "pubmedqa_passages": DATASETS / "pubmedqa" / "corpus_passages.jsonl",
}


def load_documents(path: Path) -> list[Document]:
    """Every document of a folder or file, loaded as ingest loads it."""
    files = scan_source(path)
    return [r.document for f in files for r in load_file(f.path, f.source) if r.document is not None]


def measure(documents: list[Document], chunker: Chunker, embedder: Embedder) -> dict[str, Any]:
    """Chunks, and how many of their embedded texts (and of the documents) are longer than the embedder reads."""
    t0 = time.perf_counter()
    chunked = [chunker.split(document) for document in documents]
    seconds = time.perf_counter() - t0
    limit = embedder.max_tokens or 0
    lengths = [embedder.count_tokens([chunk.embed_text for chunk in chunks]) for chunks in chunked]
    return {
        "chunks": sum(len(chunks) for chunks in chunked),
        "over_limit": sum(1 for counts in lengths for n in counts if n > limit),
        "documents_over_limit": sum(1 for counts in lengths if any(n > limit for n in counts)),
        "max_tokens": max((n for counts in lengths for n in counts), default=0),
        "max_cl100k_tokens": max((chunk.token_count for chunks in chunked for chunk in chunks), default=0),
        "chunking_seconds": round(seconds, 3),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench chunks")
    parser.parse_args(argv)
    default = load_config("default", ROOT / "configs").config.index
    embedder = get_embedder(default.embedding)
    settings = {
        "default": default.chunking,
        "ingest_bench": ChunkingSettings(chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP),
    }
    result: dict[str, Any] = {
        "embedder": {"model": embedder.model_name, "backend": embedder.backend, "max_tokens": embedder.max_tokens},
        "settings": {name: s.model_dump() for name, s in settings.items()},
        "corpora": {},
    }
    for corpus, path in CORPORA.items():
        if not path.exists():
            raise SystemExit(f"{path} is missing (set RAGOPS_DATASETS to the shared datasets folder)")
        documents = load_documents(path)
        rows: dict[str, Any] = {"documents": len(documents)}
        for name, chunking in settings.items():
            rows[name] = {
                "before": measure(documents, Chunker(chunking), embedder),
                "after": measure(documents, Chunker(chunking, embedder), embedder),
            }
        result["corpora"][corpus] = rows
        print(corpus, json.dumps(rows))
    path = write_result("chunks", result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
