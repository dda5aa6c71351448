"""``/v1/chat/completions``: OpenAI clients work unchanged; ``model`` names a ragops configuration."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from app.answers import Answer, AnswerDelta, AnswerDone, Prepared, Question, Turn
from app.api.answering import STREAM_HEADERS, answer_events, complete, prepare
from app.api.deps import Configs, CurrentMeter, Pipeline, QueryGrant, RequestId
from app.api.query import ERRORS, STREAMED
from app.api.schemas import ChatCompletionRequest, CitationOut, VersionsOut, usage_out
from app.api.sse import guarded, sse
from app.metering import Meter
from app.rag import RagPipeline
from core.errors import BadRequest

router = APIRouter(prefix="/v1", tags=["openai-compatible"])


def _extras(answer_or_prepared: Answer | Prepared) -> dict[str, object]:
    return {"citations": [CitationOut.of(c).model_dump() for c in answer_or_prepared.citations]}


def _usage(answer: Answer, cost_usd: float) -> dict[str, object]:
    return usage_out(answer, cost_usd).openai()


def _chunks(
    pipeline: RagPipeline, prepared: Prepared, meter: Meter, request_id: str, model: str, include_usage: bool
) -> Iterator[bytes]:
    completion_id = f"chatcmpl-{request_id}"
    created = int(time.time())
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
    first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    yield sse({**base, "choices": [first], **_extras(prepared)})
    for event in answer_events(pipeline, prepared, meter):
        if isinstance(event, AnswerDelta):
            yield sse({**base, "choices": [{"index": 0, "delta": {"content": event.text}, "finish_reason": None}]})
        elif isinstance(event, AnswerDone):
            answer = event.answer
            final = {"index": 0, "delta": {}, "finish_reason": answer.finish_reason}
            yield sse(
                {
                    **base,
                    "choices": [final],
                    "request_id": request_id,
                    "ragops": {"versions": VersionsOut(**answer.versions.__dict__).model_dump(), "pii": answer.pii},
                }
            )
            if include_usage:
                yield sse({**base, "choices": [], "usage": _usage(answer, meter.entry.cost_usd)})
    yield sse("[DONE]")


class ModelOut(BaseModel):
    """A configuration the key may use, as an OpenAI model."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ragops"


class ModelsResponse(BaseModel):
    """OpenAI ``/v1/models``: ``client.models.list()``."""

    object: Literal["list"] = "list"
    data: list[ModelOut]


@router.get("/models", response_model=ModelsResponse, responses=ERRORS)
def read_models(catalog: Configs, grant: QueryGrant) -> ModelsResponse:
    """The configurations this key may use, as models (``model`` in chat completions; add ``@collection``)."""
    names = grant.configs_of(catalog.configs)
    return ModelsResponse(data=[ModelOut(id=name, created=catalog.loaded_at) for name in names])


@router.post("/chat/completions", responses={**ERRORS, **STREAMED})
def create_chat_completion(
    body: ChatCompletionRequest, pipeline: Pipeline, meter: CurrentMeter, grant: QueryGrant, request_id: RequestId
) -> object:
    """OpenAI-compatible chat completion grounded in the indexed documents.

    The collection: ``model`` as ``config@collection``, or a ``collection`` field (``extra_body``).
    """
    turns = [
        Turn(role="system" if m.role == "developer" else m.role, content=m.text())
        for m in body.messages
        if m.role != "tool"
    ]
    if body.stream_options is not None and not body.stream:
        raise BadRequest("stream_options is only allowed when stream is true", field="stream_options")
    config, collection = body.target()
    question = Question.from_turns(turns, config=config, top_k=body.top_k, filters=body.filters, collection=collection)
    prepared = prepare(pipeline, meter, question, grant)
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(
            guarded(_chunks(pipeline, prepared, meter, request_id, body.model, include_usage), request_id, None),
            media_type="text/event-stream",
            headers=STREAM_HEADERS,
        )
    answer = complete(pipeline, prepared, meter)
    return {
        "id": f"chatcmpl-{request_id}",
        "request_id": request_id,  # what POST /v1/feedback takes (the id without its chatcmpl- prefix)
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": _usage(answer, meter.entry.cost_usd),
        **_extras(answer),
        "ragops": {"versions": VersionsOut(**answer.versions.__dict__).model_dump(), "pii": answer.pii},
    }
