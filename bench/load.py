"""Load on loopback: 32 concurrent clients on /v1/query (extractive generator) for 60 s, over real uvicorn.

The API runs as its own process (``ragops serve``), so its memory can be read from /proc.

    python -m bench load                      # 32 clients, 60 s -> bench/results/load.json ("load")
    python -m bench load --reindex            # ... while full re-ingests build new index versions
    python -m bench load --soak 600           # 10 minutes; API RSS at start and end ("soak")

``--reindex`` drives ``ragops ingest`` into new index versions in a subprocess; ``run_load`` takes any
``reindex`` callable (e.g. one that asks the admin job API) so another driver can be plugged in.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from app.keys import create_key
from bench.common import RESULTS, bench_server, fresh_database, percentile, write_result
from ingest.config import load_config
from ingest.db import Database
from ingest.embedding import get_embedder
from ingest.pipeline import IngestPipeline

ROOT = Path(__file__).resolve().parent.parent
# Started when the load starts and polled until it ends: returns a process (or any object with poll()).
Reindex = Callable[[], "subprocess.Popen[bytes]"]


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@contextlib.contextmanager
def api_process(database: Database, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``ragops serve`` on loopback, on ``database``, until the block ends."""
    env = {
        **os.environ, "RAGOPS_DATABASE_URL": database.url, "RAGOPS_DB_POOL_MAX": "20", "RAGOPS_CONFIG": "default",
        "RAGOPS_CONFIGS_DIR": str(ROOT / "configs"), "RAGOPS_PROMPTS_DIR": str(ROOT / "prompts"),
    }  # fmt: skip
    env.pop("RAGOPS_VLLM_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
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
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def ingest_reindexer(database: Database) -> Reindex:
    """A full re-ingest of samples/ into a new index version (another chunk size each time), in a subprocess."""
    folder = Path(tempfile.mkdtemp(prefix="ragops-reindex-"))
    sizes = iter(range(190, 60, -10))

    def start() -> subprocess.Popen[bytes]:
        name = f"reindex{next(sizes)}"
        size = name.removeprefix("reindex")
        (folder / f"{name}.yaml").write_text(f"index:\n  chunking:\n    chunk_size: {size}\n    chunk_overlap: 20\n")
        env = {**os.environ, "RAGOPS_DATABASE_URL": database.url, "RAGOPS_CONFIGS_DIR": str(folder)}
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "ingest", str(ROOT / "samples"), "--config", name],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    return start


async def run_load(
    url: str, key: str, questions: list[str], clients: int, seconds: float, reindex: Reindex | None = None
) -> dict[str, Any]:
    """``clients`` concurrent loops of POST /v1/query for ``seconds``; with ``reindex``, reindexing throughout."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    reindexes: list[dict[str, Any]] = []

    async def client_loop(n: int, http: httpx.AsyncClient) -> None:
        i = n
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                response = await http.post("/v1/query", json={"question": questions[i % len(questions)]})
                ok = response.status_code == 200
                kind = str(response.status_code)
            except httpx.HTTPError as exc:
                ok, kind = False, type(exc).__name__
            if ok:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                errors[kind] = errors.get(kind, 0) + 1
            i += clients

    async def reindex_loop() -> None:
        assert reindex is not None
        while time.monotonic() < deadline:
            started = time.monotonic()
            proc = reindex()
            while proc.poll() is None:
                await asyncio.sleep(0.5)
            reindexes.append({"seconds": round(time.monotonic() - started, 1), "exit_code": proc.returncode})

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=120) as http:
        started = time.monotonic()
        reindexing = asyncio.ensure_future(reindex_loop()) if reindex is not None else None
        await asyncio.gather(*(client_loop(n, http) for n in range(clients)))
        wall = time.monotonic() - started  # the load's own time, not the last reindex's tail
        if reindexing is not None:
            await reindexing
    result: dict[str, Any] = {
        "clients": clients, "seconds": round(wall, 1), "requests": len(latencies) + sum(errors.values()),
        "requests_per_s": round(len(latencies) / wall, 2), "p50_ms": round(percentile(latencies, 50), 1),
        "p95_ms": round(percentile(latencies, 95), 1), "errors": sum(errors.values()), "error_kinds": errors,
    }  # fmt: skip
    if reindex is not None:
        result["reindexes"] = reindexes
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench load")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--soak", type=float, default=None, metavar="SECONDS", help="Soak: report API RSS growth.")
    parser.add_argument("--reindex", action="store_true", help="Re-ingest into new index versions meanwhile.")
    args = parser.parse_args(argv)
    questions = [json.loads(line)["question"] for line in (ROOT / "evals/datasets/sample.jsonl").open()]
    config = load_config("default", ROOT / "configs")
    path = RESULTS / "load.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    result: dict[str, Any] = {k: v for k, v in previous.items() if k in ("load", "soak")}
    with bench_server() as admin_uri:
        database = fresh_database(admin_uri, "load_bench")
        with database.connect() as conn:
            IngestPipeline(conn, config, get_embedder(config.config.index.embedding)).run(ROOT / "samples")
            key = create_key(conn, "load", ["query"])[1]
        from bench.api_latency import free_port

        port = free_port()
        with api_process(database, port) as api:
            url = f"http://127.0.0.1:{port}"
            asyncio.run(run_load(url, key, questions, 4, 5))  # warm-up: model, pool, caches
            rss_start = rss_mb(api.pid)
            reindex = ingest_reindexer(database) if args.reindex else None
            seconds = args.soak if args.soak else args.seconds
            run = asyncio.run(run_load(url, key, questions, args.clients, seconds, reindex))
            run["api_rss_mb_start"], run["api_rss_mb_end"] = round(rss_start, 1), round(rss_mb(api.pid), 1)
    run["generator"] = "extractive"
    result["soak" if args.soak else "load"] = run
    print(json.dumps(run), flush=True)
    print(f"wrote {write_result('load', result)}")
    return result


if __name__ == "__main__":
    main()
