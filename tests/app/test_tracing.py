"""OpenTelemetry traces of answers, exported over OTLP/HTTP to a real receiver.

The receiver (tests/utils/otlp.py) is a loopback HTTP server that decodes each export with the
OpenTelemetry protocol's own protobuf messages: the SDK's real OTLP/HTTP exporter, configured from
the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` variable, sends to it exactly what a collector gets.
Arize Phoenix installs from PyPI but brings a server stack of its own, so it is not used here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.quality import claims
from core.db import Database
from core.tracing import Tracing, stage, tracing_requested
from tests.app.conftest import authed, make_settings
from tests.utils.otlp import ReceivedSpan, otlp_receiver
from tests.utils.server import wait_for

MARKER = "zqxtracemarker41"
EMAIL = "lena.marsh@example.org"
NAME = "Priya Ramaswamy"
QUESTION = f"I'm {NAME}, my email is {EMAIL}. How many weeks of paid parental leave do I get? {MARKER}"
STAGES = {"ragops.auth", "ragops.pii.question", "ragops.embed", "ragops.search", "ragops.pii.context",
          "ragops.generate", "ragops.pii.answer", "ragops.accounting"}  # fmt: skip


@pytest.fixture(scope="module")
def traced(
    served_database: Database, api_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """One whole and one streamed answer, traced; the spans are read after the app shut down (flushed)."""
    with otlp_receiver() as receiver, pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        env.setenv("OTEL_SERVICE_NAME", "ragops-test")
        app = create_app(make_settings(served_database, tmp_path_factory.mktemp("traced"), vllm_url=None))
        assert app.state.tracing.enabled
        with authed(TestClient(app), api_key) as client:
            whole = client.post("/v1/query", json={"question": QUESTION})
            streamed = client.post("/v1/query", json={"question": QUESTION, "stream": True})
            with served_database.connect() as conn:
                ids = [r.headers["X-Request-Id"] for r in (whole, streamed)]
                wait_for(lambda: conn.execute("SELECT count(*) FROM ledger WHERE request_id = ANY(%s)",
                                              (ids,)).fetchone()[0] == 2)  # fmt: skip
                ledger = {r[0]: r[1:] for r in conn.execute(
                    "SELECT request_id, trace_id, span_id FROM ledger WHERE request_id = ANY(%s)", (ids,))}  # fmt: skip
            rated = client.post("/v1/feedback", json={"request_id": ids[0], "rating": -1, "reason": "wrong"})
            assert rated.status_code == 200, rated.text
        yield {"whole": whole, "streamed": streamed, "spans": list(receiver.spans), "ledger": ledger,
               "requests": receiver.requests, "key": api_key}  # fmt: skip


def spans_of(traced: dict[str, Any], response: Any) -> list[ReceivedSpan]:
    return [s for s in traced["spans"] if s.trace_id == response.headers["X-Trace-Id"]]


@pytest.mark.parametrize("kind", ["whole", "streamed"])
def test_one_trace_per_answer_with_a_span_per_stage(traced: dict[str, Any], kind: str) -> None:
    response = traced[kind]
    assert response.status_code == 200
    trace_id = response.headers["X-Trace-Id"]
    assert len(trace_id) == 32 and int(trace_id, 16) != 0
    # The request's own spans (the whole answer's trace also holds its later rating: its own test).
    spans = [s for s in spans_of(traced, response) if s.name != "ragops.feedback"]
    roots = [s for s in spans if not s.parent_id]
    assert [r.name for r in roots] == ["POST /v1/query"]
    root = roots[0]
    # feedback can find its trace and the request's span
    assert traced["ledger"][response.headers["X-Request-Id"]] == (trace_id, root.span_id)
    assert {s.name for s in spans} - {root.name} == STAGES
    by_id = {s.span_id: s for s in spans}
    for s in spans:  # every stage hangs under the request (the output filter under generation)
        assert s is root or s.parent_id in by_id
    assert by_id[next(s for s in spans if s.name == "ragops.pii.answer").parent_id].name == "ragops.generate"
    a = root.attributes
    assert a["ragops.config.version"].startswith("default@") and a["ragops.prompt.version"]
    assert a["ragops.index.version"].startswith("v") and a["ragops.collection"] == "default"
    assert a["gen_ai.request.model"] == "extractive" and a["http.response.status_code"] == 200
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    assert a["ragops.usage.embedding_tokens"] > 0 and "ragops.cost_usd" in a
    assert a["ragops.pii.question.entities"] >= 2  # the name and the e-mail address were filtered
    assert a["ragops.request_id"] == response.headers["X-Request-Id"]
    generate = next(s for s in spans if s.name == "ragops.generate")
    assert generate.attributes["gen_ai.usage.output_tokens"] == a["gen_ai.usage.output_tokens"]
    assert generate.attributes["gen_ai.operation.name"] == "chat"
    first_token = [e for e in generate.events if e[0] == "gen_ai.first_token"]
    assert len(first_token) == 1 and first_token[0][1]["ragops.ttft_ms"] > 0
    embed = next(s for s in spans if s.name == "ragops.embed")
    assert embed.attributes["gen_ai.request.model"] == "all-MiniLM-L6-v2"
    assert embed.attributes["gen_ai.usage.input_tokens"] == a["ragops.usage.embedding_tokens"]
    search = next(s for s in spans if s.name == "ragops.search")
    assert search.attributes["ragops.retrieval.hits"] > 0
    assert all(s.start_ns >= root.start_ns and s.end_ns <= root.end_ns for s in spans)


def test_no_text_in_any_exported_attribute_or_event(traced: dict[str, Any]) -> None:
    answer = traced["whole"].json()["answer"]
    sentences = claims(answer)
    assert sentences
    exported = json.dumps(
        [[s.name, s.attributes, s.events] for s in traced["spans"]], default=str
    ).lower()  # every attribute and event of every span
    for secret in (MARKER, EMAIL, NAME, "priya", "ramaswamy", "lena.marsh", traced["key"], "parental leave"):
        assert secret.lower() not in exported
    for sentence in sentences:
        assert sentence.lower()[:60] not in exported


def test_tracing_is_off_without_an_endpoint(
    served_database: Database, api_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert not tracing_requested()
    assert Tracing.from_environment().provider is None  # nothing of the SDK is built: no exporter
    app = create_app(make_settings(served_database, tmp_path, vllm_url=None))
    with authed(TestClient(app), api_key) as client:
        response = client.post("/v1/query", json={"question": "How many company holidays are there?"})
        assert response.status_code == 200 and "X-Trace-Id" not in response.headers
        with served_database.connect() as conn:
            request_id = response.headers["X-Request-Id"]
            wait_for(lambda: conn.execute("SELECT 1 FROM ledger WHERE request_id = %s", (request_id,)).fetchone())
            row = conn.execute("SELECT trace_id, span_id FROM ledger WHERE request_id = %s", (request_id,)).fetchone()
    assert row == (None, None)
    assert Tracing().record_in_trace("ragops.feedback", "0" * 32, "0" * 16) is None
    assert stage("ragops.embed") is stage("ragops.search")  # the one shared no-op: no span is made


def test_the_standard_variables_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}
    assert tracing_requested(env)
    assert not tracing_requested({**env, "OTEL_SDK_DISABLED": "true"})
    assert not tracing_requested({**env, "OTEL_TRACES_EXPORTER": "none"})
    assert not tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": " "})


def test_a_callers_trace_is_continued(served_database: Database, api_key: str, tmp_path: Path) -> None:
    """A W3C ``traceparent`` from the caller makes the answer's spans part of the caller's trace."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    app = create_app(make_settings(served_database, tmp_path, vllm_url=None),
                     tracing=Tracing.with_processor(SimpleSpanProcessor(exporter)))  # fmt: skip
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    with authed(TestClient(app), api_key) as client:
        response = client.post("/v1/query", json={"question": "How many company holidays are there?"},
                               headers={"traceparent": f"00-{caller_trace}-00f067aa0ba902b7-01"})  # fmt: skip
    assert response.headers["X-Trace-Id"] == caller_trace
    assert {format(s.context.trace_id, "032x") for s in exporter.get_finished_spans()} == {caller_trace}


def test_feedback_on_an_answer_is_a_span_in_the_answers_trace(traced: dict[str, Any]) -> None:
    """POST /v1/feedback records the rating under the rated request's root span (never its text)."""
    whole = traced["whole"]
    trace_id, span_id = traced["ledger"][whole.headers["X-Request-Id"]]
    (feedback,) = [s for s in traced["spans"] if s.name == "ragops.feedback"]
    assert feedback.trace_id == trace_id == whole.headers["X-Trace-Id"] and feedback.parent_id == span_id
    assert feedback.attributes["ragops.feedback.rating"] == -1
    assert feedback.attributes["ragops.feedback.negative"] is True
    assert feedback.attributes["ragops.feedback.reason"] == "wrong"


def test_later_feedback_joins_the_requests_trace() -> None:
    """What a feedback route does with a ledger row's ids: a child span of the request's span, in its trace."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing = Tracing.with_processor(SimpleSpanProcessor(exporter))
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    new = tracing.record_in_trace("ragops.feedback", trace_id, span_id, {"ragops.feedback.rating": -1})
    (span,) = exporter.get_finished_spans()
    assert format(span.context.trace_id, "032x") == trace_id and format(span.context.span_id, "016x") == new
    assert span.parent is not None and format(span.parent.span_id, "016x") == span_id
    assert span.attributes == {"ragops.feedback.rating": -1}
    assert tracing.record_in_trace("ragops.feedback", "not hex", span_id) is None


def test_a_failed_stage_records_the_error_type_never_its_message() -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from core.errors import BadRequest

    exporter = InMemorySpanExporter()
    tracing = Tracing.with_processor(SimpleSpanProcessor(exporter))
    with pytest.raises(BadRequest), tracing.request("POST /v1/query", {}), stage("ragops.pii.question"):
        raise BadRequest(f"question mentions {MARKER}")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    failed = spans["ragops.pii.question"]
    assert failed.attributes["error.type"] == "BadRequest" and failed.status.status_code.name == "ERROR"
    assert MARKER not in repr([(s.attributes, s.events, s.status.description) for s in spans.values()])
