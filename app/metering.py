"""One request's accounting, from authentication to its ledger row.

The request middleware owns the meter: it creates it before the route runs and closes it once
the response is over, whether the answer was returned whole, streamed to its end, cut by an
error, or abandoned by a client that hung up (even before the stream's first byte). Routes only
``begin`` it once retrieval is done and ``watch`` the answer's events; everything else follows.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from opentelemetry.util.types import AttributeValue

from app.accounting import Accountant, LedgerEntry, RateHold, Reservation, hold_rate_tokens, reserve_budget
from app.after_answer import AfterAnswer
from app.answers import Answer, AnswerDone, Prepared
from app.generators.base import count_prompt_tokens
from app.inflight import Slot
from app.keys import ApiKey
from app.metrics import Metrics
from app.pii import PiiSession
from core.errors import ClientGone, status_of
from core.tokens import count_tokens
from core.tracing import annotate, stage

CLIENT_CLOSED = 499  # nginx's code for "client closed the request"
STAGES = ("auth", "pii", "embed", "retrieve", "ttft", "generate")
UNMATCHED_ROUTE = "unmatched"  # the one metrics label of a path no route template matched
E = TypeVar("E")


def request_attributes(e: LedgerEntry, prepared: Prepared | None) -> dict[str, AttributeValue | None]:
    """The request span's attributes: versions, tokens, cost and counts (never text, never the key)."""
    attributes: dict[str, AttributeValue | None] = {
        "ragops.request_id": e.request_id,
        "http.response.status_code": e.status,
        "ragops.config.version": e.config_version,
        "ragops.prompt.version": e.prompt_version,
        "ragops.index.version": e.index_version,
        "ragops.collection": prepared.question.collection if prepared is not None else None,
        "gen_ai.request.model": e.model,
        "gen_ai.usage.input_tokens": e.prompt_tokens if e.model else None,
        "gen_ai.usage.output_tokens": e.completion_tokens if e.model else None,
        "ragops.usage.cached_tokens": e.cached_tokens,
        "ragops.usage.embedding_tokens": e.embedding_tokens,
        "ragops.cost_usd": e.cost_usd,
        "error.type": e.error_kind,
    }
    for stage_name, counts in e.pii_counts.items():
        attributes[f"ragops.pii.{stage_name}.entities"] = sum(counts.values())
    return attributes


@dataclass
class Meter:
    """The accounting of one request."""

    accountant: Accountant
    metrics: Metrics
    entry: LedgerEntry
    started: float = field(default_factory=time.perf_counter)
    key: ApiKey | None = None
    prepared: Prepared | None = None
    _prompt_tokens: int | None = field(default=None, repr=False)
    reservation: Reservation | None = None
    rate: RateHold | None = None
    slot: Slot | None = None  # the key's concurrency slot, given back on close
    failed_status: int | None = None
    settled: bool = False
    closed: bool = False
    _events: Generator[object, None, None] | None = field(default=None, repr=False)
    after: list[AfterAnswer] = field(default_factory=list)  # written with the ledger row, after the response
    gone: threading.Event = field(default_factory=threading.Event)  # set when the client disconnects

    @property
    def prompt_tokens(self) -> int:
        """The rendered prompt's tokens as counted here (0 before retrieval), before the model reports any."""
        if self._prompt_tokens is None:
            if self.prepared is None:
                return 0
            self._prompt_tokens = count_prompt_tokens(self.prepared.request.messages)
        return self._prompt_tokens

    @property
    def pii(self) -> PiiSession | None:
        """The request's PII session, once retrieval began."""
        return self.prepared.pii if self.prepared is not None else None

    def begin(self, prepared: Prepared) -> None:
        """Retrieval is done: note versions and stage times, then hold the worst-case cost and tokens."""
        self.prepared = prepared
        e = self.entry
        e.collection = prepared.question.collection
        e.config_version, e.prompt_version, e.index_version = (
            prepared.config.version, prepared.prompt.version, prepared.index.name,
        )  # fmt: skip
        e.embedding_tokens = prepared.embedding_tokens
        e.rollout_id, e.rollout_side = prepared.rollout_id, prepared.rollout_side
        if prepared.pii.active:
            e.latency_ms["pii"] = prepared.timings.pii_ms
        e.latency_ms["embed"] = prepared.timings.embed_ms
        e.latency_ms["retrieve"] = prepared.timings.retrieve_ms
        self.metrics.retrievals.inc()
        if not prepared.citations:
            self.metrics.retrieval_empty.inc()
        key = self.key
        if key is None or (key.tpm is None and key.budget_usd_day is None and key.budget_usd_month is None):
            return
        with self.accountant.pool.connection() as conn:
            if key.tpm is not None:
                self.rate = hold_rate_tokens(conn, key.id, self.prompt_tokens + prepared.request.max_tokens)
            if key.budget_usd_day is not None or key.budget_usd_month is not None:
                worst = self.accountant.pricing.request_cost(
                    prepared.generator_model, prepared.embedding_model, self.prompt_tokens,
                    prepared.request.max_tokens, 0, prepared.embedding_tokens,
                )  # fmt: skip
                self.reservation = reserve_budget(
                    conn, key, worst, e.request_id, stale_after_s=self.accountant.hold_max_age_s
                )

    def leave(self, write: AfterAnswer | None) -> None:
        """Have ``write`` performed with the ledger row, once the response is over (None: nothing to write)."""
        if write is not None:
            self.after.append(write)

    def watch(self, events: Iterator[E]) -> Iterator[E]:
        """The answer's events, accounted: finished by the last one, failed by an error.

        A stream nobody read to its end is closed, and settled as a hang-up, when the meter closes.
        """
        watched = self._watch(events)
        self._events = watched
        return watched

    def _watch(self, events: Iterator[E]) -> Generator[E, None, None]:
        try:
            for event in events:
                if isinstance(event, AnswerDone):
                    self.finish(event.answer)
                yield event
        except Exception as exc:
            self.fail(type(exc).__name__, status_of(exc))
            raise
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()  # the generator's own clean-up (e.g. the model server's connection) runs now

    def finish(self, answer: Answer) -> None:
        """The answer is complete: record its tokens and cost, settle."""
        e = self.entry
        e.model = answer.versions.model
        e.prompt_tokens, e.completion_tokens = answer.usage.prompt_tokens, answer.usage.completion_tokens
        e.cached_tokens, e.embedding_tokens = answer.usage.cached_tokens, answer.usage.embedding_tokens
        if answer.timings.ttft_ms is not None:
            e.latency_ms["ttft"] = answer.timings.ttft_ms
        e.latency_ms["generate"] = answer.timings.generate_ms
        self._settle()

    def check_gone(self) -> None:
        """Stop here if the client already hung up: no model time is spent on an answer nobody reads."""
        if self.gone.is_set():
            self.fail("client_disconnected", CLIENT_CLOSED)
            raise ClientGone("the client closed the connection before the answer was generated")

    def fail(self, error_kind: str, status: int | None = None) -> None:
        """Generation failed or the client left: bill what was spent, settle.

        Once the request reached the model, its prompt tokens are spent, and so is every
        completion token produced, including text the PII filter was still holding back.
        """
        if self.settled:
            return
        e = self.entry
        e.error_kind = e.error_kind or error_kind
        self.failed_status = self.failed_status or status
        prepared = self.prepared
        if prepared is not None and prepared.generation_started:
            e.model = e.model or prepared.generator_model
            e.prompt_tokens = e.prompt_tokens or self.prompt_tokens
            produced = "".join(prepared.generated)
            if produced and not e.completion_tokens:
                e.completion_tokens = count_tokens(produced)
        self._settle()

    def _settle(self) -> None:
        """Price the recorded tokens; the holds are settled with the ledger row in :meth:`close`."""
        if self.settled:
            return
        self.settled = True
        e = self.entry
        embedding_model = self.prepared.embedding_model if self.prepared is not None else ""
        try:
            e.cost_usd = self.accountant.cost(e, embedding_model)
        except Exception:  # an unpriced model: the ledger still gets its row
            e.cost_usd = 0.0

    def close(self, status: int | None, route: str | None = None) -> None:
        """Give back the concurrency slot, settle whatever is left, write the ledger row and the metrics; once.

        ``status`` is the response's, or None when none was sent (the client left before it began);
        ``route`` is the matched route's template (metrics never carry raw paths).
        """
        if self.closed:
            return
        self.closed = True
        if self.slot is not None:
            self.slot.release()
        if self._events is not None:
            with contextlib.suppress(ValueError):  # "generator already executing": it ends by itself
                self._events.close()
        e = self.entry
        if self.prepared is not None and not self.settled:  # begun, never finished
            if status is None or status < 400:
                self.fail("client_disconnected", CLIENT_CLOSED)  # the client left
            else:
                self.fail(e.error_kind or "aborted", status)
        e.status = self.failed_status or status or CLIENT_CLOSED
        if self.pii is not None:
            e.pii_counts = self.pii.report()
        e.latency_ms["total"] = (time.perf_counter() - self.started) * 1000
        # One connection, after the response: settlement, the token window, the ledger row and what the
        # answer left behind.
        # Until it lands the worst-case holds stay in place, so a budget is never overrun.
        with stage("ragops.accounting"):
            self.accountant.record(e, self.reservation, self.rate, self.after)
        annotate(request_attributes(e, self.prepared))
        self._observe(e, route or UNMATCHED_ROUTE)

    def _observe(self, e: LedgerEntry, route: str) -> None:
        m = self.metrics
        m.requests.labels(route, str(e.status)).inc()
        m.latency.labels(route).observe(e.latency_ms["total"] / 1000)
        for pii_stage, counts in e.pii_counts.items():
            for entity_type, n in counts.items():
                m.pii_detections.labels(entity_type, pii_stage).inc(n)
        if self.pii is not None and self.pii.failures:
            m.pii_failures.inc(self.pii.failures)
        for name in STAGES:
            if name in e.latency_ms:
                m.stage.labels(name).observe(e.latency_ms[name] / 1000)
        if e.model:
            for kind, value in (("prompt", e.prompt_tokens), ("completion", e.completion_tokens),
                                ("cached", e.cached_tokens), ("embedding", e.embedding_tokens)):  # fmt: skip
                m.tokens.labels(kind, e.model).inc(value)
            m.cost.labels(e.model).inc(e.cost_usd)
