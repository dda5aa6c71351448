"""``/v1/query`` and ``/v1/chat``: answers with citations, usage and versions."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response, StreamingResponse

from app.answers import AnswerDelta, AnswerDone, Prepared, Question, Turn
from app.api.answering import STREAM_HEADERS, answer_events, complete, prepare
from app.api.deps import CurrentMeter, Pipeline, QueryGrant, RequestId
from app.api.schemas import (
    ChatRequest,
    CitationOut,
    ErrorResponse,
    QueryRequest,
    QueryResponse,
    RetrievalOptions,
    VersionsOut,
    usage_out,
)
from app.api.sse import guarded, sse
from app.metering import Meter
from app.rag import RagPipeline
from core.access import Grant

router = APIRouter(prefix="/v1", tags=["answers"])
ERROR_CODES = (400, 401, 403, 404, 413, 422, 429, 502, 503)
ERRORS: dict[int | str, dict[str, object]] = {code: {"model": ErrorResponse} for code in ERROR_CODES}
# With "stream": true the answer comes as Server-Sent Events instead of JSON.
SSE_EVENT = {
    "type": "object",
    "properties": {"event": {"enum": ["citations", "delta", "usage", "done", "error"]}, "data": {"type": "string"}},
    "required": ["data"],
}
STREAMED: dict[int | str, dict[str, object]] = {
    200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}, "description": "JSON, or SSE when streamed"}
}


def _options(body: RetrievalOptions) -> dict[str, Any]:
    return {"config": body.config, "top_k": body.top_k, "filters": body.filters, "collection": body.collection,
            "mode": body.mode}  # fmt: skip


def _events(pipeline: RagPipeline, prepared: Prepared, meter: Meter, request_id: str) -> Iterator[bytes]:
    yield sse([CitationOut.of(c).model_dump() for c in prepared.citations], "citations")
    for event in answer_events(pipeline, prepared, meter):
        if isinstance(event, AnswerDelta):
            yield sse({"text": event.text}, "delta")
        elif isinstance(event, AnswerDone):
            answer = event.answer
            yield sse(usage_out(answer, meter.entry.cost_usd).model_dump(), "usage")
            yield sse(
                {
                    "request_id": request_id,
                    "versions": VersionsOut(**answer.versions.__dict__).model_dump(),
                    "timings": asdict(answer.timings),
                    "finish_reason": answer.finish_reason,
                    "pii": answer.pii,
                },
                "done",
            )


def _respond(
    pipeline: RagPipeline, meter: Meter, question: Question, grant: Grant, stream: bool, request_id: str
) -> object:
    prepared = prepare(pipeline, meter, question, grant)
    if stream:
        return StreamingResponse(
            guarded(_events(pipeline, prepared, meter, request_id), request_id),
            media_type="text/event-stream",
            headers=STREAM_HEADERS,
        )
    answer = complete(pipeline, prepared, meter)
    # Serialized once here: FastAPI would dump, re-validate and dump the model again.
    body = QueryResponse.of(answer, request_id, meter.entry.cost_usd).model_dump_json()
    return Response(content=body, media_type="application/json")


@router.post("/query", response_model=QueryResponse, responses={**ERRORS, **STREAMED})
def create_query(
    body: QueryRequest, pipeline: Pipeline, meter: CurrentMeter, grant: QueryGrant, request_id: RequestId
) -> object:
    """Answer one question from the indexed documents, with citations."""
    question = Question(text=body.question, **_options(body))
    return _respond(pipeline, meter, question, grant, body.stream, request_id)


@router.post("/chat", response_model=QueryResponse, responses={**ERRORS, **STREAMED})
def create_chat(
    body: ChatRequest, pipeline: Pipeline, meter: CurrentMeter, grant: QueryGrant, request_id: RequestId
) -> object:
    """Answer the last user message of a conversation, using earlier turns for context."""
    turns = [Turn(role=m.role, content=m.content) for m in body.messages]
    question = Question.from_turns(turns, **_options(body))
    return _respond(pipeline, meter, question, grant, body.stream, request_id)
