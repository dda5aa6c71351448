"""The answer flow shared by /v1/query, /v1/chat and /v1/chat/completions, metered end to end.

The request's meter (owned by the request middleware) begins once retrieval is done and
watches the answer's events; the middleware closes it when the response is over, so streamed
and whole answers, errors and hang-ups are all settled in one place, and what a finished answer
leaves behind is written there too, never before the ``done`` event reaches the client.
"""

from __future__ import annotations

from collections.abc import Iterator

from app.after_answer import AfterAnswer
from app.answers import Answer, AnswerDelta, AnswerDone, Prepared, Question
from app.drift import block_to_record, observation_to_record
from app.feedback import transcript_to_keep
from app.metering import Meter
from app.online_eval import evaluation_to_queue
from app.pii import log_transcript
from app.rag import RagPipeline, final_answer
from core.access import Grant
from core.errors import PiiBlocked

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def prepare(pipeline: RagPipeline, meter: Meter, question: Question, grant: Grant) -> Prepared:
    """Retrieve (within ``grant``) and hold the worst-case cost: every error here still gets a proper HTTP status.

    In a collection with a rollout in canary, the key's side (sticky) decides which versions answer.
    """
    meter.check_gone()
    assignment = None
    if pipeline.rollouts is not None:
        key_id = meter.key.id if meter.key is not None else None
        question, grant, assignment = pipeline.rollouts.route(question, grant, pipeline.catalog.default_config, key_id)
    try:
        prepared = pipeline.prepare(question, grant)
    except PiiBlocked:  # a drift signal of its own: the share of questions refused for blocked personal data
        meter.leave(block_to_record(*pipeline.resolve(question, grant)))
        raise
    if assignment is not None:
        prepared.rollout = assignment
        prepared.rollout_id, prepared.rollout_side = assignment.rollout.id, assignment.side
    meter.begin(prepared)
    return prepared


def answer_events(
    pipeline: RagPipeline, prepared: Prepared, meter: Meter, *, incremental: bool = True
) -> Iterator[AnswerDelta | AnswerDone]:
    """Generate under the meter's watch; ``incremental=False`` when nobody reads the deltas.

    A client that hung up during retrieval ends the request here, before any model time is spent.
    """
    meter.check_gone()
    for event in meter.watch(pipeline.stream(prepared, incremental=incremental)):
        if isinstance(event, AnswerDone):
            if pipeline.settings.log_text:
                log_transcript(meter.entry.request_id, prepared.config.name, prepared.pii)
            for write in left_behind(pipeline, prepared, event.answer, meter.entry.request_id, meter.entry.cost_usd):
                meter.leave(write)
        yield event


def left_behind(
    pipeline: RagPipeline, prepared: Prepared, answer: Answer, request_id: str, cost_usd: float
) -> list[AfterAnswer | None]:
    """What an answer leaves behind, decided now from memory and written with the ledger row after the response:
    the opt-in filtered transcript, the drift record, a sampled online evaluation, a rollout's sampled question.
    """
    rollout = None
    if prepared.rollout is not None and pipeline.rollouts is not None:
        rollout = pipeline.rollouts.after_answer(prepared.rollout, prepared, answer, cost_usd, request_id)
    return [
        transcript_to_keep(request_id, prepared, answer),
        observation_to_record(request_id, prepared, answer),
        evaluation_to_queue(request_id, prepared, answer, cost_usd),
        rollout,
    ]


def complete(pipeline: RagPipeline, prepared: Prepared, meter: Meter) -> Answer:
    """The whole answer at once."""
    return final_answer(answer_events(pipeline, prepared, meter, incremental=False))
