"""vLLM error mapping and retries, with the network mocked at the transport.

These cases (timeouts, refused connections that recover, a stream cut mid-answer) cannot be
produced on demand by the real server; ``test_vllm_integration.py`` covers the real one.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from app.generators.base import GenerationRequest
from app.generators.vllm import VllmGenerator
from core.errors import GenerationError, GenerationTimeout, GeneratorUnavailable, PromptTooLong
from tests.utils.generation import generate

REQUEST = GenerationRequest(
    question="q", messages=[{"role": "user", "content": "q"}], passages=[], model="m", max_tokens=8
)


def sse_body(*chunks: dict[str, object]) -> bytes:
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


def generator(handler: Callable[[httpx.Request], httpx.Response]) -> VllmGenerator:
    return VllmGenerator("http://vllm.test/v1", transport=httpx.MockTransport(handler), read_timeout_s=1)


def ok_stream(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    return httpx.Response(
        200,
        content=sse_body(
            {"model": "m", "choices": [{"delta": {"role": "assistant", "content": ""}}]},
            {"model": "m", "choices": [{"delta": {"content": "Hello"}}]},
            {"model": "m", "choices": [{"delta": {"content": " there"}, "finish_reason": "length"}]},
            {
                "model": "m",
                "choices": [],
                "usage": {"prompt_tokens": 11, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 8}},
            },
        ),
    )


def test_stream_yields_text_and_usage_with_cached_tokens() -> None:
    text, finished = generate(generator(ok_stream), REQUEST)
    assert text == "Hello there" and finished.finish_reason == "length"
    usage = finished.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (11, 2, 8)


def test_refused_connection_is_retried_before_any_token() -> None:
    calls = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) < 3:
            raise httpx.ConnectError("connection refused")
        return ok_stream(request)

    assert generate(generator(flaky), REQUEST)[0] == "Hello there"
    assert len(calls) == 3


def vllm_error(status: int, message: str) -> Callable[[httpx.Request], httpx.Response]:
    body = {"error": {"message": message, "type": "BadRequestError", "param": None, "code": status}}
    return lambda request: httpx.Response(status, json=body)


def raises(exc: Exception) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


def cut_mid_stream(request: httpx.Request) -> httpx.Response:
    def body():  # type: ignore[no-untyped-def]
        yield b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\n'
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    return httpx.Response(200, content=body())


@pytest.mark.parametrize(
    ("handler", "error", "message"),
    [
        (vllm_error(400, "This model's maximum context length is 512 tokens. However, ..."), PromptTooLong,
         "prompt too long for the model: This model's maximum context length is 512"),
        (vllm_error(400, "max_tokens=1000 cannot be greater than max_model_len=512."), GenerationError, "rejected"),
        (vllm_error(500, "engine dead"), GeneratorUnavailable, "model server error 500: engine dead"),
        (raises(httpx.ConnectError("refused")), GeneratorUnavailable, "unreachable"),
        (raises(httpx.ReadTimeout("timed out")), GenerationTimeout, "did not answer in time"),
        (cut_mid_stream, GenerationError, "stream broke off"),
        (lambda r: httpx.Response(200, content=b"data: [DONE]\n\n"), GenerationError, "without usage"),
    ],
)  # fmt: skip
def test_failures_map_to_clear_errors(
    handler: Callable[[httpx.Request], httpx.Response], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        generate(generator(handler), REQUEST)
    assert message in str(info.value)
    assert type(info.value) is error  # exactly: GenerationTimeout is also a GeneratorUnavailable, and maps to 504
