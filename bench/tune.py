"""``ragops tune`` on each shared dataset: fitted on pseudo-queries from that corpus alone, scored on
its real test queries against the untuned default (same index, same run).

    python -m bench tune
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from bench.common import bench_server, fresh_database, write_result
from bench.retrieval_quality import DATASETS_USED, ROOT, scores_dict, splits
from core.access import DEFAULT_COLLECTION
from core.config import load_config
from core.embedding import get_embedder
from evals.beir import evaluate_retrieval
from evals.tune import tune
from ingest import versions
from ingest.pipeline import IngestPipeline


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench tune")
    parser.add_argument("--queries", type=int, default=400, help="Pseudo-queries per dataset.")
    args = parser.parse_args(argv)
    config = load_config("default", ROOT / "configs")
    default = config.config.retrieval.model_copy(update={"mode": "hybrid"})
    embedder = get_embedder(config.config.index.embedding)
    result: dict[str, Any] = {"config": config.version, "datasets": {}}
    with bench_server() as admin_uri:
        for folder in DATASETS_USED:
            test, _ = splits(folder)
            database = fresh_database(admin_uri, f"tune_{folder}")
            with database.connect() as conn:
                IngestPipeline(conn, config, embedder).run(test.corpus)
                version = versions.active_index_version(conn)
                assert version is not None
                ids = list(test.queries)
                vectors: dict[str, np.ndarray] = dict(
                    zip(ids, embedder.embed_batch([test.queries[i] for i in ids]), strict=True)
                )
                untuned = scores_dict(evaluate_retrieval(conn, version, test, default, vectors))
                t0 = time.perf_counter()
                tuned = tune(conn, version, DEFAULT_COLLECTION, config, embedder, limit=args.queries)
                seconds = time.perf_counter() - t0
                chosen = default.model_copy(update=tuned.chosen)
                scores = scores_dict(evaluate_retrieval(conn, version, test, chosen, vectors))
            entry = {
                "pseudo_queries": tuned.queries,
                "held_out_pseudo_ndcg": {"before": tuned.before, "after": tuned.after},
                "chosen": tuned.chosen,
                "best_on_fit_half": tuned.ranking[:3],
                "untuned": untuned,
                "tuned": scores,
                "tuned_minus_untuned": round(scores["ndcg_at_10"] - untuned["ndcg_at_10"], 4),
                "tune_seconds": round(seconds, 1),
            }
            result["datasets"][test.name] = entry
            print(json.dumps({test.name: entry}, indent=2), flush=True)
    path = write_result("tune", result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
