"""The answer flow shared by /v1/query, /v1/chat and /v1/chat/completions, metered end to end."""

from __future__ import annotations

from collections.abc import Iterator

from app.metering import Meter
from app.pii import log_transcript
from app.rag import Answer, AnswerDelta, AnswerDone, Prepared, Question, RagPipeline
from core.errors import http_status

CLIENT_CLOSED = 499  # nginx's code for "client closed the request"


def prepare(pipeline: RagPipeline, meter: Meter, question: Question) -> Prepared:
    """Retrieve and reserve: every error here still gets a proper HTTP status."""
    prepared = pipeline.prepare(question)
    meter.begin(prepared)
    return prepared


def answer_events(pipeline: RagPipeline, prepared: Prepared, meter: Meter) -> Iterator[AnswerDelta | AnswerDone]:
    """Generate, settling the meter on success, failure or a client that hangs up."""
    status = 200
    done = False
    try:
        for event in pipeline.stream(prepared, incremental=meter.streaming):
            if isinstance(event, AnswerDone):
                meter.finish(event.answer)
                done = True
            yield event
    except GeneratorExit:
        if not done:  # closed before the answer was complete: the client left
            status = CLIENT_CLOSED
            meter.fail("client_disconnected", prepared.generator_model, "".join(prepared.generated))
        raise
    except Exception as exc:
        status = http_status(exc)
        meter.fail(type(exc).__name__, prepared.generator_model, "".join(prepared.generated))
        raise
    finally:
        if pipeline.settings.log_text and status == 200:
            log_transcript(meter.entry.request_id, prepared.config.name, prepared.pii)
        if meter.streaming:  # a non-streamed answer is closed by the middleware with the response status
            meter.close(status)


def complete(pipeline: RagPipeline, prepared: Prepared, meter: Meter) -> Answer:
    """The whole answer at once (the events are run to their end, so the flow finishes as it would streamed)."""
    answer = None
    for event in answer_events(pipeline, prepared, meter):
        if isinstance(event, AnswerDone):
            answer = event.answer
    if answer is None:
        raise RuntimeError("generation ended without an answer")
    return answer
