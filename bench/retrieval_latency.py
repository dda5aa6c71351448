"""Retrieval latency at 10k and 100k chunks, and HNSW recall@10 vs exact, with and without a filter.

Embedding 100k real chunks would take most of an hour on 2 cores, so the large sets reuse real
chunk texts (PubMedQA, WikiQA and XQuAD) with vectors drawn around their real embeddings:
each synthetic vector is a real one plus Gaussian noise (sigma 0.03 per dimension), renormalized.
The noise is chosen so that the copies of one passage are about as similar to each other as real
nearest neighbours are (both medians are recorded in the result): smaller noise makes dozens of
near-identical twins that no real corpus has and that HNSW cannot tell apart (recall 0.83 at
sigma 0.01), larger noise makes vectors random. Question embedding is excluded.

    python -m bench latency [--sizes 10000 100000] [--queries 200]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from psycopg import sql
from psycopg.types.json import Jsonb

from app import search_sql
from app.retrieval import RetrievalQuery, search
from bench.common import DATASETS, bench_server, fresh_database, percentile, read_jsonl, write_result
from core.config import IndexSettings, RetrievalSettings, load_config
from core.embedding import get_embedder
from ingest import versions
from ingest.versions import IndexVersion

NOISE = 0.03
EF = RetrievalSettings().ef_search  # the default every configuration gets
# Keyword and hybrid run as configs/default.yaml runs them (BM25 parameters, fusion, candidates).
DEFAULTS = load_config("default", Path(__file__).resolve().parent.parent / "configs").config.retrieval
# Row i's metadata is {"bucket": i % 10, "percent": i % 100, "permille": i % 1000}: these filters
# keep 10%, 1%, 0.1% and none of the rows. As 3000 (the real vectors) is a multiple of 1000, a
# filter keeps all the noisy copies of some passages and none of the others, as a filter on a
# document's metadata keeps all of its chunks or none.
FILTERS = {"10pct": {"bucket": 0}, "1pct": {"percent": 0}, "0.1pct": {"permille": 0}, "nothing": {"bucket": 10}}


SOURCES = ("pubmedqa/corpus_passages.jsonl", "wikiqa/corpus.jsonl", "xquad_en/corpus.jsonl")
QUERY_SOURCES = ("pubmedqa/queries.jsonl", "wikiqa/queries.jsonl", "xquad_en/queries.jsonl")


def interleave(lists: list[list[str]], limit: int) -> list[str]:
    """Round-robin over the lists, up to ``limit`` items (so every dataset is represented)."""
    out: list[str] = []
    for i in range(max(len(x) for x in lists)):
        for items in lists:
            if i < len(items) and len(out) < limit:
                out.append(items[i])
    return out


def real_texts(limit: int) -> list[str]:
    """Real passages from the three shared datasets, mixed, up to ``limit``."""
    return interleave([[str(r["text"]) for r in read_jsonl(DATASETS / s)] for s in SOURCES], limit)


def real_queries(limit: int) -> list[str]:
    """Real questions about those passages (queries from another distribution have no true neighbours)."""
    return interleave([[str(r["text"]) for r in read_jsonl(DATASETS / s)] for s in QUERY_SOURCES], limit)


def load_rows(conn: Any, version: IndexVersion, texts: list[str], base: np.ndarray, size: int) -> None:
    """``size`` chunks: real texts cycled, vectors around the real ones, one synthetic document per 50 chunks."""
    rng = np.random.default_rng(7)
    n_docs = size // 50 + 1
    with conn.transaction():
        ids = [
            row[0]
            for row in conn.execute(
                "INSERT INTO documents (collection, source, content_hash) "
                "SELECT 'bench', 'doc-' || g, 'h' FROM generate_series(1, %s) g RETURNING id",
                (n_docs,),
            )
        ]
        columns = "document_id, ordinal, collection, title, section, text, token_count, char_start, char_end, " \
            "content_hash, metadata, embedding"  # fmt: skip
        with conn.cursor().copy(
            sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT BINARY)").format(version.table, sql.SQL(columns))
        ) as copy:
            copy.set_types(["bigint", "integer", "text", "text", "text", "text", "integer", "integer", "integer",
                            "text", "jsonb", "vector"])  # fmt: skip
            for i in range(size):
                vector = base[i % len(base)] + rng.normal(0, NOISE, base.shape[1])
                vector = (vector / np.linalg.norm(vector)).astype(np.float32)
                text = texts[i % len(texts)]
                meta = Jsonb({"bucket": i % 10, "percent": i % 100, "permille": i % 1000})
                copy.write_row((ids[i // 50], i % 50, "bench", "", "", text, len(text) // 4, 0, len(text), str(i),
                                meta, vector))  # fmt: skip


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """fn's result and the milliseconds it took."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, (time.perf_counter() - t0) * 1000


def measure(conn: Any, version: IndexVersion, queries: list[str], vectors: np.ndarray, pool: Any) -> dict[str, Any]:
    """Vector, keyword and hybrid search as configs/default.yaml runs them (hybrid with a second
    connection from ``pool``, as the service's pipeline gives it), then filtered vector search."""
    lat: dict[str, list[float]] = {"vector": [], "keyword": [], "hybrid": []}
    recall = []
    for text, vector in zip(queries, vectors, strict=True):
        hits, ms = timed(search_sql.search_vector, conn, version, vector, 10, ef_search=EF, collection="bench")
        lat["vector"].append(ms)
        exact = search_sql.search_vector(conn, version, vector, 10, exact=True, collection="bench")
        recall.append(len({h.chunk_id for h in hits} & {h.chunk_id for h in exact}) / 10)
        query = RetrievalQuery(text, 10, "bench")
        _, ms = timed(search, conn, version, DEFAULTS.model_copy(update={"mode": "keyword"}), query, None)
        lat["keyword"].append(ms)
        _, ms = timed(search, conn, version, DEFAULTS.model_copy(update={"mode": "hybrid"}), query, vector, pool=pool)
        lat["hybrid"].append(ms)
    out: dict[str, Any] = {
        f"{name}_ms": {"p50": round(percentile(v, 50), 2), "p95": round(percentile(v, 95), 2)}
        for name, v in lat.items()
    }
    out["recall_at_10"] = round(float(np.mean(recall)), 4)
    return out | measure_filtered(conn, version, vectors)


def measure_filtered(conn: Any, version: IndexVersion, vectors: np.ndarray) -> dict[str, Any]:
    """Vector search under each of FILTERS: p50/p95 ms, recall@10 against exact, rows returned.

    The exact answers are computed before the timed searches, not between them: an exact search
    under a 10% filter reads 10,000 rows and would evict the pages the next timed search reads.
    The 10% filter keeps the result names it had before the others were added.
    """
    out: dict[str, Any] = {}
    for name, flt in FILTERS.items():
        exact = [
            search_sql.search_vector(conn, version, v, 10, metadata=flt, exact=True, collection="bench")
            for v in vectors
        ]
        lat, recall, returned = [], [], []
        for vector, truth in zip(vectors, exact, strict=True):
            hits, ms = timed(
                search_sql.search_vector, conn, version, vector, 10, metadata=flt, ef_search=EF, collection="bench"
            )
            lat.append(ms)
            returned.append(len(hits))
            recall.append(len({h.chunk_id for h in hits} & {h.chunk_id for h in truth}) / max(len(truth), 1))
        key = "vector_filtered" if name == "10pct" else f"vector_filtered_{name}"
        out[f"{key}_ms"] = {"p50": round(percentile(lat, 50), 2), "p95": round(percentile(lat, 95), 2)}
        out[f"{key}_rows_returned"] = {"min": min(returned), "max": max(returned)}
        if any(exact):
            out[f"recall_at_10_filtered_{name}"] = round(float(np.mean(recall)), 4)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench latency")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--base", type=int, default=3000, help="Real texts embedded for the vector base.")
    args = parser.parse_args(argv)
    settings = IndexSettings()
    embedder = get_embedder(settings.embedding)
    texts = real_texts(args.base)
    t0 = time.perf_counter()
    base = embedder.embed_batch(texts)
    queries = real_queries(args.queries)
    query_vectors = embedder.embed_batch(queries)
    similarity = base @ base.T
    np.fill_diagonal(similarity, -1)
    rng = np.random.default_rng(1)
    twins = []
    for vector in base[:200]:
        a, b = (vector + rng.normal(0, NOISE, (2, base.shape[1]))).astype(np.float32)
        twins.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    result: dict[str, Any] = {
        "real_nearest_neighbour_cosine_median": round(float(np.median(similarity.max(axis=1))), 3),
        "synthetic_sibling_cosine_median": round(float(np.median(twins)), 3),
        "vectors": f"{len(texts)} real embeddings (PubMedQA, WikiQA, XQuAD passages) + N(0, {NOISE}) noise",
        "queries": f"{len(queries)} PubMedQA, WikiQA and XQuAD questions, mixed",
        "filters": FILTERS,
        "embed_base_s": round(time.perf_counter() - t0, 1),
        "sizes": {},
    }  # fmt: skip
    with bench_server() as admin_uri:
        for size in args.sizes:
            database = fresh_database(admin_uri, f"latency_{size}")
            with database.pool(max_size=2) as pool, pool.connection() as conn:
                version = versions.ensure_index_version(conn, settings, embedder.dimension, "bench")
                t0 = time.perf_counter()
                load_rows(conn, version, texts, base, size)
                load_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                versions.mark_version_ready(conn, version)
                index_s = time.perf_counter() - t0
                measure(conn, version, queries[:20], query_vectors[:20], pool)  # warm the caches
                entry = {"load_s": round(load_s, 1), "hnsw_build_s": round(index_s, 1)}
                entry |= measure(conn, version, queries, query_vectors, pool)
            result["sizes"][str(size)] = entry
            print(json.dumps({size: entry}, indent=2), flush=True)
    path = write_result("latency", result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
