"""The HTTP API over the bundled samples with the extractive generator (the embedded default)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from app.generators.base import NOT_FOUND_ANSWER
from core.config import load_config
from core.db import Database
from core.embedding import Embedder
from ingest.pipeline import IngestPipeline
from tests.conftest import REPO
from tests.utils.server import serve_in_thread
from tests.utils.sse import parse_sse


@pytest.mark.parametrize(
    ("question", "source", "fact"),
    [
        ("How many PTO days does a new employee get in their first year?", "handbook/pto.md", None),
        ("After I roll an API key, how long does the old key keep working?", "product/kb_articles.jsonl#kb-001", "48"),
        ("Which days do hybrid employees have to be in the office?", "handbook/remote_work.md", "Tuesday"),
    ],
)
def test_query_answers_with_citations_usage_and_versions(
    client: TestClient, question: str, source: str, fact: str | None
) -> None:
    response = client.post("/v1/query", json={"question": question})
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["X-Request-Id"] == body["request_id"]
    sources = [c["source"] for c in body["citations"]]
    assert source in sources
    assert body["answer"] != NOT_FOUND_ANSWER
    assert "[" in body["answer"]  # cites
    if fact:
        assert fact in body["answer"]
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0 and usage["embedding_tokens"] > 0
    versions = body["versions"]
    assert versions["config"].startswith("default@") and versions["prompt"].startswith("default@")
    assert versions["index"].startswith("v") and versions["model"] == "extractive"


def test_answers_are_the_same_with_the_query_cache_cold_and_warm(client: TestClient, embedder: Embedder) -> None:
    """The second asking takes the question's vector from the cache and answers with the same citations.

    The extractive generator scores the sentences with the vectors stored at ingest and the question's
    vector that retrieval computed: after the first asking, both retrieval and the generator hit the cache.
    """
    question = {"question": "How many PTO days does a new employee get in their first year?"}
    generator = client.app.state.pipeline.generator(client.app.state.catalog.config(None))  # type: ignore[attr-defined]
    stored, embedded = generator.vectors_stored, generator.vectors_embedded
    embedder.clear_query_cache()
    cold = client.post("/v1/query", json=question).json()
    hits = embedder.query_cache_hits
    warm = client.post("/v1/query", json=question).json()
    assert embedder.query_cache_hits == hits + 2
    assert warm["citations"] == cold["citations"] and cold["citations"]
    assert warm["answer"] == cold["answer"]
    assert generator.vectors_stored > stored and generator.vectors_embedded == embedded
    metrics = client.get("/metrics").text
    counted = re.search(r'ragops_extractive_candidates_total\{vector="stored"\} ([0-9.e+]+)', metrics)
    assert counted and float(counted.group(1)) >= generator.vectors_stored


@pytest.mark.parametrize(
    "question",
    [
        "What is the CEO's favourite ice cream flavour?",
        # Its company-history subtitle scores well; no sentence holds a rare word of it (stock, ticker, symbol).
        "What is Kestrel Freight's stock ticker symbol?",
    ],
)
def test_unanswerable_question_says_so(client: TestClient, question: str) -> None:
    body = client.post("/v1/query", json={"question": question}).json()
    assert body["answer"] == NOT_FOUND_ANSWER


def test_streaming_sends_citations_then_deltas_then_usage_then_done(client: TestClient) -> None:
    payload = {"question": "How long are webhook delivery logs kept?", "stream": True}
    with client.stream("POST", "/v1/query", json=payload) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = parse_sse(response.read().decode())
    events = [e for e, _ in frames]
    assert events[0] == "citations" and events[-2:] == ["usage", "done"]
    assert set(events[1:-2]) == {"delta"} and len(events) >= 4  # short answers leave the PII filter whole
    text = "".join(json.loads(d)["text"] for e, d in frames if e == "delta")
    plain = client.post("/v1/query", json={"question": payload["question"]}).json()
    assert text == plain["answer"]  # deterministic, same as non-streamed
    assert json.loads(frames[-1][1])["versions"]["config"].startswith("default@")


@pytest.mark.parametrize(
    ("first", "follow_up", "fact"),
    [
        # "secondary" is in no document: the follow-up alone was refused although the section was retrieved
        ("How long is parental leave for the primary caregiver?", "And for the secondary one?", None),
        ("How long is parental leave for a birthing parent?", "And for adoptive parents?", "12 weeks"),
    ],
)
def test_chat_uses_the_previous_turn_for_a_short_follow_up(
    client: TestClient, first: str, follow_up: str, fact: str | None
) -> None:
    """Retrieval and the extractive generator's sentence choice both read the turn before a short follow-up."""
    messages = [
        {"role": "user", "content": first},
        {"role": "assistant", "content": "..."},
        {"role": "user", "content": follow_up},
    ]
    body = client.post("/v1/chat", json={"messages": messages}).json()
    assert body["answer"] != NOT_FOUND_ANSWER
    cited = {int(n) for n in re.findall(r"\[(\d+)\]", body["answer"])}
    assert "handbook/parental_leave.md" in [c["source"] for c in body["citations"] if c["n"] in cited]
    assert fact is None or fact in body["answer"]


def test_metadata_filters_restrict_citations(client: TestClient) -> None:
    body = client.post(
        "/v1/query", json={"question": "How do I rotate an API key?", "filters": {"product": "track"}}
    ).json()
    assert body["citations"]
    assert all(c["source"].startswith("product/kb_articles.jsonl#") for c in body["citations"])


def test_queries_search_the_default_collection_unless_told_otherwise(
    client: TestClient, served_database: Database, embedder: Embedder, tmp_path: Path
) -> None:
    """An eval run's (or another team's) copy of a document must not answer default queries."""
    (tmp_path / "tide.md").write_text("# Tide tables\n\nThe Port Aldane tide gauge reads 4.2 metres at spring tide.\n")
    with served_database.connect() as conn:
        IngestPipeline(conn, load_config("default", REPO / "configs"), embedder, collection="marine").run(tmp_path)
    try:
        question = "What does the Port Aldane tide gauge read at spring tide?"
        default = client.post("/v1/query", json={"question": question}).json()
        assert all(c["source"] != "tide.md" for c in default["citations"])
        marine = client.post("/v1/query", json={"question": question, "collection": "marine"}).json()
        assert [c["source"] for c in marine["citations"]] == ["tide.md"]
    finally:  # the shared database ends as it began
        with served_database.connect() as conn:
            conn.execute("DELETE FROM documents WHERE collection = 'marine'")


def test_openai_client_works_unchanged(client: TestClient, api_key: str) -> None:
    with serve_in_thread(client.app, lifespan=False) as url:  # type: ignore[arg-type]
        check_openai_client(url, api_key)


def check_openai_client(url: str, api_key: str) -> None:
    """The official client, over real HTTP, plain and streamed."""
    api = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key)
    completion = api.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Which days do hybrid employees come to the office?"}]
    )
    assert "Tuesday" in (completion.choices[0].message.content or "")
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    extra: dict[str, Any] = completion.model_extra or {}
    assert extra["citations"] and extra["ragops"]["versions"]["config"].startswith("default@")
    stream = api.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Which days do hybrid employees come to the office?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == completion.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_configs_lists_config_and_prompt_versions(client: TestClient) -> None:
    body = client.get("/v1/configs").json()
    assert body["default"] == "default"
    assert body["configs"][0]["version"].startswith("default@")
    assert body["prompts"]["default"].startswith("default@")


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "index": "ok", "generator": "ok"}}


@pytest.mark.parametrize(
    ("path", "payload", "status", "message"),
    [
        ("/v1/query", {}, 422, "question: Field required"),
        ("/v1/query", {"question": ""}, 422, "question: String should have at least 1 character"),
        ("/v1/query", {"question": "   "}, 422, "question must not be empty"),
        ("/v1/query", {"question": "word " * 400}, 422, "the limit is 256"),
        ("/v1/query", {"question": "hi", "top_k": 0}, 422, "top_k: Input should be greater than or equal to 1"),
        ("/v1/query", {"question": "hi", "top_k": 51}, 422, "top_k: Input should be less than or equal to 50"),
        ("/v1/query", {"question": "hi", "config": "nope"}, 404, "unknown configuration 'nope'"),
        ("/v1/query", {"question": "hi", "config": "../etc"}, 404, "unknown configuration '../etc'"),
        ("/v1/query", {"question": "hi", "colour": 1}, 422, "colour: Extra inputs are not permitted"),
        ("/v1/query", {"question": 42}, 422, "question: Input should be a valid string"),
        ("/v1/chat", {"messages": []}, 422, "messages: List should have at least 1 item"),
        ("/v1/chat", {"messages": [{"role": "assistant", "content": "x"}]}, 422, "last message must have role"),
        ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "nope"),
        (
            "/v1/chat/completions",
            {"model": "default", "messages": [{"role": "user", "content": "x"}], "stream_options": {}},
            422,
            "stream_options is only allowed when stream is true",
        ),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_problem(
    client: TestClient, path: str, payload: dict[str, Any], status: int, message: str
) -> None:
    response = client.post(path, json=payload)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"]
    assert error["code"] == status


def test_malformed_json_is_a_422(client: TestClient) -> None:
    response = client.post("/v1/query", content=b'{"question": ', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "JSON" in response.json()["error"]["message"]
