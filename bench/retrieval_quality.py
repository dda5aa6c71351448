"""Retrieval quality of keyword (BM25), vector and hybrid search on the shared BEIR datasets.

Keyword mode is reported beside two references over the same tokens: PostgreSQL's ``ts_rank``
(ragops' keyword mode before BM25) and the ``bm25s`` package (k1 0.9, b 0.4, Lucene idf) fed each
chunk's lexemes from the index. Fusion and BM25 parameters are chosen on development queries only
(WikiQA dev, PubMedQA's train/validation half); every figure in ``datasets`` is on test queries
(WikiQA test, PubMedQA's official test half, XQuAD, which has no other split).

    python -m bench quality
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
import psycopg
from psycopg import sql

from app.search_sql import query_lexemes
from bench.common import DATASETS, bench_server, fresh_database, read_jsonl, write_result
from core.access import DEFAULT_COLLECTION
from core.config import LoadedConfig, RetrievalSettings, load_config
from core.embedding import Embedder, get_embedder
from evals.beir import CHUNK_POOL, BeirDataset, RetrievalScores, corpus_id, evaluate_retrieval, load_beir
from evals.metrics import ndcg_at_k, recall_at_k, unique_in_order
from evals.tune import BM25_GRID, FUSION_GRID, Rankings, pseudo_queries
from ingest import versions
from ingest.pipeline import IngestPipeline
from ingest.versions import IndexVersion

ROOT = Path(__file__).resolve().parent.parent
# The default fusion before `bound` normalization, reported beside the default on every split.
OLD_DEFAULT_FUSION = {"fusion": "convex", "fusion_normalization": "minmax", "keyword_weight": 0.3}
PSEUDO_QUERIES = 400
# (folder, qrels split, query ids for development or None, query ids for test or None = all)
DATASETS_USED = ("wikiqa", "xquad_en", "pubmedqa")


def splits(folder: str) -> tuple[BeirDataset, BeirDataset | None]:
    """(test, dev) queries of one dataset."""
    if folder == "wikiqa":
        return load_beir(DATASETS / folder, "test"), load_beir(DATASETS / folder, "dev")
    if folder == "pubmedqa":
        both = load_beir(DATASETS / folder, "docs")
        split_of = {str(q["_id"]): q["metadata"].get("split") for q in read_jsonl(DATASETS / folder / "queries.jsonl")}
        return subset(both, "test", split_of), subset(both, "trainval", split_of)
    return load_beir(DATASETS / folder, "test"), None


def subset(dataset: BeirDataset, split: str, split_of: dict[str, Any]) -> BeirDataset:
    """The queries of ``dataset`` whose metadata split is ``split``."""
    queries = {qid: text for qid, text in dataset.queries.items() if split_of.get(qid) == split}
    return replace(dataset, name=f"{dataset.name}:{split}", queries=queries)


def scores_dict(s: RetrievalScores) -> dict[str, Any]:
    return {"ndcg_at_10": round(s.ndcg_at_10, 4), "recall_at_10": round(s.recall_at_10, 4), "queries": s.queries}


def rankings_scores(dataset: BeirDataset, rankings: dict[str, list[str]]) -> dict[str, Any]:
    """nDCG@10 and recall@10 of document rankings computed outside ragops' search."""
    ndcg = [ndcg_at_k(rankings.get(qid, []), dataset.qrels[qid], 10) for qid in dataset.queries]
    recall = [recall_at_k(rankings.get(qid, []), dataset.qrels[qid], 10) for qid in dataset.queries]
    n = max(len(ndcg), 1)
    return {"ndcg_at_10": round(sum(ndcg) / n, 4), "recall_at_10": round(sum(recall) / n, 4), "queries": len(ndcg)}


def ts_rank_rankings(conn: psycopg.Connection, version: IndexVersion, dataset: BeirDataset) -> dict[str, list[str]]:
    """Reference: ``ts_rank`` with any query term matching (ragops' keyword mode before BM25)."""
    query = sql.SQL(
        """WITH q AS (SELECT coalesce(nullif(replace(nullif(querytree(
                         websearch_to_tsquery(%(cfg)s::regconfig, %(q)s)), 'T'), ' & ', ' | '), '')::tsquery,
                     ''::tsquery) AS query)
           SELECT d.source FROM {table} c JOIN documents d ON d.id = c.document_id, q
           WHERE numnode(q.query) > 0 AND c.tsv @@ q.query
           ORDER BY ts_rank(c.tsv, q.query) DESC, c.id LIMIT %(k)s"""
    ).format(table=version.table)
    cfg = version.settings.get("text_search_config", "english")
    return {
        qid: unique_in_order([corpus_id(r[0]) for r in conn.execute(query, {"cfg": cfg, "q": text, "k": CHUNK_POOL})])
        for qid, text in dataset.queries.items()
    }


def bm25s_rankings(conn: psycopg.Connection, version: IndexVersion, dataset: BeirDataset) -> dict[str, list[str]]:
    """Reference: the ``bm25s`` package over the index's own lexemes (each repeated as often as it occurs)."""
    rows = conn.execute(
        sql.SQL(
            "SELECT c.id, d.source, "
            "coalesce(array_agg(u.lexeme ORDER BY u.lexeme) FILTER (WHERE u.lexeme IS NOT NULL), '{{}}'), "
            "coalesce(array_agg(cardinality(u.positions) ORDER BY u.lexeme), '{{}}') "
            "FROM {table} c JOIN documents d ON d.id = c.document_id LEFT JOIN LATERAL unnest(c.tsv) u ON true "
            "GROUP BY c.id, d.source ORDER BY c.id"
        ).format(table=version.table)
    ).fetchall()
    sources = [corpus_id(r[1]) for r in rows]
    corpus = [[lexeme for lexeme, n in zip(r[2], r[3], strict=True) for _ in range(n or 0)] for r in rows]
    retriever = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    retriever.index(corpus, show_progress=False)
    cfg = version.settings.get("text_search_config", "english")
    rankings: dict[str, list[str]] = {}
    for qid, text in dataset.queries.items():
        lexemes = query_lexemes(conn, text, tsconfig=cfg)
        if not lexemes:
            rankings[qid] = []
            continue
        docs, scores = retriever.retrieve([lexemes], k=min(CHUNK_POOL, len(corpus)), show_progress=False)
        rankings[qid] = unique_in_order([sources[i] for i, s in zip(docs[0], scores[0], strict=True) if s > 0])
    return rankings


def grid(
    conn: psycopg.Connection,
    version: IndexVersion,
    dev: BeirDataset,
    base: RetrievalSettings,
    updates: list[dict[str, Any]],
    vectors: dict[str, np.ndarray],
) -> list[dict[str, Any]]:
    """Development nDCG@10 of ``base`` with each of ``updates``."""
    return [
        {
            **u,
            "dev_ndcg_at_10": round(
                evaluate_retrieval(conn, version, dev, base.model_copy(update=u), vectors).ndcg_at_10, 4
            ),
        }
        for u in updates
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench quality")
    parser.parse_args(argv)
    config: LoadedConfig = load_config("default", ROOT / "configs")
    default = config.config.retrieval
    embedder = get_embedder(config.config.index.embedding)
    bm25_updates = [dict(zip(BM25_GRID, values, strict=True)) for values in itertools.product(*BM25_GRID.values())]
    result: dict[str, Any] = {
        "config": config.version, "default": default.model_dump(), "datasets": {}, "dev": {}, "pseudo": {}
    }  # fmt: skip
    with bench_server() as admin_uri:
        for folder in DATASETS_USED:
            test, dev = splits(folder)
            database = fresh_database(admin_uri, f"quality_{folder}")
            t0 = time.perf_counter()
            with database.connect() as conn:
                report = IngestPipeline(conn, config, embedder).run(test.corpus)
                version = versions.active_index_version(conn)
                assert version is not None
                vectors: dict[str, np.ndarray] = {}
                for split in (test, dev):
                    if split is not None:
                        ids = list(split.queries)
                        vectors.update(zip(ids, embedder.embed_batch([split.queries[i] for i in ids]), strict=True))
                entry: dict[str, Any] = {
                    "chunks": report.chunks_written,
                    "ingest_s": round(time.perf_counter() - t0, 1),
                }
                result["pseudo"][test.name] = pseudo_grid(conn, version, config, embedder)
                if dev is not None:
                    keyword = default.model_copy(update={"mode": "keyword"})
                    hybrid = default.model_copy(update={"mode": "hybrid"})
                    result["dev"][dev.name] = {
                        "queries": len(dev.queries),
                        "vector": scores_dict(
                            evaluate_retrieval(
                                conn, version, dev, default.model_copy(update={"mode": "vector"}), vectors
                            )
                        ),
                        "bm25_grid": grid(conn, version, dev, keyword, bm25_updates, vectors),
                        "fusion_grid": grid(conn, version, dev, hybrid, list(FUSION_GRID), vectors),
                    }
                entry["keyword_ts_rank"] = rankings_scores(test, ts_rank_rankings(conn, version, test))
                entry["keyword_bm25s"] = rankings_scores(test, bm25s_rankings(conn, version, test))
                for mode in ("vector", "keyword", "hybrid"):
                    chosen = default.model_copy(update={"mode": mode})
                    entry[mode] = scores_dict(evaluate_retrieval(conn, version, test, chosen, vectors))
                for label, update in (
                    ("hybrid_rrf_equal_k60", {"fusion": "rrf", "rrf_k": 60, "keyword_weight": 1.0}),
                    ("hybrid_convex_equal", {"fusion": "convex", "keyword_weight": 1.0}),
                    ("hybrid_minmax_0_3", OLD_DEFAULT_FUSION),
                ):
                    chosen = default.model_copy(update={"mode": "hybrid", **update})
                    entry[label] = scores_dict(evaluate_retrieval(conn, version, test, chosen, vectors))
                references = max(entry["keyword_ts_rank"]["ndcg_at_10"], entry["keyword_bm25s"]["ndcg_at_10"])
                entry["keyword_minus_best_reference"] = round(entry["keyword"]["ndcg_at_10"] - references, 4)
                best_component = max(entry["vector"]["ndcg_at_10"], entry["keyword"]["ndcg_at_10"])
                entry["hybrid_minus_best_component"] = round(entry["hybrid"]["ndcg_at_10"] - best_component, 4)
                entry["components_within_0_05"] = (
                    abs(entry["vector"]["ndcg_at_10"] - entry["keyword"]["ndcg_at_10"]) <= 0.05
                )
            result["datasets"][test.name] = entry
            print(json.dumps({test.name: entry}, indent=2), flush=True)
    result["dev_summary"] = dev_summary(result["dev"])
    path = write_result("quality", result)
    print(json.dumps(result["dev_summary"], indent=2))
    print(f"wrote {path}")
    return result


def pseudo_grid(
    conn: psycopg.Connection, version: IndexVersion, config: LoadedConfig, embedder: Embedder
) -> dict[str, Any]:
    """The fusion grid on ``ragops tune``'s pseudo-queries from the corpus (all a set without a dev split has)."""
    base = config.config.retrieval.model_copy(update={"mode": "hybrid"})
    queries = pseudo_queries(conn, version, DEFAULT_COLLECTION, limit=PSEUDO_QUERIES)
    rankings = Rankings(conn, version, DEFAULT_COLLECTION, queries, embedder, base.candidates, base.ef_search)
    every = range(len(queries))
    return {
        "queries": len(queries),
        "vector": round(rankings.ndcg(base.model_copy(update={"mode": "vector"}), every), 4),
        "keyword": round(rankings.ndcg(base.model_copy(update={"mode": "keyword"}), every), 4),
        "hybrid": round(rankings.ndcg(base, every), 4),
        "fusion_grid": [
            {**u, "pseudo_ndcg_at_10": round(rankings.ndcg(base.model_copy(update=u), every), 4)} for u in FUSION_GRID
        ],
    }


def dev_summary(dev: dict[str, Any]) -> dict[str, Any]:
    """Each grid setting's mean development nDCG@10 over the development sets, best first."""
    summary: dict[str, Any] = {}
    for grid_name in ("bm25_grid", "fusion_grid"):
        by_setting: dict[str, list[float]] = {}
        for entry in dev.values():
            for row in entry[grid_name]:
                key = json.dumps({k: v for k, v in row.items() if k != "dev_ndcg_at_10"}, sort_keys=True)
                by_setting.setdefault(key, []).append(row["dev_ndcg_at_10"])
        ranked = sorted(by_setting.items(), key=lambda kv: -statistics.mean(kv[1]))
        summary[grid_name] = [
            {"setting": json.loads(k), "mean": round(statistics.mean(v), 4), "per_set": v} for k, v in ranked
        ]
    return summary


if __name__ == "__main__":
    main()
