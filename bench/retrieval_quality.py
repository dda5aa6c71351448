"""Retrieval quality of vector, keyword and hybrid search on real BEIR datasets.

Hybrid fusion weights are tuned on WikiQA's dev split only, then every mode is reported on the
test splits. Uses the same harness as ``ragops eval run --beir`` (evals/beir.py).

    python -m bench quality [--no-tune]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

from bench.common import DATASETS, bench_server, fresh_database, write_result
from core.config import LoadedConfig, RetrievalSettings, load_config
from core.embedding import get_embedder
from evals.beir import BeirDataset, evaluate_retrieval, load_beir
from ingest import versions
from ingest.pipeline import IngestPipeline

ROOT = Path(__file__).resolve().parent.parent
# (folder, test split, dev split or None)
DATASET_SPLITS = [("wikiqa", "test", "dev"), ("xquad_en", "test", None), ("pubmedqa", "docs", None)]
WEIGHTS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
RRF_KS = (10, 30, 60)


def scores_dict(s: Any) -> dict[str, float]:
    return {"ndcg_at_10": round(s.ndcg_at_10, 4), "recall_at_10": round(s.recall_at_10, 4), "queries": s.queries}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench quality")
    parser.add_argument("--no-tune", action="store_true", help="Use configs/default.yaml's weights as they are.")
    args = parser.parse_args(argv)
    config: LoadedConfig = load_config("default", ROOT / "configs")
    base = config.config.retrieval
    embedder = get_embedder(config.config.index.embedding)
    result: dict[str, Any] = {"config": config.version, "datasets": {}}
    with bench_server() as admin_uri:
        for folder, test_split, dev_split in DATASET_SPLITS:
            dataset = load_beir(DATASETS / folder, test_split)
            database = fresh_database(admin_uri, f"quality_{folder}")
            t0 = time.perf_counter()
            with database.connect() as conn:
                report = IngestPipeline(conn, config, embedder).run(dataset.corpus)
                version = versions.active_index_version(conn)
                assert version is not None
                splits: dict[str, BeirDataset] = {"test": dataset}
                if dev_split:
                    splits["dev"] = load_beir(DATASETS / folder, dev_split)
                vectors: dict[str, Any] = {}
                for split in splits.values():
                    ids = list(split.queries)
                    vectors.update(zip(ids, embedder.embed_batch([split.queries[i] for i in ids]), strict=True))
                entry: dict[str, Any] = {
                    "chunks": report.chunks_written,
                    "ingest_s": round(time.perf_counter() - t0, 1),
                }
                if "dev" in splits and not args.no_tune:
                    grid = []
                    for weight, rrf_k in itertools.product(WEIGHTS, RRF_KS):
                        settings = base.model_copy(update={"mode": "hybrid", "keyword_weight": weight, "rrf_k": rrf_k})
                        dev = evaluate_retrieval(conn, version, splits["dev"], settings, vectors)
                        grid.append(
                            {"keyword_weight": weight, "rrf_k": rrf_k, "dev_ndcg_at_10": round(dev.ndcg_at_10, 4)}
                        )
                    entry["dev_grid"] = grid
                    best = max(grid, key=lambda g: g["dev_ndcg_at_10"])
                    result["tuned"] = {"keyword_weight": best["keyword_weight"], "rrf_k": best["rrf_k"]}
                    for mode in ("vector", "keyword"):
                        dev = evaluate_retrieval(
                            conn, version, splits["dev"], base.model_copy(update={"mode": mode}), vectors
                        )
                        entry[f"dev_{mode}"] = scores_dict(dev)
                tuned = result.get("tuned", {})
                for mode in ("vector", "keyword", "hybrid"):
                    update: dict[str, Any] = {"mode": mode, **(tuned if mode == "hybrid" else {})}
                    chosen: RetrievalSettings = base.model_copy(update=update)
                    entry[mode] = scores_dict(evaluate_retrieval(conn, version, dataset, chosen, vectors))
                best_component = max(entry["vector"]["ndcg_at_10"], entry["keyword"]["ndcg_at_10"])
                entry["hybrid_minus_best_component"] = round(entry["hybrid"]["ndcg_at_10"] - best_component, 4)
            result["datasets"][dataset.name] = entry
            print(json.dumps({dataset.name: entry}, indent=2), flush=True)
    path = write_result("quality", result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
