"""The answer flow shared by /v1/query, /v1/chat and /v1/chat/completions, metered end to end.

The request's meter (owned by the request middleware) begins once retrieval is done and
watches the answer's events; the middleware closes it when the response is over, so streamed
and whole answers, errors and hang-ups are all settled in one place.
"""

from __future__ import annotations

from collections.abc import Iterator

from app.answers import Answer, AnswerDelta, AnswerDone, Prepared, Question
from app.drift import record_answer
from app.feedback import keep_transcript
from app.metering import Meter
from app.online_eval import queued_evaluation
from app.pii import log_transcript
from app.rag import RagPipeline, final_answer
from core.access import Grant

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
    prepared = pipeline.prepare(question, grant)
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
            keep_transcript(pipeline.pool, meter.entry.request_id, prepared, event.answer)  # opt-in, filtered text
            record_answer(pipeline.pool, meter.entry.request_id, prepared)
            sample_online_evaluation(meter, prepared, event.answer)
            if prepared.rollout is not None and pipeline.rollouts is not None:
                pipeline.rollouts.after_answer(
                    prepared.rollout, prepared, event.answer, meter.entry.cost_usd, meter.entry.request_id
                )
        yield event


def sample_online_evaluation(meter: Meter, prepared: Prepared, answer: Answer) -> None:
    """Queue a sampled share of answers for the worker's online evaluation (written with the ledger row)."""
    meter.evaluation = queued_evaluation(meter.entry.request_id, prepared, answer, meter.entry.cost_usd)


def complete(pipeline: RagPipeline, prepared: Prepared, meter: Meter) -> Answer:
    """The whole answer at once."""
    return final_answer(answer_events(pipeline, prepared, meter, incremental=False))
