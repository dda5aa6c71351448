"""Integration tier: the service against a REAL vLLM server (CPU build, tiny random-weight Llama).

The server is vLLM 0.32 from ``scripts/vllm_venv.sh`` serving a 2-layer model written by
``tests/utils/tiny_llama.py`` (no hub). Its answers are gibberish by design; these tests check
the plumbing: streaming, usage from vLLM, error mapping, disconnects, the OpenAI client.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from core.db import Database
from tests.app.conftest import authed, make_settings
from tests.conftest import REPO
from tests.utils.ledger import ledger_row
from tests.utils.server import serve_in_thread
from tests.utils.sse import parse_sse
from tests.utils.vllm_server import VllmServer, free_port

MODEL = "ragops-llm"
CONFIGS = {
    # The tiny model's 512-token BPE splits text into ~3x more tokens than cl100k: keep prompts small.
    "default": "generation:\n  backend: vllm\n  model: ragops-llm\n  max_tokens: 24\n  context_tokens: 300\n",
    "huge": "retrieval:\n  top_k: 40\ngeneration:\n  backend: vllm\n  model: ragops-llm\n  context_tokens: 100000\n",
}


@pytest.fixture(scope="session")
def vllm_configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("configs")
    for name, text in CONFIGS.items():
        (folder / f"{name}.yaml").write_text(text)
    shutil.copy(REPO / "configs" / "pricing.yaml", folder / "pricing.yaml")
    return folder


def vllm_app_client(database: Database, tmp: Path, configs: Path, vllm_url: str, key: str) -> TestClient:
    settings = make_settings(database, tmp, vllm_url=vllm_url, configs_dir=configs, vllm_read_timeout_s=30.0)
    return authed(TestClient(create_app(settings)), key)


@pytest.fixture(scope="session")
def vclient(
    served_database: Database,
    vllm_server: VllmServer,
    vllm_configs: Path,
    api_key: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("v")
    with vllm_app_client(served_database, tmp, vllm_configs, vllm_server.base_url, api_key) as c:
        yield c


def test_query_streams_deltas_and_usage_from_vllm(vclient: TestClient) -> None:
    payload = {"question": "How many PTO days do new employees get?", "stream": True}
    with vclient.stream("POST", "/v1/query", json=payload) as response:
        assert response.status_code == 200
        frames = parse_sse(response.read().decode())
    events = [e for e, _ in frames]
    assert events[0] == "citations" and events[-2:] == ["usage", "done"], events
    assert "delta" in events
    usage = json.loads(frames[-2][1])
    assert 0 < usage["completion_tokens"] <= 24
    assert usage["prompt_tokens"] > 50  # vLLM's own count of the rendered prompt
    done = json.loads(frames[-1][1])
    assert done["versions"]["model"] == MODEL


def test_non_streamed_answer_reports_vllm_usage(vclient: TestClient) -> None:
    body = vclient.post("/v1/query", json={"question": "Which days are office days?"}).json()
    assert body["versions"]["model"] == MODEL
    assert 0 < body["usage"]["completion_tokens"] <= 24
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


def test_prompt_too_long_is_a_422_with_the_reason(vclient: TestClient) -> None:
    response = vclient.post("/v1/query", json={"question": "Tell me everything about expenses", "config": "huge"})
    assert response.status_code == 422, response.text
    assert "maximum context length" in response.json()["error"]["message"]


def test_openai_client_streams_through_the_service(vclient: TestClient, api_key: str) -> None:
    with serve_in_thread(vclient.app, lifespan=False) as url:  # type: ignore[arg-type]
        api = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key)
        stream = api.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "What is the on-call rotation?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_a_hang_up_mid_stream_is_billed_and_leaves_the_service_healthy(
    vclient: TestClient, served_database: Database, api_key: str
) -> None:
    """On a real socket: vLLM reports usage only in its last chunk, which a hung-up client never gets."""
    payload = {"question": "Describe the deployment process.", "stream": True}
    app = vclient.app  # its lifespan runs in the vclient fixture
    with serve_in_thread(app, lifespan=False) as url, httpx.Client(timeout=60) as http:
        headers = {"Authorization": f"Bearer {api_key}"}
        with http.stream("POST", f"{url}/v1/query", json=payload, headers=headers) as response:
            request_id = response.headers["X-Request-Id"]
            for line in response.iter_lines():
                if line.startswith("event: delta"):
                    break  # hang up after the first token
    row = ledger_row(served_database, request_id, wait_s=10)
    assert row is not None and row["model"] == MODEL
    # The tiny model may finish its few tokens before the server sees the hang-up (then it is a
    # complete answer with vLLM's usage); either way the prompt and the tokens made are billed.
    # tests/app/test_billing.py places the hang-up deterministically with a slowed generator.
    assert (row["status"], row["error_kind"]) in ((499, "client_disconnected"), (200, None)), row
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] >= 1
    after = vclient.post("/v1/query", json={"question": "Describe the deployment process."})
    assert after.status_code == 200


def test_readiness_asks_the_model_for_a_token(vclient: TestClient) -> None:
    ready = vclient.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["generator"] == "ok"


def test_model_server_down_is_a_503_with_retry_after(
    served_database: Database, vllm_configs: Path, api_key: str, tmp_path: Path
) -> None:
    """No vLLM needed: nothing listens on the port, as when the server is down."""
    url = f"http://127.0.0.1:{free_port()}/v1"
    with vllm_app_client(served_database, tmp_path, vllm_configs, url, api_key) as client:
        response = client.post("/v1/query", json={"question": "Which days are office days?"})
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "5"
        assert "unreachable" in response.json()["error"]["message"]
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["generator"] == "failing"
        assert url.split("//")[1].split("/")[0] not in ready.text  # no internal address in the body
