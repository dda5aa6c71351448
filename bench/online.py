"""What tracing and online evaluation cost a request, and how fast the worker measures answers.

    python -m bench online [--pairs 40 --rounds 10 --top-k 1 --answers 2000]

- Tracing: two apps on one database, one exporting every request's spans over OTLP/HTTP to a local
  receiver (tests/utils/otlp.py, in a process of its own as a collector would be, batched as in
  production), one with tracing off; the same question
  to both back to back, in alternating order, at concurrency 1: the paired difference is what tracing
  adds end to end. Answers cite one chunk (``--top-k``): tracing's spans are the same for any answer,
  and a short answer keeps the pairs' noise far below the 1 ms being measured.
- Sampling: one app (tracing off), the same question with a configuration that samples every answer
  for online evaluation and one that samples none (identical otherwise), paired the same way: the
  queue row is written with the ledger row after the response, so it should add nothing a client sees.
- On, without the answer: a request's spans and attributes alone, exported the same way (microseconds
  per request), since the end-to-end pairs carry the machine's noise.
- Off: one ``with stage(...)`` outside a traced request (what each of a request's 8 stages costs when
  tracing is off), in nanoseconds.
- Worker: queued answers (the sampled ones above, copied to ``--answers`` rows) measured by the
  online evaluator with the reference-free measures; answers per second.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.util.types import AttributeValue
from pydantic import SecretStr

from app.keys import create_key
from app.main import create_app
from app.online_eval import online_evaluator
from bench.common import bench_server, fresh_database, paired_summary, percentile, write_result
from core.catalog import Catalog
from core.config import load_config
from core.embedding import get_embedder
from core.settings import Settings
from core.tracing import Tracing, annotate, stage
from ingest.pipeline import IngestPipeline
from tests.utils.server import serve_in_thread

ROOT = Path(__file__).resolve().parent.parent
BUDGET = Decimal(1_000_000)
RATE = "\n  sample_rate: 0.1\n"


def write_configs(folder: Path) -> Path:
    """default (samples none), ``sampled`` (every answer): the same file but for online_eval.sample_rate."""
    default = (ROOT / "configs" / "default.yaml").read_text()
    assert default.count(RATE) == 1, "configs/default.yaml: online_eval.sample_rate moved"
    shutil.copy(ROOT / "configs" / "pricing.yaml", folder / "pricing.yaml")
    (folder / "default.yaml").write_text(default.replace(RATE, "\n  sample_rate: 0.0\n"))
    (folder / "sampled.yaml").write_text(default.replace(RATE, "\n  sample_rate: 1.0\n"))
    return folder


def paired(
    sides: list[tuple[str, Callable[[str], httpx.Response]]], questions: list[str], rounds: int
) -> dict[str, Any]:
    """End-to-end time of side 0 minus side 1, same question back to back, alternating which goes first."""
    diffs: list[float] = []
    for r in range(rounds):
        for i, question in enumerate(questions):
            timed: dict[str, float] = {}
            for name, send in sides if (i + r) % 2 == 0 else sides[::-1]:
                t0 = time.perf_counter()
                response = send(question)
                timed[name] = (time.perf_counter() - t0) * 1000
                response.raise_for_status()
            diffs.append(timed[sides[0][0]] - timed[sides[1][0]])
    return paired_summary(diffs, digits=3)


@contextlib.contextmanager
def traced_app(settings: Settings, endpoint: str) -> Iterator[Any]:
    """An app exporting spans to ``endpoint`` the standard way (OTEL_EXPORTER_OTLP_ENDPOINT, batch processor)."""
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    try:
        yield create_app(settings, tracing=Tracing.from_environment())
    finally:
        del os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]


def off_cost_ns(calls: int = 200_000) -> float:
    """What one stage span costs a request when tracing is off (outside a traced request): ns per ``with stage()``."""
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        with stage("ragops.embed"):
            pass
    return (time.perf_counter_ns() - t0) / calls


RECEIVER = """
import sys
from tests.utils.otlp import otlp_receiver
with otlp_receiver() as receiver:
    print(receiver.url, flush=True)
    sys.stdin.read()
    print(len(receiver.spans), flush=True)
"""


@contextlib.contextmanager
def receiver_process() -> Iterator[tuple[str, Callable[[], int]]]:
    """The OTLP receiver in its own process (a collector never shares the service's interpreter and its GIL):
    its URL, and a call that stops it and returns how many spans it received."""
    child = subprocess.Popen(
        [sys.executable, "-c", RECEIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    received: list[int] = []

    def stop() -> int:
        if not received:
            child.stdin.close()  # type: ignore[union-attr]
            received.append(int(child.stdout.readline()))  # type: ignore[union-attr]
            child.wait(30)
        return received[0]

    try:
        yield child.stdout.readline().strip(), stop
    finally:
        if child.poll() is None:
            stop()


def traced_request_cost_us(endpoint: str, calls: int = 3000) -> float:
    """What tracing costs one request's thread when on (median, microseconds): the root span, a span per
    stage and the attributes, handed to the batch exporter (which sends to ``endpoint`` from its own thread).

    The end-to-end pairs above carry the machine's noise; this is the same work without the answer around it.
    """
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    try:
        tracing = Tracing.from_environment()
    finally:
        del os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
    stages = ("ragops.auth", "ragops.pii.question", "ragops.embed", "ragops.retrieve", "ragops.pii.context",
              "ragops.generate", "ragops.pii.answer", "ragops.accounting")  # fmt: skip
    attributes: dict[str, AttributeValue | None] = {
        "ragops.config.version": "default@0123456789ab", "gen_ai.usage.input_tokens": 812,
        "gen_ai.usage.output_tokens": 64, "ragops.cost_usd": 0.0,
    }  # fmt: skip
    durations = []
    try:
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            with tracing.request("ragops.request", {}):
                for name in stages:
                    with stage(name):
                        pass
                annotate(attributes)
            durations.append((time.perf_counter_ns() - t0) / 1000)
            time.sleep(0.002)  # paced like traffic: the exporter's queue never overflows (no span dropped)
        return percentile(durations, 50)
    finally:
        tracing.shutdown()


def worker_throughput(database: Any, configs: Path, answers: int) -> dict[str, Any]:
    """Copy the queued answers up to ``answers`` rows, then time the evaluator emptying the queue."""
    with database.connect() as conn:
        queued = conn.execute("SELECT count(*) FROM online_eval_queue").fetchone()[0]
        copies = max(answers // max(queued, 1) - 1, 0)
        conn.execute(
            """INSERT INTO online_eval_queue (request_id, collection, config_version, prompt_version, index_version,
                   index_version_id, answer, chunk_ids, scores, refused, cited, pii_entities, latency_ms, cost_usd)
               SELECT request_id || '-' || g, collection, config_version, prompt_version, index_version,
                   index_version_id, answer, chunk_ids, scores, refused, cited, pii_entities, latency_ms, cost_usd
               FROM online_eval_queue, generate_series(1, %s) g""",
            (copies,),
        )
        total = conn.execute("SELECT count(*) FROM online_eval_queue").fetchone()[0]
        evaluator = online_evaluator(Catalog.load(configs, ROOT / "prompts", "default"))
        t0 = time.perf_counter()
        done = 0
        while n := evaluator.run_once(conn):
            done += n
        seconds = time.perf_counter() - t0
        measured = conn.execute("SELECT sum(answers), sum(support_n) FROM online_quality").fetchone()
    return {
        "answers": done, "queued": total, "seconds": round(seconds, 2), "answers_per_s": round(done / seconds, 1),
        "aggregated": int(measured[0] or 0), "with_support": int(measured[1] or 0),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench online")
    parser.add_argument("--pairs", type=int, default=40, help="questions per paired round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--top-k", type=int, default=1,
        help="chunks per answer: the extractive generator's time (and its noise) grows with it; tracing's and "
        "sampling's cost does not",
    )  # fmt: skip
    parser.add_argument("--answers", type=int, default=2000, help="queued answers the worker measures")
    args = parser.parse_args(argv)
    questions = [json.loads(line)["question"] for line in (ROOT / "evals/datasets/sample.jsonl").open()]
    questions = questions[: args.pairs]
    config = load_config("default", ROOT / "configs")
    result: dict[str, Any] = {"corpus": "bundled samples/", "generator": "extractive", "top_k": args.top_k}
    result["tracing_off_ns_per_stage"] = round(off_cost_ns(), 1)
    configs = write_configs(Path(tempfile.mkdtemp(prefix="ragops-online-")))
    with bench_server() as admin_uri, receiver_process() as (receiver_url, stop_receiver):
        database = fresh_database(admin_uri, "online_bench")
        with database.connect() as conn:
            IngestPipeline(conn, config, get_embedder(config.config.index.embedding)).run(ROOT / "samples")
            key = create_key(conn, "bench", ["query"], collections=["*"], configs=["*"], budget_usd_day=BUDGET)[1]
        settings = Settings(
            database_url=SecretStr(database.url), configs_dir=configs, prompts_dir=ROOT / "prompts",
            vllm_url=None, db_pool_max=20,
        )  # fmt: skip
        headers = {"Authorization": f"Bearer {key}"}
        with (
            traced_app(settings, receiver_url) as traced,
            serve_in_thread(traced, keep_alive_s=60) as traced_url,
            serve_in_thread(create_app(settings, tracing=Tracing()), keep_alive_s=60) as plain_url,
            httpx.Client(timeout=60, headers=headers) as client,
        ):

            def ask(url: str, config: str = "default") -> Callable[[str], httpx.Response]:
                body = {"config": config, "top_k": args.top_k}
                return lambda q: client.post(f"{url}/v1/query", json={"question": q, **body})

            for url in (traced_url, plain_url):  # warm-up
                for q in questions[:10]:
                    ask(url)(q).raise_for_status()
            result["tracing_paired"] = paired([("traced", ask(traced_url)), ("off", ask(plain_url))],
                                              questions, args.rounds)  # fmt: skip
            print(json.dumps(result["tracing_paired"]), flush=True)
            sides = [("sampled", ask(plain_url, "sampled")), ("unsampled", ask(plain_url, "default"))]
            result["sampling_paired"] = paired(sides, questions, args.rounds)
            print(json.dumps(result["sampling_paired"]), flush=True)
        result["tracing_on_us_per_request"] = round(traced_request_cost_us(receiver_url), 1)
        print(json.dumps({"tracing_on_us_per_request": result["tracing_on_us_per_request"]}), flush=True)
        result["spans_received"] = stop_receiver()
        result["worker"] = worker_throughput(database, configs, args.answers)
        print(json.dumps(result["worker"]), flush=True)
    shutil.rmtree(configs, ignore_errors=True)
    path = write_result("online", result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
