"""Load on loopback: 32 concurrent clients on /v1/query (extractive generator) for 60 s, over real uvicorn.

The API runs as its own process (``ragops serve``), so its memory can be read from /proc.

    python -m bench load                      # 32 clients, 60 s -> bench/results/load.json ("load")
    python -m bench load --reindex            # ... while full reindex jobs build and activate new index versions
    python -m bench load --soak 600           # 10 minutes; API RSS sampled throughout ("soak")
    python -m bench load --api-env MALLOC_ARENA_MAX=64 --no-save   # an experiment on the API's environment

``--reindex`` asks the admin job API (``POST /v1/admin/reindex {"mode": "full", "activate": true}``,
then ``GET /v1/admin/jobs/{id}``) as an operator would. The jobs run in a separate ``ragops worker``
process, as in compose.yaml (``api`` and ``worker`` services): that is what production runs, and it
keeps the API's RSS about serving only. The load lasts at least ``--seconds`` and until the last
reindex job has ended, so it covers the build AND the activation; answers are counted per index
version to show the switch happened under load.

Requests/s counts the requests that completed inside the load window, divided by the window; requests
still in flight when it closes are drained (their latencies count, and any error), but they do not
stretch the window.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from app.keys import create_key
from bench.common import bench_server, fresh_database, percentile, write_result
from core.config import load_config
from core.db import Database
from core.embedding import get_embedder
from ingest.pipeline import IngestPipeline

ROOT = Path(__file__).resolve().parent.parent
FINISHED = ("succeeded", "failed", "cancelled")


def proc_status(pid: int) -> dict[str, int]:
    """Resident memory (KiB) and thread count of a process, from /proc."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "Threads"):
            found[name] = int(value.split()[0])
    return found


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MiB."""
    return proc_status(pid)["VmRSS"] / 1024


def _env(database: Database, data_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        **os.environ, "RAGOPS_DATABASE_URL": database.url, "RAGOPS_DB_POOL_MAX": "20", "RAGOPS_CONFIG": "default",
        "RAGOPS_CONFIGS_DIR": str(ROOT / "configs"), "RAGOPS_PROMPTS_DIR": str(ROOT / "prompts"),
        "RAGOPS_DATA_DIR": str(data_dir), "RAGOPS_WORKER_IN_PROCESS": "false",
        "RAGOPS_LOG_LEVEL": "WARNING",  # no access log line per request: the load measures answering
        **(extra or {}),
    }  # fmt: skip
    env.pop("RAGOPS_VLLM_URL", None)
    return env


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def api_process(
    database: Database, port: int, data_dir: Path, extra_env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``ragops serve`` on loopback, on ``database``, until the block ends."""
    serve = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    with _process(serve, _env(database, data_dir, extra_env)) as proc:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the API exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not start in 120 s")
            time.sleep(0.3)
        yield proc


@contextlib.contextmanager
def worker_process(database: Database, data_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``ragops worker``: runs the reindex jobs the admin API queues, as compose.yaml's worker service."""
    with _process(["worker"], _env(database, data_dir)) as proc:
        yield proc


async def run_load(
    url: str,
    keys: list[str],
    questions: list[str],
    clients: int,
    seconds: float,
    *,
    admin_key: str | None = None,
    api_pid: int | None = None,
    sample_every_s: float = 5.0,
    slo_s: float = 10.0,
) -> dict[str, Any]:
    """``clients`` concurrent loops of POST /v1/query for ``seconds``, client ``n`` with ``keys[n % len(keys)]``.

    One key per client is a load of many users: one key alone would meet its own in-flight limit
    (``key_max_concurrent``) and measure refusals rather than the service.

    With ``admin_key``, full reindex jobs (activated when built) run back to back through the admin
    API, and the load goes on until the last one has ended. With ``api_pid``, the API's RSS and
    thread count are sampled every ``sample_every_s``. An answer slower than ``slo_s`` is a failure
    (the client gives up at the SLO, as a user's client would), not a slow success.
    """
    latencies: list[float] = []
    errors: dict[str, int] = {}
    versions: dict[str, int] = {}
    in_window = 0
    reindexes: list[dict[str, Any]] = []
    samples: list[dict[str, float]] = []
    stop = asyncio.Event()
    started = time.monotonic()

    async def client_loop(n: int, http: httpx.AsyncClient) -> None:
        nonlocal in_window
        i = n
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                response = await http.post(
                    "/v1/query", json={"question": questions[i % len(questions)]}, headers=auth[n % len(auth)]
                )
                ok, kind = response.status_code == 200, str(response.status_code)
                if ok:
                    index = response.json()["versions"]["index"]
                    versions[index] = versions.get(index, 0) + 1
            except httpx.TimeoutException:
                ok, kind = False, f"slower than the {slo_s:g} s SLO"
            except httpx.HTTPError as exc:
                ok, kind = False, type(exc).__name__
            if ok:
                latencies.append((time.perf_counter() - t0) * 1000)
                in_window += not stop.is_set()
            else:
                errors[kind] = errors.get(kind, 0) + 1
            i += clients

    async def reindex_loop(http: httpx.AsyncClient) -> None:
        assert admin_key is not None
        headers = {"Authorization": f"Bearer {admin_key}"}
        while time.monotonic() - started < seconds:
            body = {"mode": "full", "activate": True, "source": "samples"}
            queued = await http.post("/v1/admin/reindex", json=body, headers=headers)
            queued.raise_for_status()
            job_id, t0 = queued.json()["job_id"], time.monotonic()
            while (job := (await http.get(f"/v1/admin/jobs/{job_id}", headers=headers)).json())[
                "status"
            ] not in FINISHED:
                await asyncio.sleep(1.0)
            reindexes.append({
                "job_id": job_id, "status": job["status"], "activated": job["activated"],
                "started_at_s": round(t0 - started, 1), "seconds": round(time.monotonic() - t0, 1),
                "docs": job["docs_done"], "chunks": job["chunks_done"], "errors": len(job["errors"]),
                "index_version_id": job["index_version_id"], "error": job["error"],
            })  # fmt: skip

    async def sampler() -> None:
        assert api_pid is not None
        while not stop.is_set():
            status = proc_status(api_pid)
            samples.append({
                "t_s": round(time.monotonic() - started), "rss_mb": round(status["VmRSS"] / 1024, 1),
                "threads": status["Threads"],
            })  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), sample_every_s)

    auth = [{"Authorization": f"Bearer {key}"} for key in keys]
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=slo_s) as http:
        background = [asyncio.ensure_future(sampler())] if api_pid is not None else []
        loads = [asyncio.ensure_future(client_loop(n, http)) for n in range(clients)]
        if admin_key is not None:
            await asyncio.gather(asyncio.sleep(seconds), reindex_loop(http))
        else:
            await asyncio.sleep(seconds)
        window = time.monotonic() - started
        stop.set()
        drain_started = time.monotonic()
        await asyncio.gather(*loads, *background)
        drain = time.monotonic() - drain_started
    result: dict[str, Any] = {
        "clients": clients, "keys": len(keys), "seconds": round(window, 1),
        "requests": len(latencies) + sum(errors.values()),
        "requests_per_s": round(in_window / window, 2), "p50_ms": round(percentile(latencies, 50), 1),
        "p95_ms": round(percentile(latencies, 95), 1), "p99_ms": round(percentile(latencies, 99), 1),
        "slo_s": slo_s, "drain_s": round(drain, 1), "errors": sum(errors.values()),
        "error_kinds": errors, "answers_by_index_version": versions,
    }  # fmt: skip
    if admin_key is not None:
        result["reindexes"] = reindexes
    if samples:
        result["api_memory"] = samples
        result["api_rss_mb_peak_under_load"] = max(sample["rss_mb"] for sample in samples)
    return result


def _pairs(items: list[str]) -> dict[str, str]:
    pairs = dict(item.split("=", 1) for item in items)
    return {k.strip(): v.strip() for k, v in pairs.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench load")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--soak", type=float, default=None, metavar="SECONDS", help="Soak: report API RSS growth.")
    parser.add_argument("--reindex", action="store_true", help="Full reindex jobs (admin API) during the load.")
    parser.add_argument("--api-env", action="append", default=[], metavar="NAME=VALUE", help="Extra API env.")
    parser.add_argument("--no-save", action="store_true", help="Print the result only (experiments).")
    parser.add_argument("--slo", type=float, default=10.0, help="Seconds; a slower answer counts as a failure.")
    args = parser.parse_args(argv)
    questions = [json.loads(line)["question"] for line in (ROOT / "evals/datasets/sample.jsonl").open()]
    config = load_config("default", ROOT / "configs")
    data_dir = Path(tempfile.mkdtemp(prefix="ragops-load-"))
    seconds = args.soak if args.soak else args.seconds
    with bench_server() as admin_uri:
        database = fresh_database(admin_uri, "load_bench")
        with database.connect() as conn:
            IngestPipeline(conn, config, get_embedder(config.config.index.embedding)).run(ROOT / "samples")
            keys = [
                create_key(conn, f"load-{n}", ["query"], collections=["*"], configs=["*"])[1]
                for n in range(args.clients)
            ]
            admin_key = (
                create_key(conn, "load-admin", ["admin"], collections=["*"], configs=["*"])[1] if args.reindex else None
            )
        from tests.utils.server import free_port

        port = free_port()
        extra_env = _pairs(args.api_env)
        with contextlib.ExitStack() as stack:
            api = stack.enter_context(api_process(database, port, data_dir, extra_env))
            if args.reindex:
                stack.enter_context(worker_process(database, data_dir))
            url = f"http://127.0.0.1:{port}"
            asyncio.run(run_load(url, keys, questions, 4, 5))  # warm-up: model, pool, caches
            rss_start = rss_mb(api.pid)
            every = max(5.0, seconds / 20)
            run = asyncio.run(
                run_load(url, keys, questions, args.clients, seconds, admin_key=admin_key, api_pid=api.pid,
                         sample_every_s=every, slo_s=args.slo)
            )  # fmt: skip
            # "end" is read after the clients stopped; the peak under load is in api_rss_mb_peak_under_load.
            run["api_rss_mb_start"], run["api_rss_mb_end"] = round(rss_start, 1), round(rss_mb(api.pid), 1)
    run["generator"] = "extractive"
    run["reindex_runs_in"] = "ragops worker process" if args.reindex else None
    if extra_env:
        run["api_env"] = extra_env
    print(json.dumps(run), flush=True)
    kind = "soak" if args.soak else "load"
    result: dict[str, Any] = {kind: run}
    if not args.no_save:  # load and soak are separate results, each with its own date and commit
        print(f"wrote {write_result(kind, result)}")
    return result


if __name__ == "__main__":
    main()
