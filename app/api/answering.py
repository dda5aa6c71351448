"""The answer flow shared by /v1/query, /v1/chat and /v1/chat/completions, metered end to end."""

from __future__ import annotations

from collections.abc import Iterator

from app.errors import http_status
from app.metering import Meter
from app.rag import Answer, AnswerDelta, AnswerDone, Prepared, Question, RagPipeline

CLIENT_CLOSED = 499  # nginx's code for "client closed the request"


def prepare(pipeline: RagPipeline, meter: Meter, question: Question) -> Prepared:
    """Retrieve and reserve: every error here still gets a proper HTTP status."""
    prepared = pipeline.prepare(question)
    meter.begin(prepared)
    return prepared


def answer_events(pipeline: RagPipeline, prepared: Prepared, meter: Meter) -> Iterator[AnswerDelta | AnswerDone]:
    """Generate, settling the meter on success, failure or a client that hangs up."""
    status = 200
    try:
        for event in pipeline.stream(prepared, incremental=meter.streaming):
            if isinstance(event, AnswerDone):
                meter.finish(event.answer)
            yield event
    except GeneratorExit:
        status = CLIENT_CLOSED
        meter.fail("client_disconnected", prepared.generator_model, "".join(prepared.generated))
        raise
    except Exception as exc:
        status = http_status(exc)
        meter.fail(type(exc).__name__, prepared.generator_model, "".join(prepared.generated))
        raise
    finally:
        if meter.streaming:  # a non-streamed answer is closed by the middleware with the response status
            meter.close(status)


def complete(pipeline: RagPipeline, prepared: Prepared, meter: Meter) -> Answer:
    """The whole answer at once."""
    for event in answer_events(pipeline, prepared, meter):
        if isinstance(event, AnswerDone):
            return event.answer
    raise RuntimeError("generation ended without an answer")
