"""BEIR-layout datasets (corpus, queries, qrels) and retrieval evaluation through ragops' own search.

The benchmarks and ``ragops eval run --beir`` share this harness, so a benchmark's number and
the gate's are computed the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg

from app.retrieval import RetrievalQuery, search
from core.access import DEFAULT_COLLECTION
from core.config import RetrievalSettings
from core.errors import SourceError
from evals.metrics import hit_at_k, mrr_at_k, ndcg_at_k, recall_at_k, unique_in_order
from ingest.versions import IndexVersion

CHUNK_POOL = 30  # chunks retrieved per query before folding them into documents


@dataclass(frozen=True)
class BeirDataset:
    """One split of a BEIR dataset."""

    name: str
    corpus: Path
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


@dataclass
class RetrievalScores:
    """Mean retrieval metrics over queries, and the per-query nDCG@10 for paired comparisons."""

    ndcg_at_10: float
    recall_at_10: float
    mrr_at_10: float
    hit_at_10: float
    queries: int
    per_query_ndcg: dict[str, float] = field(default_factory=dict)


def _read_jsonl(path: Path) -> Iterable[dict[str, object]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def load_beir(folder: Path, split: str) -> BeirDataset:
    """``folder/qrels/<split>.tsv`` with ``corpus.jsonl`` (or ``corpus_<split>.jsonl``) and ``queries.jsonl``."""
    qrels_path = folder / "qrels" / f"{split}.tsv"
    corpus = folder / "corpus.jsonl"
    if not corpus.exists():
        corpus = folder / f"corpus_{split}.jsonl"
    for path in (qrels_path, corpus, folder / "queries.jsonl"):
        if not path.exists():
            raise SourceError(f"BEIR dataset {folder}: missing {path.name}")
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8") as handle:
        header = next(handle, "")
        if not header.startswith("query"):
            raise SourceError(f"{qrels_path}: expected a 'query-id corpus-id score' header line")
        for number, line in enumerate(handle, start=2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3:
                raise SourceError(f"{qrels_path}:{number}: expected 3 tab-separated columns")
            qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    queries = {str(q["_id"]): str(q["text"]) for q in _read_jsonl(folder / "queries.jsonl") if str(q["_id"]) in qrels}
    return BeirDataset(name=f"{folder.name}/{split}", corpus=corpus, queries=queries, qrels=qrels)


def corpus_id(source: str) -> str:
    """The BEIR ``_id`` of a chunk's document (sources look like ``corpus.jsonl#<id>``)."""
    return source.split("#", 1)[1] if "#" in source else source


def ranked_documents(
    conn: psycopg.Connection,
    version: IndexVersion,
    settings: RetrievalSettings,
    query: RetrievalQuery,
    vector: np.ndarray | None,
) -> list[str]:
    """BEIR corpus ids in rank order: chunks are retrieved, then folded to their documents."""
    hits = search(conn, version, settings, query, vector)
    return unique_in_order([corpus_id(h.source) for h in hits])


def evaluate_retrieval(
    conn: psycopg.Connection,
    version: IndexVersion,
    dataset: BeirDataset,
    settings: RetrievalSettings,
    vectors: dict[str, np.ndarray],
    *,
    collection: str = DEFAULT_COLLECTION,
    k: int = 10,
    chunk_pool: int = CHUNK_POOL,
) -> RetrievalScores:
    """Document-level metrics: chunks are retrieved, then folded to their documents in rank order."""
    totals = {"ndcg": 0.0, "recall": 0.0, "mrr": 0.0, "hit": 0.0}
    per_query: dict[str, float] = {}
    for qid, text in dataset.queries.items():
        ranked = ranked_documents(
            conn, version, settings, RetrievalQuery(text, chunk_pool, collection), vectors.get(qid)
        )
        relevant = dataset.qrels[qid]
        per_query[qid] = ndcg_at_k(ranked, relevant, k)
        totals["ndcg"] += per_query[qid]
        totals["recall"] += recall_at_k(ranked, relevant, k)
        totals["mrr"] += mrr_at_k(ranked, relevant, k)
        totals["hit"] += hit_at_k(ranked, relevant, k)
    n = max(len(dataset.queries), 1)
    return RetrievalScores(
        ndcg_at_10=totals["ndcg"] / n, recall_at_10=totals["recall"] / n, mrr_at_10=totals["mrr"] / n,
        hit_at_10=totals["hit"] / n, queries=len(dataset.queries), per_query_ndcg=per_query,
    )  # fmt: skip
