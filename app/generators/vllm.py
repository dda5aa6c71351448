"""vLLM through its OpenAI-compatible HTTP API, always streamed (usage included).

Retries only where it is safe: the connection was refused before any token was produced.
vLLM's error bodies are mapped once, here, to the serving layer's errors.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx

from app.generators.base import Delta, Finished, GenerationRequest, Generator, Usage
from core.errors import GenerationError, GenerationTimeout, GeneratorUnavailable, PromptTooLong

log = logging.getLogger(__name__)

_CONNECT_RETRIES = (0.2, 0.6)  # seconds to wait before each retry of a refused connection
# vLLM says "This model's maximum context length is N tokens ... (parameter=input_tokens ...)".
# Not "max_model_len": that also appears when max_tokens alone is too large (a config error).
_TOO_LONG_MARKERS = ("maximum context length", "prompt is too long", "parameter=input_tokens")


def error_message(response: httpx.Response) -> tuple[str, str | None]:
    """Message and ``param`` of an OpenAI-style error body (``{"error": {...}}`` or ``{"message"}``)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text[:500] or response.reason_phrase, None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"]), error.get("param")
        if isinstance(error, str):
            return error, None
        if body.get("message"):
            return str(body["message"]), body.get("param")
    return response.text[:500], None


def raise_for_error(response: httpx.Response) -> None:
    """Map a non-2xx answer from vLLM to a ragops error."""
    if response.status_code < 400:
        return
    message, param = error_message(response)
    too_long = param == "input_tokens" or any(m in message.lower() for m in _TOO_LONG_MARKERS)
    if response.status_code in (400, 413, 422) and too_long:
        raise PromptTooLong(f"prompt too long for the model: {message}")
    if response.status_code >= 500 or response.status_code == 429:
        raise GeneratorUnavailable(f"model server error {response.status_code}: {message}")
    raise GenerationError(f"model server rejected the request ({response.status_code}): {message}")


class VllmGenerator(Generator):
    """Chat completions against a vLLM (or any OpenAI-compatible) server."""

    name = "vllm"
    reads = frozenset({"prompt", "generation.model", "generation.max_tokens", "generation.temperature"})

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            transport=transport,
        )

    def _payload(self, request: GenerationRequest, *, max_tokens: int | None = None) -> dict[str, Any]:
        return {
            "model": request.model,
            "messages": request.messages,
            "max_tokens": max_tokens or request.max_tokens,
            "temperature": request.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    def _open(self, payload: dict[str, Any]) -> httpx.Response:
        """Send the request; retry a refused connection (nothing was generated yet)."""
        for attempt, delay in enumerate((0.0, *_CONNECT_RETRIES)):
            if delay:
                time.sleep(delay)
            try:
                response = self._client.send(
                    self._client.build_request("POST", "/chat/completions", json=payload), stream=True
                )
            except httpx.ConnectError as exc:
                if attempt == len(_CONNECT_RETRIES):
                    raise GeneratorUnavailable(f"model server at {self.base_url} is unreachable: {exc}") from None
                continue
            except httpx.TimeoutException:
                raise GenerationTimeout(f"model server at {self.base_url} did not answer in time") from None
            if response.status_code >= 400:
                response.read()
                response.close()
                raise_for_error(response)
            return response
        raise AssertionError("unreachable")

    def stream(self, request: GenerationRequest) -> Iterator[Delta | Finished]:
        """Yield deltas as vLLM produces them, then the usage it reports."""
        response = self._open(self._payload(request))
        usage: Usage | None = None
        finish_reason = "stop"
        model = request.model
        completion_chars = 0
        try:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise GenerationError(f"model server failed mid-answer: {chunk['error']}")
                model = chunk.get("model", model)
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        completion_chars += len(text)
                        yield Delta(text)
                    if choice.get("finish_reason"):
                        finish_reason = choice["finish_reason"]
                if chunk.get("usage"):
                    raw = chunk["usage"]
                    details = raw.get("prompt_tokens_details") or {}
                    usage = Usage(
                        prompt_tokens=int(raw.get("prompt_tokens") or 0),
                        completion_tokens=int(raw.get("completion_tokens") or 0),
                        cached_tokens=int(details.get("cached_tokens") or 0),
                    )
        except httpx.TimeoutException:
            raise GenerationTimeout(f"model server at {self.base_url} stopped answering mid-stream") from None
        except (httpx.TransportError, json.JSONDecodeError) as exc:
            raise GenerationError(f"model server stream broke off: {type(exc).__name__}: {exc}") from None
        finally:
            response.close()
        if usage is None:
            raise GenerationError("model server ended the stream without usage (is stream_options supported?)")
        yield Finished(usage=usage, model=model, finish_reason=finish_reason)

    def check_ready(self, timeout_s: float) -> None:
        """A real 1-token completion: vLLM's /health can say 200 while its engine hangs."""
        try:
            models = self._client.get("/models", timeout=timeout_s)
            raise_for_error(models)
            served = [m["id"] for m in models.json().get("data", [])]
            if not served:
                raise GeneratorUnavailable("model server serves no model")
            response = self._client.post(
                "/completions",
                json={"model": served[0], "prompt": "ok", "max_tokens": 1, "temperature": 0},
                timeout=timeout_s,
            )
            raise_for_error(response)
        except httpx.TimeoutException:
            raise GenerationTimeout(f"model server did not answer a 1-token completion within {timeout_s}s") from None
        except httpx.TransportError as exc:
            raise GeneratorUnavailable(f"model server at {self.base_url} is unreachable: {exc}") from None

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()
