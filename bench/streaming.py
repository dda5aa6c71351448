"""Time to first token through the service vs calling the same vLLM server directly, same prompt.

The service's TTFT includes embedding the question and searching; those stages are reported
per request and subtracted, so the overhead is what the service adds on top of vLLM itself
(prompt rendering, the extra HTTP hop, SSE framing), measured with PII filtering off. With it on
(the default), the stream filter holds back ``stream_window_chars`` of generated text, so the
first text leaves once a word clears that window: reported as the paired difference (its cost in
ms depends on how fast the model writes: ~20 tokens of an 80-character window). Prefix caching
is off on the server so no path benefits from another's prompt; the order of the calls rotates.

    python -m bench streaming [--questions 30]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from app.keys import create_key
from app.main import create_app
from app.rag import Question, RagPipeline
from bench.common import bench_server, fresh_database, percentile, write_result
from core.access import EVERYTHING
from core.catalog import Catalog
from core.config import load_config
from core.embedding import get_embedder
from core.settings import Settings
from ingest.pipeline import IngestPipeline
from tests.utils.server import serve_in_thread
from tests.utils.tiny_llama import write_tiny_llama
from tests.utils.vllm_server import VllmServer, find_vllm_python

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "generation:\n  backend: vllm\n  model: ragops-llm\n  max_tokens: 64\n  context_tokens: 300\n"


def first_token_direct(client: httpx.Client, base_url: str, messages: list[dict[str, str]]) -> float:
    payload = {"model": "ragops-llm", "messages": messages, "max_tokens": 16, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    with client.stream("POST", f"{base_url}/chat/completions", json=payload) as response:
        for line in response.iter_lines():
            if line.startswith("data:") and '"content":"' in line and '"content":""' not in line:
                return (time.perf_counter() - t0) * 1000
    raise RuntimeError("no token")


def first_token_service(client: httpx.Client, url: str, question: str, config: str) -> tuple[float, float]:
    """(client time to the first delta event, embed+retrieve ms reported by the server)."""
    t0 = time.perf_counter()
    ttft = None
    body = {"question": question, "stream": True, "config": config}
    with client.stream("POST", f"{url}/v1/query", json=body) as response:
        for line in response.iter_lines():
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
        (configs / "nopii.yaml").write_text(CONFIG + "pii:\n  enabled: false\n")
        (configs / "pricing.yaml").write_bytes((ROOT / "configs" / "pricing.yaml").read_bytes())
        config = load_config("default", configs)
        database = fresh_database(admin_uri, "streaming_bench")
        with database.connect() as conn:
            IngestPipeline(conn, config, get_embedder(config.config.index.embedding)).run(ROOT / "samples")
            key = create_key(conn, "bench", ["query"], collections=["*"], configs=["*"])[1]
        model = write_tiny_llama(Path(tmp) / "model")
        with VllmServer(model, python=python, served_model_name="ragops-llm", max_model_len=2048,
                        extra_args=["--no-enable-prefix-caching"]) as server:  # fmt: skip
            settings = Settings(
                database_url=SecretStr(database.url), configs_dir=configs, prompts_dir=ROOT / "prompts",
                vllm_url=server.base_url,
            )  # fmt: skip
            # Kept-alive connections on both paths, as the service keeps its own to vLLM.
            with (
                serve_in_thread(create_app(settings)) as url,
                httpx.Client(timeout=60) as direct_client,
                httpx.Client(timeout=60, headers={"Authorization": f"Bearer {key}"}) as client,
            ):
                catalog = Catalog.load(configs, ROOT / "prompts", "default")
                with database.pool(2) as pool:
                    pipeline = RagPipeline(settings, catalog, pool)
                    prompts = [pipeline.prepare(Question(text=q), EVERYTHING).request.messages for q in questions]
                for q, m in zip(questions[:3], prompts[:3], strict=True):  # warm-up every path
                    first_token_direct(direct_client, server.base_url, m)
                    first_token_service(client, url, q, "nopii")
                    first_token_service(client, url, q, "default")
                direct, service, overhead, service_pii, pii_delay = [], [], [], [], []
                for i, (question, messages) in enumerate(zip(questions, prompts, strict=True)):
                    calls: dict[str, Callable[[], Any]] = {
                        "direct": partial(first_token_direct, direct_client, server.base_url, messages),
                        "nopii": partial(first_token_service, client, url, question, "nopii"),
                        "pii": partial(first_token_service, client, url, question, "default"),
                    }
                    names = list(calls)
                    order = names[i % 3 :] + names[: i % 3]  # rotate, so no path always goes first
                    took = {name: calls[name]() for name in order}
                    (s, stages), (s_pii, _) = took["nopii"], took["pii"]
                    direct.append(took["direct"])
                    service.append(s)
                    overhead.append(s - stages - took["direct"])
                    service_pii.append(s_pii)
                    pii_delay.append(s_pii - s)

    def p50_p95(values: list[float]) -> dict[str, float]:
        return {"p50": round(percentile(values, 50), 1), "p95": round(percentile(values, 95), 1)}

    result = {
        "model": "tiny random-weight Llama on vLLM 0.32 CPU, prefix caching off",
        "questions": len(questions),
        "direct_ttft_ms": p50_p95(direct),
        "service_ttft_ms": p50_p95(service),
        "service_overhead_ms": p50_p95(overhead),
        # PII on (the default): the first text waits for a word to clear the stream window.
        "service_ttft_pii_ms": p50_p95(service_pii),
        "pii_first_text_delay_ms": p50_p95(pii_delay),
        "stream_window_chars": config.config.pii.stream_window_chars,
    }
    path = write_result("streaming", result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
