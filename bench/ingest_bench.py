"""Ingest throughput vs embed-only and vs LangChain's PGVector, incremental re-ingest, HNSW recall.

Everything runs in one process on one embedded PostgreSQL with the same model weights, so the
numbers compare like with like: ratios matter more than absolute seconds on a shared machine.
On the same chunks it also measures the embedders side by side (torch in float32; the default,
i.e. torch in bfloat16 where the CPU has it, at the default batch size and at 64; ONNX Runtime at
every core and at one thread; each one's cosine to float32 per chunk) and the query vector cache.
ragops ingests with its default embedder; LangChain embeds with sentence-transformers on torch in
float32, what its users run.

    python -m bench ingest [--docs 1000] [--skip-langchain]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from app import search_sql
from bench.common import DATASETS, bench_server, fresh_database, read_jsonl, write_result
from core.access import DEFAULT_COLLECTION
from core.config import LoadedConfig, RagConfig
from core.embedding import Embedder, OnnxEmbedder, get_embedder
from core.settings import get_settings
from ingest import versions
from ingest.chunking import Chunker
from ingest.loaders import load_file
from ingest.pipeline import IngestPipeline

CHUNK_SIZE, CHUNK_OVERLAP = 256, 32


def bench_config(*, pii_analysis: bool = False) -> LoadedConfig:
    """The configuration under test: 256-token chunks, the default embedder.

    PII analysis at ingest is off unless asked: the comparisons with LangChain are of the same work
    (chunk, embed, store); what the analysis adds is measured on its own (:func:`pii_analysis_cost`).
    """
    config = RagConfig.model_validate(
        {
            "index": {"chunking": {"chunk_size": CHUNK_SIZE, "chunk_overlap": CHUNK_OVERLAP}},
            "pii": {"analyze_at_ingest": pii_analysis},
        }
    )
    return LoadedConfig(name="bench", path=Path("bench.yaml"), sha256="b" * 64, git_commit=None, config=config)


def write_corpus(records: list[dict[str, Any]], folder: Path) -> Path:
    """The BEIR corpus as one JSONL file, as a user would ingest it."""
    path = folder / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def chunk_texts(path: Path, config: LoadedConfig, embedder: Embedder) -> list[str]:
    """Exactly the texts the pipeline embeds, for the embed-only and LangChain baselines."""
    chunker = Chunker(config.config.index.chunking, embedder)
    texts: list[str] = []
    for result in load_file(path, path.name):
        if result.document is not None:
            texts.extend(chunk.embed_text for chunk in chunker.split(result.document))
    return texts


def langchain_ingest(admin_uri: str, texts: list[str], embedder: Embedder) -> dict[str, float]:
    """Bare PGVector.add_texts, twice without ids (re-embeds, duplicates): a naive user, not the anchor."""
    database = fresh_database(admin_uri, "bench_langchain")
    vector_store = pgvector_store(database.url, embedder, "bench")
    t0 = time.perf_counter()
    vector_store.add_texts(texts)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    vector_store.add_texts(texts)
    again = time.perf_counter() - t0
    return {"first_s": first, "same_again_s": again}


def langchain_indexed_ingest(
    admin_uri: str, corpus: Path, edited_corpus: Path, config: LoadedConfig, embedder: Embedder
) -> dict[str, Any]:
    """What a LangChain user who re-ingests runs: ``index()`` + SQLRecordManager, ``cleanup="incremental"``.

    Same chunks (ragops' chunker, one LangChain Document per chunk, source = the document), same
    model, same PostgreSQL server, same three passes as ragops: first, unchanged, 1% of documents edited.
    """
    from langchain_classic.indexes import SQLRecordManager
    from langchain_core.documents import Document
    from langchain_core.indexing import index

    database = fresh_database(admin_uri, "bench_langchain_index")
    store = pgvector_store(database.url, embedder, "bench_index")
    record_manager = SQLRecordManager("pgvector/bench_index", db_url=sqlalchemy_url(database.url))
    record_manager.create_schema()
    chunker = Chunker(config.config.index.chunking, embedder)

    def documents(path: Path) -> list[Document]:
        docs = []
        for loaded in load_file(path, path.name):
            if loaded.document is not None:
                source = loaded.document.source
                docs += [Document(c.embed_text, metadata={"source": source}) for c in chunker.split(loaded.document)]
        return docs

    passes: dict[str, Any] = {}
    for name, path in (("first", corpus), ("unchanged", corpus), ("edit_1pct", edited_corpus)):
        counted = embedder.texts_embedded
        t0 = time.perf_counter()
        outcome = index(documents(path), record_manager, store, cleanup="incremental", source_id_key="source")
        passes[name] = {
            "seconds": time.perf_counter() - t0,
            "texts_embedded": embedder.texts_embedded - counted,
            **{k: int(v) for k, v in outcome.items() if isinstance(v, int)},
        }
    return passes


def sqlalchemy_url(conninfo: str) -> str:
    """SQLAlchemy's URL for a libpq conninfo string of the embedded server."""
    params = dict(part.split("=", 1) for part in conninfo.split())
    return f"postgresql+psycopg://{params.get('user', 'postgres')}:@/{params['dbname']}?host={params['host']}"


def pgvector_store(conninfo: str, embedder: Embedder, collection: str) -> Any:
    """LangChain's PGVector over ``conninfo``, embedding with the same loaded model as ragops."""
    from langchain_core.embeddings import Embeddings
    from langchain_postgres import PGVector

    class SameModel(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return embedder.embed_batch(texts).tolist()

        def embed_query(self, text: str) -> list[float]:
            return embedder.embed_query(text).tolist()

    url = sqlalchemy_url(conninfo)
    return PGVector(embeddings=SameModel(), connection=url, collection_name=collection, use_jsonb=True)


def hnsw_recall(database: Any, embedder: Embedder, queries: list[str], k: int = 10) -> dict[str, float]:
    """Mean overlap of HNSW top-k with exact top-k, plus median latencies of both."""
    with database.connect() as conn:
        version = versions.active_index_version(conn)
        assert version is not None
        vectors = embedder.embed_batch(queries)
        recalls, t_hnsw, t_exact = [], [], []
        for vector in vectors:
            t0 = time.perf_counter()
            approx = search_sql.search_vector(conn, version, vector, k, collection=DEFAULT_COLLECTION)
            t_hnsw.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            exact = search_sql.search_vector(conn, version, vector, k, exact=True, collection=DEFAULT_COLLECTION)
            t_exact.append(time.perf_counter() - t0)
            recalls.append(len({h.chunk_id for h in approx} & {h.chunk_id for h in exact}) / max(len(exact), 1))
    return {
        "recall_at_10": float(np.mean(recalls)),
        "queries": len(queries),
        "hnsw_p50_ms": float(np.median(t_hnsw) * 1000),
        "exact_p50_ms": float(np.median(t_exact) * 1000),
    }


def embed_backends(texts: list[str], embedders: dict[str, Embedder], rounds: int) -> dict[str, Any]:
    """Embed-only throughput of each embedder on the same texts (best of interleaved rounds: the machine is
    shared, and its load moves within a run), and each one's cosine per text to the first (torch, float32)."""
    throughput: dict[str, Any] = {}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for name, embedder in embedders.items():
            t0 = time.perf_counter()
            vectors[name] = embedder.embed_batch(texts)
            seconds = time.perf_counter() - t0
            if name not in throughput or seconds < throughput[name]["seconds"]:
                throughput[name] = {"seconds": seconds, "texts_per_s": len(texts) / seconds}
            throughput[name].update(backend=embedder.backend, precision=embedder.precision, batch=embedder.batch_size)
            if isinstance(embedder, OnnxEmbedder):
                throughput[name]["intra_op_threads"] = embedder.threads
    reference = vectors[next(iter(embedders))]
    cosines = {name: np.sum(reference * got, axis=1) for name, got in list(vectors.items())[1:]}
    return {
        "throughput": throughput,
        "cosine": {
            name: {"min": float(c.min()), "mean": float(c.mean()), "texts": len(texts)} for name, c in cosines.items()
        },
    }


def first_ingest_side_by_side(
    admin_uri: str,
    corpus: Path,
    texts: list[str],
    config: LoadedConfig,
    embedder: Embedder,
    langchain_embedder: Embedder,
    rounds: int,
) -> dict[str, Any]:
    """ragops' first ingest and LangChain's PGVector.add_texts on the same chunks, alternated, best of each."""
    ragops: list[float] = []
    langchain: list[float] = []
    for _ in range(rounds):
        database = fresh_database(admin_uri, "bench_ragops_first")
        with database.connect() as conn:
            ragops.append(IngestPipeline(conn, config, embedder).run(corpus).total_seconds)
        store = pgvector_store(fresh_database(admin_uri, "bench_langchain_first").url, langchain_embedder, "bench")
        t0 = time.perf_counter()
        store.add_texts(texts)
        langchain.append(time.perf_counter() - t0)
    return {
        "rounds": rounds,
        "ragops_s": ragops,
        "langchain_pgvector_s": langchain,
        "ragops_vs_langchain_throughput": min(langchain) / min(ragops),
    }


def pii_analysis_cost(admin_uri: str, corpus: Path, embedder: Embedder) -> dict[str, Any]:
    """A first ingest with PII spans analyzed and stored, against one without, on fresh databases (A B B A)."""
    seconds: dict[bool, list[float]] = {False: [], True: []}
    analyzed = 0
    for analysis in (False, True, True, False):
        database = fresh_database(admin_uri, "bench_pii_analysis")
        with database.connect() as conn:
            report = IngestPipeline(conn, bench_config(pii_analysis=analysis), embedder).run(corpus)
        seconds[analysis].append(report.total_seconds)
        analyzed = max(analyzed, report.pii_analyzed)
    return {
        "without_s": seconds[False],
        "with_s": seconds[True],
        "texts_analyzed": analyzed,
        "throughput_with_vs_without": min(seconds[False]) / min(seconds[True]),
    }


def query_cache(embedder: Embedder, queries: list[str]) -> dict[str, Any]:
    """embed_query p50 with the question's vector computed (cold) and taken from the cache (warm)."""
    embedder.clear_query_cache()
    cold: list[float] = []
    warm: list[float] = []
    for timings in (cold, warm):
        for query in queries:
            t0 = time.perf_counter()
            embedder.embed_query(query)
            timings.append(time.perf_counter() - t0)
    return {
        "size": embedder.query_cache_size,
        "queries": len(queries),
        "cold_p50_ms": float(np.median(cold) * 1000),
        "warm_p50_ms": float(np.median(warm) * 1000),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench ingest")
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--skip-langchain", action="store_true")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the side-by-side comparisons")
    args = parser.parse_args(argv)

    records = read_jsonl(DATASETS / "pubmedqa" / "corpus_docs.jsonl")[: args.docs]
    queries = [q["text"] for q in read_jsonl(DATASETS / "pubmedqa" / "queries.jsonl")[:200]]
    config = bench_config()
    settings = config.config.index.embedding
    embedder = get_embedder(settings)
    # What a LangChain user embeds with: sentence-transformers on torch in float32 (its defaults).
    float32_embedder = get_embedder(settings.model_copy(update={"backend": "torch", "precision": "float32"}))
    embedders = {
        "torch_float32": float32_embedder,
        "default": embedder,
        "default_batch_64": get_embedder(settings.model_copy(update={"batch_size": 64})),
        "onnx": get_embedder(settings.model_copy(update={"backend": "onnx", "precision": "auto"})),
        "onnx_1_thread": OnnxEmbedder(
            settings.model_copy(update={"backend": "onnx", "precision": "auto"}), get_settings().model_cache_dir, 1
        ),
    }
    for warm in embedders.values():
        warm.embed_batch(["warm up the model"] * 8)
    result: dict[str, Any] = {
        "corpus": f"pubmedqa corpus_docs.jsonl, first {len(records)} abstracts",
        "backend": embedder.backend,
        "precision": embedder.precision,
        "batch_size": embedder.batch_size,
    }

    with tempfile.TemporaryDirectory() as tmp, bench_server() as admin_uri:
        corpus = write_corpus(records, Path(tmp))
        (Path(tmp) / "original").mkdir()
        original = write_corpus(records, Path(tmp) / "original")  # the anchor's first two passes read this copy
        texts = chunk_texts(corpus, config, embedder)
        result["chunks"] = len(texts)
        result["chunk_size"] = CHUNK_SIZE

        backends = embed_backends(texts, embedders, args.rounds)
        result["embed_backends"] = backends.pop("throughput")
        result["cosine_vs_torch_float32"] = backends["cosine"]
        embed_only = result["embed_backends"]["default"]["seconds"]

        database = fresh_database(admin_uri, "bench_ragops")
        with database.connect() as conn:
            pipeline = IngestPipeline(conn, config, embedder)
            first = pipeline.run(corpus)
            again = pipeline.run(corpus)
            edited = [dict(r) for r in records]
            for record in random.Random(7).sample(edited, max(1, len(edited) // 100)):
                record["text"] += " Editorial note: this abstract was revised."
            write_corpus(edited, Path(tmp))
            after_edit = pipeline.run(corpus)
        result["embed_only"] = {"seconds": embed_only, "chunks_per_s": len(texts) / embed_only}
        result["ragops_first"] = {
            "seconds": first.total_seconds,
            "embed_seconds": first.embed_seconds,
            "docs_per_s": first.added / first.total_seconds,
            "chunks_per_s": first.chunks_written / first.total_seconds,
            "embedder_share": first.embed_seconds / first.total_seconds,
            "texts_embedded": first.texts_embedded,
        }
        result["ragops_unchanged"] = {"seconds": again.total_seconds, "texts_embedded": again.texts_embedded}
        result["ragops_edit_1pct"] = {
            "seconds": after_edit.total_seconds,
            "updated": after_edit.updated,
            "texts_embedded": after_edit.texts_embedded,
        }
        seconds = {name: b["seconds"] for name, b in result["embed_backends"].items()}
        result["ratios"] = {
            **{
                f"{name}_vs_torch_float32_embed_throughput": seconds["torch_float32"] / seconds[name]
                for name in seconds
                if name != "torch_float32"
            },
            "onnx_1_thread_vs_onnx_embed_throughput": seconds["onnx"] / seconds["onnx_1_thread"],
            "pipeline_vs_embed_only_throughput": embed_only / first.total_seconds,
            "first_vs_unchanged_reingest": first.total_seconds / again.total_seconds,
            "edit_1pct_share_of_first": after_edit.total_seconds / first.total_seconds,
        }
        if not args.skip_langchain:
            anchor = langchain_indexed_ingest(admin_uri, original, corpus, config, float32_embedder)
            result["langchain_index_incremental"] = anchor
            result["ratios"]["langchain_index_first_vs_ragops_first"] = anchor["first"]["seconds"] / first.total_seconds
            result["ratios"]["langchain_index_unchanged_vs_ragops_unchanged"] = (
                anchor["unchanged"]["seconds"] / again.total_seconds
            )
            result["ratios"]["langchain_index_edit_1pct_vs_ragops_edit_1pct"] = (
                anchor["edit_1pct"]["seconds"] / after_edit.total_seconds
            )
            lc = langchain_ingest(admin_uri, texts, float32_embedder)
            result["langchain_pgvector"] = lc
            result["ratios"]["langchain_first_vs_ragops_first"] = lc["first_s"] / first.total_seconds
            result["ratios"]["langchain_same_again_vs_ragops_unchanged"] = lc["same_again_s"] / again.total_seconds
            side = first_ingest_side_by_side(
                admin_uri, original, texts, config, embedder, float32_embedder, args.rounds
            )
            result["first_ingest_side_by_side"] = side
            result["ratios"]["ragops_vs_langchain_pgvector_first_throughput"] = side["ragops_vs_langchain_throughput"]
        result["hnsw"] = hnsw_recall(database, embedder, queries)
        result["pii_analysis"] = pii_analysis_cost(admin_uri, corpus, embedder)
    result["query_cache"] = query_cache(embedder, queries)
    path = write_result("ingest", result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
