"""``ragops eval run --beir DIR``: retrieval quality on any BEIR-layout dataset, as an eval report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from app.retrieval import RetrievalQuery
from core.config import RetrievalSettings
from core.embedding import get_embedder
from core.errors import EvalInputError, SourceError
from core.git import git_commit
from core.runtime import Runtime
from evals.beir import CHUNK_POOL, BeirDataset, load_beir, ranked_documents
from evals.metrics import hit_at_k, mrr_at_k, ndcg_at_k, recall_at_k
from evals.runner import REPORT_FORMAT, aggregate, load_catalog
from ingest.pipeline import IngestPipeline
from ingest.versions import IndexVersion


def run_beir(
    rt: Runtime, config_name: str, folder: Path, split: str, *, configs_dir: Path | None = None
) -> dict[str, Any]:
    """Ingest the corpus into its own collection, then score every query's document ranking."""
    configs_dir = configs_dir or rt.settings.configs_dir
    try:
        dataset = load_beir(folder, split)
    except SourceError as exc:
        raise EvalInputError(str(exc)) from None
    config = load_catalog(configs_dir, rt.settings.prompts_dir, config_name).config(config_name)
    started = time.perf_counter()
    embedder = get_embedder(config.config.index.embedding)
    collection = f"beir-{folder.name}"
    version = (
        IngestPipeline(rt.conn, config, embedder, collection=collection)
        .run(dataset.corpus, sync=True, activate=False)
        .index_version
    )
    build = time.perf_counter() - started
    ids = list(dataset.queries)
    vectors = dict(zip(ids, embedder.embed_batch([dataset.queries[i] for i in ids]), strict=True))
    questions = score_queries(rt.conn, version, config.config.retrieval, dataset, vectors, collection)
    return {
        "format": REPORT_FORMAT,
        "dataset": {"name": dataset.name, "sha256": _digest(dataset.corpus, folder, split), "questions": len(ids)},
        "versions": {"config": config.version, "index": version.name, "git_commit": git_commit(configs_dir.resolve())},
        "repeats": 1,
        "index_build_seconds": round(build, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        "aggregates": aggregate(questions),
        "questions": questions,
    }


def score_queries(
    conn: psycopg.Connection,
    version: IndexVersion,
    settings: RetrievalSettings,
    dataset: BeirDataset,
    vectors: dict[str, np.ndarray],
    collection: str,
) -> list[dict[str, Any]]:
    """Every query's report entry: its documents' ranking, scored against its qrels."""
    k = settings.top_k
    questions = []
    for qid, text in dataset.queries.items():
        t0 = time.perf_counter()
        ranked = ranked_documents(conn, version, settings, RetrievalQuery(text, CHUNK_POOL, collection),
                                  vectors[qid])  # fmt: skip
        relevant = dataset.qrels[qid]
        questions.append(
            {
                "id": qid, "kind": "answerable", "question": text, "answer": "", "reference": "",
                "retrieved": ranked[:10], "gold": sorted(d for d, g in relevant.items() if g > 0),
                "metrics": {
                    "recall_at_k": recall_at_k(ranked, relevant, k), "mrr_at_k": mrr_at_k(ranked, relevant, k),
                    "ndcg_at_10": ndcg_at_k(ranked, relevant, 10), "hit_at_k": hit_at_k(ranked, relevant, k),
                    "recall_at_10": recall_at_k(ranked, relevant, 10),
                    "latency_ms": (time.perf_counter() - t0) * 1000, "cost_usd": 0.0,
                },
            }
        )  # fmt: skip
    return questions


def _digest(corpus: Path, folder: Path, split: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in (corpus, folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"):
        digest.update(path.read_bytes())
    return digest.hexdigest()
