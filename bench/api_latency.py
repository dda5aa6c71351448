"""``/v1/query`` latency with the extractive generator at concurrency 1 and 16, and the API's own overhead.

The API's overhead is the client's end-to-end time minus the time the server spent embedding,
searching and generating (reported per request in ``timings``): HTTP, validation, JSON, threads.

    python -m bench api [--requests 200 --pairs 40 --rounds 5]

The headline figures are end to end on the production path (metering on). The API's overhead and the
accounting cost are paired differences per question, back to back in alternating order: HTTP on the
production path minus the same pipeline called in-process, and metered minus bare. The subtractive
split (end to end minus the stages the server reports) is kept as an explanation only.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from app.keys import create_key
from app.main import create_app
from app.rag import Question, RagPipeline
from bench.common import bench_server, fresh_database, median, paired_summary, percentile, write_result
from core.access import EVERYTHING
from core.catalog import Catalog
from core.config import load_config
from core.embedding import get_embedder
from core.settings import Settings
from ingest.pipeline import IngestPipeline
from tests.utils.server import serve_in_thread

BUDGET = Decimal(1_000_000)  # a budget far above what the run spends: accounting on, never refusing

ROOT = Path(__file__).resolve().parent.parent


def overhead_ms(response: httpx.Response, elapsed_ms: float) -> float:
    """A request's API overhead: end to end minus embedding, search, generation and PII filtering.

    PII filtering is a pipeline stage with its own benchmark (bench/pii.py), not API overhead.
    """
    t = response.json()["timings"]
    return elapsed_ms - t["embed_ms"] - t["retrieve_ms"] - t["generate_ms"] - t.get("pii_ms", 0.0)


def run_load(url: str, questions: list[str], concurrency: int, total: int, keys: list[str]) -> dict[str, Any]:
    """``total`` requests from ``concurrency`` threads, thread ``n`` with ``keys[n % len(keys)]`` (none: no auth).

    One key per thread is a load of many users: one key alone would meet its own in-flight limit.
    """
    e2e: list[float] = []
    overhead: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()

    def one(i: int, client: httpx.Client) -> None:
        t0 = time.perf_counter()
        try:
            response = client.post(f"{url}/v1/query", json={"question": questions[i % len(questions)]})
        except httpx.HTTPError as exc:
            with lock:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        ms = (time.perf_counter() - t0) * 1000
        with lock:
            if response.status_code != 200:
                errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
                return
            e2e.append(ms)
            overhead.append(overhead_ms(response, ms))

    headers = [{"Authorization": f"Bearer {key}"} for key in keys] or [{}]
    clients = [httpx.Client(timeout=60, headers=headers[n % len(headers)]) for n in range(concurrency)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda i: one(i, clients[i % concurrency]), range(total)))
    wall = time.perf_counter() - t0
    for client in clients:
        client.close()
    return {
        "requests": total, "keys": len(keys), "errors": sum(errors.values()), "error_kinds": errors,
        "requests_per_s": round(total / wall, 1),
        "p50_ms": round(percentile(e2e, 50), 1), "p95_ms": round(percentile(e2e, 95), 1),
        "api_overhead_p50_ms": round(percentile(overhead, 50), 2),
        "api_overhead_p95_ms": round(percentile(overhead, 95), 2),
    }  # fmt: skip


def accounting_overhead(
    metered_url: str, bare_url: str, questions: list[str], key: str, rounds: int = 5
) -> dict[str, Any]:
    """Metered vs bare in interleaved rounds at concurrency 1: the same machine state for both."""
    pairs: dict[str, list[float]] = {"metered": [], "bare": [], "bare_overhead": [], "metered_overhead": []}
    for _ in range(rounds):
        metered_run = run_load(metered_url, questions, 1, 40, [key])
        bare_run = run_load(bare_url, questions, 1, 40, [])
        pairs["metered"].append(metered_run["p50_ms"])
        pairs["bare"].append(bare_run["p50_ms"])
        pairs["metered_overhead"].append(metered_run["api_overhead_p50_ms"])
        pairs["bare_overhead"].append(bare_run["api_overhead_p50_ms"])
    return {
        "metered_p50_ms": round(median(pairs["metered"]), 2),
        "bare_p50_ms": round(median(pairs["bare"]), 2),
        "overhead_p50_ms": round(median([m - b for m, b in zip(pairs["metered"], pairs["bare"], strict=True)]), 2),
        # Per request: end-to-end minus embed, search and generation, medians of the rounds.
        "api_overhead_bare_p50_ms": round(median(pairs["bare_overhead"]), 2),
        "api_overhead_metered_p50_ms": round(median(pairs["metered_overhead"]), 2),
        "accounting_overhead_p50_ms": round(median(pairs["metered_overhead"]) - median(pairs["bare_overhead"]), 2),
        "rounds": rounds,
    }


def paired_accounting(
    metered_url: str, bare_url: str, questions: list[str], key: str, rounds: int = 3
) -> dict[str, Any]:
    """What a production request pays for metering: end-to-end metered minus bare, same question, back to back.

    Each pair sends one question to both apps in alternating order (so neither side always gets the
    warmer cache), at concurrency 1. Unlike the subtractive split this sees the ledger write and the
    budget settlement after the response, and subtracts nothing.
    """
    diffs: list[float] = []
    with (
        httpx.Client(timeout=60, headers={"Authorization": f"Bearer {key}"}) as metered,
        httpx.Client(timeout=60) as bare,
    ):
        for r in range(rounds):
            for i, question in enumerate(questions):
                timed: dict[str, float] = {}
                sides = [("metered", metered, metered_url), ("bare", bare, bare_url)]
                for name, client, url in sides if (i + r) % 2 == 0 else sides[::-1]:
                    t0 = time.perf_counter()
                    response = client.post(f"{url}/v1/query", json={"question": question})
                    timed[name] = (time.perf_counter() - t0) * 1000
                    response.raise_for_status()
                diffs.append(timed["metered"] - timed["bare"])
    return paired_summary(diffs)


def paired_api_overhead(
    url: str, pipeline: RagPipeline, questions: list[str], key: str, rounds: int = 3
) -> dict[str, Any]:
    """What the HTTP API adds to an answer on the production path: ``/v1/query`` minus the same pipeline in-process.

    Each pair asks one question over HTTP (auth, budget reservation, ledger, JSON, threads: metering
    on) and of an in-process :class:`RagPipeline` over the same database, in alternating order, at
    concurrency 1. Nothing is subtracted, so the ledger write after the response is seen.
    """
    diffs: list[float] = []
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {key}"}) as client:
        for r in range(rounds):
            for i, question in enumerate(questions):
                timed: dict[str, float] = {}

                def over_http(q: str = question) -> None:
                    client.post(f"{url}/v1/query", json={"question": q}).raise_for_status()

                def in_process(q: str = question) -> None:
                    pipeline.answer(Question(text=q), EVERYTHING)

                sides = [("http", over_http), ("in_process", in_process)]
                for name, call in sides if (i + r) % 2 == 0 else sides[::-1]:
                    t0 = time.perf_counter()
                    call()
                    timed[name] = (time.perf_counter() - t0) * 1000
                diffs.append(timed["http"] - timed["in_process"])
    return paired_summary(diffs)


def paired_grant(url: str, questions: list[str], scoped_key: str, global_key: str, rounds: int = 3) -> dict[str, Any]:
    """What a collection-scoped key adds to a request's API overhead, against a global key: paired, same question.

    Both keys ask the same question of the same collection back to back, in alternating order, at
    concurrency 1; the difference of their API overheads (end to end minus the pipeline's stages)
    is what authorization by collection and configuration costs.
    """
    diffs: list[float] = []
    with (
        httpx.Client(timeout=60, headers={"Authorization": f"Bearer {scoped_key}"}) as scoped,
        httpx.Client(timeout=60, headers={"Authorization": f"Bearer {global_key}"}) as everything,
    ):
        for r in range(rounds):
            for i, question in enumerate(questions):
                overhead: dict[str, float] = {}
                sides = [("scoped", scoped), ("global", everything)]
                for name, client in sides if (i + r) % 2 == 0 else sides[::-1]:
                    t0 = time.perf_counter()
                    response = client.post(f"{url}/v1/query", json={"question": question, "collection": "default"})
                    elapsed = (time.perf_counter() - t0) * 1000
                    response.raise_for_status()
                    overhead[name] = overhead_ms(response, elapsed)
                diffs.append(overhead["scoped"] - overhead["global"])
    return paired_summary(diffs, digits=3)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench api")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=40, help="questions per paired round (3 rounds)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the subtractive split")
    args = parser.parse_args(argv)
    questions = [json.loads(line)["question"] for line in (ROOT / "evals/datasets/sample.jsonl").open()]
    config = load_config("default", ROOT / "configs")
    result: dict[str, Any] = {"corpus": "bundled samples/", "generator": "extractive", "levels": {}}
    with bench_server() as admin_uri:
        database = fresh_database(admin_uri, "api_bench")
        with database.connect() as conn:
            IngestPipeline(conn, config, get_embedder(config.config.index.embedding)).run(ROOT / "samples")
        with database.connect() as conn:
            key = create_key(conn, "bench", ["query"], collections=["*"], configs=["*"], budget_usd_day=BUDGET)[1]
            client_keys = [
                create_key(conn, f"bench-{n}", ["query"], collections=["*"], configs=["*"], budget_usd_day=BUDGET)[1]
                for n in range(1, 16)
            ]
            scoped_key = create_key(
                conn, "bench-scoped", ["query"], collections=["default", "support", "faq"], configs=["default"],
                budget_usd_day=BUDGET,
            )[1]  # fmt: skip
        settings = Settings(
            database_url=SecretStr(database.url), configs_dir=ROOT / "configs", prompts_dir=ROOT / "prompts",
            vllm_url=None, db_pool_max=20,
        )  # fmt: skip
        # Production (auth + budget reservation + ledger) and bare (all three off), served alternately.
        with (
            serve_in_thread(create_app(settings, metering=True), keep_alive_s=60) as metered_url,
            serve_in_thread(create_app(settings, metering=False), keep_alive_s=60) as bare_url,
        ):
            run_load(metered_url, questions, 1, 20, [key])  # warm-up
            run_load(metered_url, questions, 1, 20, [scoped_key])
            run_load(bare_url, questions, 1, 20, [])
            result["grant_paired"] = paired_grant(metered_url, questions[: args.pairs], scoped_key, key)
            print(json.dumps(result["grant_paired"]), flush=True)
            for concurrency in (1, 16):
                level = run_load(metered_url, questions, concurrency, args.requests, [key, *client_keys][:concurrency])
                result["levels"][str(concurrency)] = level
                print(json.dumps({concurrency: level}), flush=True)
            catalog = Catalog.load(ROOT / "configs", ROOT / "prompts", "default")
            with database.pool(2) as pool:
                pipeline = RagPipeline(settings, catalog, pool)
                pipeline.answer(Question(text=questions[0]), EVERYTHING)  # warm-up
                result["api_paired"] = paired_api_overhead(metered_url, pipeline, questions[: args.pairs], key)
            print(json.dumps(result["api_paired"]), flush=True)
            result["accounting_paired"] = paired_accounting(metered_url, bare_url, questions[: args.pairs], key)
            print(json.dumps(result["accounting_paired"]), flush=True)
            # The subtractive split: an explanation of where the time goes, not the figure a request pays.
            result["accounting_overhead"] = accounting_overhead(metered_url, bare_url, questions, key, args.rounds)
            print(json.dumps(result["accounting_overhead"]), flush=True)
    path = write_result("api", result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
