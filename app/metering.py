"""One request's accounting, from authentication to its ledger row.

Created per request by the API layer; holds the ledger entry that the route, the stream and
the error handlers fill in, and settles the budget reservation exactly once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from app.accounting import Accountant, LedgerEntry, Reservation, reserve_budget
from app.generators.base import count_prompt_tokens
from app.keys import ApiKey
from app.metrics import Metrics
from app.pii import PiiSession
from app.rag import Answer, Prepared
from core.tokens import count_tokens


@dataclass
class Meter:
    """The accounting of one request."""

    accountant: Accountant
    metrics: Metrics
    entry: LedgerEntry
    started: float = field(default_factory=time.perf_counter)
    key: ApiKey | None = None
    pii: PiiSession | None = None
    reservation: Reservation | None = None
    embedding_model: str = ""
    streaming: bool = False
    recorded: bool = False
    settled: bool = False

    def begin(self, prepared: Prepared) -> None:
        """Retrieval is done: note versions and stage times, then reserve the worst-case cost."""
        e = self.entry
        e.config_version, e.prompt_version, e.index_version = (
            prepared.config.version, prepared.prompt.version, prepared.index.name,
        )  # fmt: skip
        e.embedding_tokens = prepared.embedding_tokens
        self.pii = prepared.pii
        if prepared.pii.active:
            e.latency_ms["pii"] = prepared.timings.pii_ms
        e.latency_ms["embed"] = prepared.timings.embed_ms
        e.latency_ms["retrieve"] = prepared.timings.retrieve_ms
        self.embedding_model = prepared.config.config.index.embedding.model
        self.metrics.retrievals.inc()
        if not prepared.citations:
            self.metrics.retrieval_empty.inc()
        if self.key is None or (self.key.budget_usd_day is None and self.key.budget_usd_month is None):
            return
        model = prepared.generator_model
        worst = self.accountant.pricing.request_cost(
            model, self.embedding_model, count_prompt_tokens(prepared.request.messages), prepared.request.max_tokens,
            0, prepared.embedding_tokens,
        )  # fmt: skip
        with self.accountant.pool.connection() as conn:
            self.reservation = reserve_budget(conn, self.key, worst)

    def finish(self, answer: Answer) -> None:
        """The answer is complete: record its tokens and cost, settle the reservation."""
        e = self.entry
        e.model = answer.versions.model
        e.prompt_tokens, e.completion_tokens = answer.usage.prompt_tokens, answer.usage.completion_tokens
        e.cached_tokens, e.embedding_tokens = answer.usage.cached_tokens, answer.usage.embedding_tokens
        if answer.timings.ttft_ms is not None:
            e.latency_ms["ttft"] = answer.timings.ttft_ms
        e.latency_ms["generate"] = answer.timings.generate_ms
        self._settle()

    def fail(self, error_kind: str, model: str | None, partial_text: str) -> None:
        """Generation failed or the client left: record the tokens actually produced, settle."""
        e = self.entry
        e.error_kind = e.error_kind or error_kind
        e.model = e.model or model
        if partial_text and not e.completion_tokens:
            e.completion_tokens = count_tokens(partial_text)
        self._settle()

    def _settle(self) -> None:
        """Price the recorded tokens; the budget and rate rows are written with the ledger row in :meth:`close`."""
        if self.settled:
            return
        self.settled = True
        e = self.entry
        try:
            e.cost_usd = self.accountant.cost(e, self.embedding_model)
        except Exception:
            e.cost_usd = 0.0

    def close(self, status: int) -> None:
        """Write the ledger row and the metrics, once."""
        if self.recorded:
            return
        if self.reservation is not None and not self.settled:
            self.fail("aborted", None, "")
        self.recorded = True
        e = self.entry
        e.status = status
        if self.pii is not None:
            e.pii_counts = self.pii.report()
        e.latency_ms["total"] = (time.perf_counter() - self.started) * 1000
        if not e.cost_usd and e.model:
            try:
                e.cost_usd = self.accountant.cost(e, self.embedding_model)
            except Exception:
                e.cost_usd = 0.0
        # One connection, after the response: settlement, tokens per minute and the ledger row.
        # Until it lands the worst-case hold stays reserved, so a budget is never overrun.
        rate_tokens = e.prompt_tokens + e.completion_tokens if self.key is not None and self.key.tpm else 0
        self.accountant.record(e, self.reservation, rate_tokens)
        m = self.metrics
        m.requests.labels(e.route, str(status)).inc()
        m.latency.labels(e.route).observe(e.latency_ms["total"] / 1000)
        for stage, counts in e.pii_counts.items():
            for entity_type, n in counts.items():
                m.pii_detections.labels(entity_type, stage).inc(n)
        if self.pii is not None and self.pii.failures:
            m.pii_failures.inc(self.pii.failures)
        for stage in ("auth", "pii", "embed", "retrieve", "ttft", "generate"):
            if stage in e.latency_ms:
                m.stage.labels(stage).observe(e.latency_ms[stage] / 1000)
        if e.model:
            for kind, value in (("prompt", e.prompt_tokens), ("completion", e.completion_tokens),
                                ("cached", e.cached_tokens), ("embedding", e.embedding_tokens)):  # fmt: skip
                m.tokens.labels(kind, e.model).inc(value)
            m.cost.labels(e.model).inc(e.cost_usd)
