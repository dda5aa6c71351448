"""Time to first token through the service vs calling the same vLLM server directly, same prompt.

The service's TTFT includes embedding the question and searching; those stages are reported
per request and subtracted, so the overhead is what the service adds on top of vLLM itself
(prompt rendering, the extra HTTP hop, SSE framing). Prefix caching is off on the server so
neither path benefits from the other's prompt; the order of the two calls alternates.

    python -m bench streaming [--questions 30]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from pydantic import SecretStr

from app.catalog import Catalog
from app.keys import create_key
from app.main import create_app
from app.rag import Question, RagPipeline
from bench.common import bench_server, fresh_database, percentile, write_result
from ingest.config import load_config
from ingest.embedding import get_embedder
from ingest.pipeline import IngestPipeline
from ingest.settings import Settings
from tests.utils.server import free_port
from tests.utils.tiny_llama import write_tiny_llama
from tests.utils.vllm_server import VllmServer, find_vllm_python

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "generation:\n  backend: vllm\n  model: ragops-llm\n  max_tokens: 16\n  context_tokens: 300\n"


def first_token_direct(base_url: str, messages: list[dict[str, str]]) -> float:
    payload = {"model": "ragops-llm", "messages": messages, "max_tokens": 16, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    with httpx.stream("POST", f"{base_url}/chat/completions", json=payload, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data:") and '"content":"' in line and '"content":""' not in line:
                return (time.perf_counter() - t0) * 1000
    raise RuntimeError("no token")


def first_token_service(url: str, question: str, key: str) -> tuple[float, float]:
    """(client TTFT, embed+retrieve ms reported by the server)."""
    t0 = time.perf_counter()
    ttft = None
    body = {"question": question, "stream": True}
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream("POST", f"{url}/v1/query", json=body, headers=headers, timeout=60) as response:
        lines = response.iter_lines()
        for line in lines:
            if ttft is None and line == "event: delta":
                ttft = (time.perf_counter() - t0) * 1000
            if line.startswith("data:") and '"timings"' in line:
                timings = json.loads(line[5:])["timings"]
                assert ttft is not None
                return ttft, timings["embed_ms"] + timings["retrieve_ms"]
    raise RuntimeError("no done event")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench streaming")
    parser.add_argument("--questions", type=int, default=30)
    args = parser.parse_args(argv)
    python = find_vllm_python()
    if python is None:
        raise SystemExit("the vLLM venv is missing: run scripts/vllm_venv.sh")
    questions = [json.loads(line)["question"] for line in (ROOT / "evals/datasets/sample.jsonl").open()]
    questions = questions[: args.questions]
    with tempfile.TemporaryDirectory() as tmp, bench_server() as admin_uri:
        configs = Path(tmp) / "configs"
        configs.mkdir()
        (configs / "default.yaml").write_text(CONFIG)
        (configs / "pricing.yaml").write_bytes((ROOT / "configs" / "pricing.yaml").read_bytes())
        config = load_config("default", configs)
        database = fresh_database(admin_uri, "streaming_bench")
        with database.connect() as conn:
            IngestPipeline(conn, config, get_embedder(config.config.index.embedding)).run(ROOT / "samples")
            key = create_key(conn, "bench", ["query"])[1]
        model = write_tiny_llama(Path(tmp) / "model")
        with VllmServer(model, python=python, served_model_name="ragops-llm", max_model_len=2048,
                        extra_args=["--no-enable-prefix-caching"]) as server:  # fmt: skip
            settings = Settings(
                database_url=SecretStr(database.url), configs_dir=configs, prompts_dir=ROOT / "prompts",
                vllm_url=server.base_url,
            )  # fmt: skip
            port = free_port()
            uv = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
            thread = threading.Thread(target=uv.run, daemon=True)
            thread.start()
            while not uv.started:
                time.sleep(0.1)
            url = f"http://127.0.0.1:{port}"
            catalog = Catalog.load(configs, ROOT / "prompts", "default")
            with database.pool(2) as pool:
                pipeline = RagPipeline(settings, catalog, pool)
                prompts = [pipeline.prepare(Question(text=q)).request.messages for q in questions]
            for q, m in zip(questions[:3], prompts[:3], strict=True):  # warm-up both paths
                first_token_direct(server.base_url, m)
                first_token_service(url, q, key)
            direct, service, overhead = [], [], []
            for i, (question, messages) in enumerate(zip(questions, prompts, strict=True)):
                if i % 2:
                    d = first_token_direct(server.base_url, messages)
                    s, stages = first_token_service(url, question, key)
                else:
                    s, stages = first_token_service(url, question, key)
                    d = first_token_direct(server.base_url, messages)
                direct.append(d)
                service.append(s)
                overhead.append(s - stages - d)
            uv.should_exit = True
            thread.join(10)
    result = {
        "model": "tiny random-weight Llama on vLLM 0.32 CPU, prefix caching off",
        "questions": len(questions),
        "direct_ttft_ms": {"p50": round(percentile(direct, 50), 1), "p95": round(percentile(direct, 95), 1)},
        "service_ttft_ms": {"p50": round(percentile(service, 50), 1), "p95": round(percentile(service, 95), 1)},
        "service_overhead_ms": {"p50": round(percentile(overhead, 50), 1), "p95": round(percentile(overhead, 95), 1)},
    }
    path = write_result("streaming", result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
