"""Extractive answers from sentence vectors stored at ingest vs embedding every candidate per answer.

    python -m bench extractive [--requests-c1 40 --requests-c16 96 --rounds 2]

``/v1/query`` on the bundled samples (production path: metering on, one key per client thread) at
concurrency 1 (p50/p95) and 16 (requests/s), four generator paths on the same server, in A B C D D C B A
order so that no path always meets the machine in the same state:

- ``reembed_float32``: the code path before sentence vectors as it shipped: every candidate embedded
  per answer (a switch only this benchmark sets, ``ExtractiveGenerator.reembed_candidates``) by the
  embedder of that time, torch in float32 at batch 64 (the issue's "today's code path");
- ``reembed``: the same path on today's default embedder (bfloat16 where the CPU has it), to show
  how much of the gain is the embedder's;
- ``rescore``: stored vectors, the configured ``generation.extractive.rescore`` nearest re-embedded;
- ``stored``: stored vectors alone (``rescore: 0``): no model runs per answer beyond the question.

Then the ingest of the samples into a fresh database with ``index.sentence_vectors`` on and off, A B B A:
what pooling and storing the vectors costs.
"""

from __future__ import annotations

import argparse
import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from app.generators.extractive import ExtractiveGenerator
from app.keys import create_key
from app.main import create_app
from bench.api_latency import run_load
from bench.common import bench_server, fresh_database, median, write_result
from core.config import LoadedConfig, load_config
from core.embedding import Embedder, get_embedder
from core.settings import Settings
from ingest.pipeline import IngestPipeline
from tests.utils.server import serve_in_thread

ROOT = Path(__file__).resolve().parent.parent
BUDGET = Decimal(1_000_000)
PATHS = ("reembed_float32", "reembed", "rescore", "stored")
OLD_PATH = "reembed_float32"


def with_sentence_vectors(config: LoadedConfig, on: bool) -> LoadedConfig:
    """``config`` with ``index.sentence_vectors`` set (the index identity does not change)."""
    index = config.config.index.model_copy(update={"sentence_vectors": on})
    return config.model_copy(update={"config": config.config.model_copy(update={"index": index})})


def set_path(generator: ExtractiveGenerator, path: str, rescore: int, embedders: dict[str, Embedder]) -> None:
    """Switch the live generator to one of :data:`PATHS` (``embedders``: "default" and "float32")."""
    generator.reembed_candidates = path.startswith("reembed")
    generator.embedder = embedders["float32" if path == OLD_PATH else "default"]
    generator.settings = generator.settings.model_copy(update={"rescore": 0 if path == "stored" else rescore})


def query_paths(admin_uri: str, config: LoadedConfig, questions: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Every path at concurrency 1 and 16 on one server, rounds in A B C C B A order."""
    database = fresh_database(admin_uri, "bench_extractive")
    with database.connect() as conn:
        IngestPipeline(conn, config, get_embedder(config.config.index.embedding)).run(ROOT / "samples")
        keys = [
            create_key(conn, f"bench-{n}", ["query"], collections=["*"], configs=["*"], budget_usd_day=BUDGET)[1]
            for n in range(16)
        ]
    settings = Settings(
        database_url=SecretStr(database.url), configs_dir=ROOT / "configs", prompts_dir=ROOT / "prompts",
        vllm_url=None, db_pool_max=20,
    )  # fmt: skip
    app = create_app(settings, metering=True)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {p: {"1": [], "16": []} for p in PATHS}
    counts: dict[str, dict[str, int]] = {}
    with serve_in_thread(app, keep_alive_s=60) as url:
        run_load(url, questions, 1, 10, keys[:1])  # warm-up: the app's lifespan built the generator
        generator = app.state.pipeline.generator(app.state.catalog.config(None))
        assert isinstance(generator, ExtractiveGenerator)
        rescore = generator.settings.rescore
        before = {"backend": "torch", "precision": "float32", "batch_size": 64}
        float32 = get_embedder(config.config.index.embedding.model_copy(update=before))
        embedders = {"default": generator.embedder, "float32": float32}
        order = [*PATHS, *reversed(PATHS)] * args.rounds
        for path in order:
            set_path(generator, path, rescore, embedders)
            run_load(url, questions, 1, 5, keys[:1])
            embedded, stored = generator.vectors_embedded, generator.vectors_stored
            texts = generator.embedder.texts_embedded
            c1 = run_load(url, questions, 1, args.requests_c1, keys[:1])
            per_answer = (generator.embedder.texts_embedded - texts) / args.requests_c1
            c16 = run_load(url, questions, 16, args.requests_c16, keys)
            runs[path]["1"].append(c1)
            runs[path]["16"].append(c16)
            counts[path] = {
                "texts_embedded_per_answer": round(per_answer, 1),
                "stored_vectors_used": generator.vectors_stored - stored,
                "candidates_without_vector": generator.vectors_embedded - embedded,
            }
            print(json.dumps({path: {"c1_p50_ms": c1["p50_ms"], "c16_rps": c16["requests_per_s"]}}), flush=True)
        set_path(generator, "rescore", rescore, embedders)
    summary: dict[str, Any] = {"rescore": rescore, "paths": {}}
    for path in PATHS:
        c1s, c16s = runs[path]["1"], runs[path]["16"]
        summary["paths"][path] = {
            "c1_p50_ms": round(median([r["p50_ms"] for r in c1s]), 1),
            "c1_p95_ms": round(median([r["p95_ms"] for r in c1s]), 1),
            "c16_requests_per_s": round(median([r["requests_per_s"] for r in c16s]), 2),
            "c16_p50_ms": round(median([r["p50_ms"] for r in c16s]), 1),
            "errors": sum(r["errors"] for r in c1s + c16s),
            **counts[path],
            "runs": {"1": c1s, "16": c16s},
        }
    for base in ("reembed_float32", "reembed"):
        old = summary["paths"][base]["c16_requests_per_s"]
        summary[f"c16_speedup_vs_{base}"] = {
            path: round(summary["paths"][path]["c16_requests_per_s"] / old, 2) if old else None for path in PATHS
        }
    return summary


def ingest_cost(admin_uri: str, config: LoadedConfig) -> dict[str, Any]:
    """The samples ingested into a fresh database with sentence vectors on and off, A B B A."""
    embedder = get_embedder(config.config.index.embedding)
    seconds: dict[str, list[float]] = {"on": [], "off": []}
    chunks = 0
    for side in ("on", "off", "off", "on"):
        database = fresh_database(admin_uri, f"bench_extractive_ingest_{side}")
        with database.connect() as conn:
            t0 = time.perf_counter()
            report = IngestPipeline(conn, with_sentence_vectors(config, side == "on"), embedder).run(ROOT / "samples")
            seconds[side].append(time.perf_counter() - t0)
            chunks = report.chunks_written
        print(json.dumps({side: round(seconds[side][-1], 2)}), flush=True)
    throughput = {side: chunks / median(values) for side, values in seconds.items()}
    return {
        "corpus": "bundled samples/", "chunks": chunks, "order": "on off off on",
        "seconds": {side: [round(s, 2) for s in values] for side, values in seconds.items()},
        "chunks_per_s": {side: round(value, 2) for side, value in throughput.items()},
        "ratio_on_vs_off": round(throughput["on"] / throughput["off"], 3),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench extractive")
    parser.add_argument("--requests-c1", type=int, default=40)
    parser.add_argument("--requests-c16", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=1, help="A B C C B A rounds of the query paths")
    parser.add_argument("--skip-ingest", action="store_true")
    args = parser.parse_args(argv)
    questions = [json.loads(line)["question"] for line in (ROOT / "evals/datasets/sample.jsonl").open()]
    config = load_config("default", ROOT / "configs")
    result: dict[str, Any] = {"corpus": "bundled samples/", "generator": "extractive"}
    with bench_server() as admin_uri:
        result["query"] = query_paths(admin_uri, config, questions, args)
        print(json.dumps(result["query"]["c16_speedup_vs_reembed_float32"]), flush=True)
        if not args.skip_ingest:
            result["ingest"] = ingest_cost(admin_uri, config)
            print(json.dumps(result["ingest"]), flush=True)
    path = write_result("extractive", result)
    print(f"wrote {path}")
    return result
