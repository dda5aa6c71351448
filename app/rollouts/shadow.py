"""The rollout worker: answers queued questions on the other side, records the pair, applies the decision.

Runs beside the job worker (a thread of the API process with the embedded database, or
``ragops rollout work``), never on a request's path. Its answers are the operator's cost: each gets a
ledger row with no key (``rollout_side = 'shadow'``), so no key is billed or rate limited for it.
State lives in PostgreSQL: a restarted worker goes on with the queue and the samples as they were.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import psycopg
from psycopg_pool import ConnectionPool

from app.accounting import Accountant, LedgerEntry
from app.answers import Question
from app.rag import RagPipeline, final_answer
from app.rollouts import service, store
from app.rollouts.measures import failed_measures, measures
from app.rollouts.store import Queued, Rollout
from core.access import EVERYTHING
from core.errors import RagopsError

log = logging.getLogger(__name__)
SHADOW_ROUTE = "rollout:shadow"


class ShadowWorker:
    """Drains the rollout queue; one per process is enough (workers skip each other's rows)."""

    def __init__(self, pipeline: RagPipeline, accountant: Accountant, *, poll_s: float = 0.2) -> None:
        self.pipeline = pipeline
        self.accountant = accountant
        self.pool: ConnectionPool = pipeline.pool
        self.poll_s = poll_s
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, limit: int = 8) -> int:
        """Answer up to ``limit`` queued questions; returns how many were taken."""
        with self.pool.connection() as conn:
            with conn.transaction():
                taken = store.claim(conn, limit)
            for item in taken:
                rollout = store.get_rollout(conn, item.rollout_id)
                if rollout is None or rollout.status != item.stage:  # ended or moved on: the pair is stale
                    continue
                self._pair(conn, rollout, item)
        return len(taken)

    def _pair(self, conn: psycopg.Connection, rollout: Rollout, item: Queued) -> None:
        other: store.Side = "candidate" if item.served_side == "live" else "live"
        answered = self.answer(rollout, other, item.question, item.request_id)
        live, candidate = (item.served, answered) if other == "candidate" else (answered, item.served)
        store.add_sample(conn, rollout.id, rollout.status, item.request_id, live, candidate)
        try:
            ended = service.apply_decision(conn, rollout.id)
        except RagopsError:  # ended meanwhile by an operator
            return
        if ended.status != rollout.status:
            log.warning("rollout %s: %s -> %s%s", rollout.id, rollout.status, ended.status,
                        f" ({ended.reason})" if ended.reason else "")  # fmt: skip

    def answer(self, rollout: Rollout, side: store.Side, text: str, request_id: str) -> dict[str, object]:
        """Answer ``text`` with one side's versions through the serving pipeline; its measures, and its ledger row."""
        versions = rollout.side(side)
        question = Question(text=text, config=versions.config, prompt=versions.prompt,
                            collection=rollout.collection, index_version=versions.index_version)  # fmt: skip
        entry = LedgerEntry(request_id=f"shadow-{uuid.uuid4().hex}", route=SHADOW_ROUTE, rollout_id=rollout.id,
                            rollout_side="shadow")  # fmt: skip
        started = time.perf_counter()
        try:
            prepared = self.pipeline.prepare(question, EVERYTHING)
            answer = final_answer(self.pipeline.stream(prepared, incremental=False))
        except Exception as exc:  # the side failed to answer: recorded as the worst answer, never raised
            entry.status, entry.error_kind = 500, type(exc).__name__
            entry.latency_ms["total"] = (time.perf_counter() - started) * 1000
            self.accountant.record(entry)
            log.info("rollout %s: the %s side failed on a queued question: %s", rollout.id, side, type(exc).__name__)
            return failed_measures(entry.latency_ms["total"])
        u = answer.usage
        entry.status, entry.model = 200, answer.versions.model
        entry.config_version, entry.prompt_version, entry.index_version = (
            answer.versions.config, answer.versions.prompt, answer.versions.index,
        )  # fmt: skip
        entry.prompt_tokens, entry.completion_tokens = u.prompt_tokens, u.completion_tokens
        entry.cached_tokens, entry.embedding_tokens = u.cached_tokens, u.embedding_tokens
        entry.cost_usd = self.accountant.cost(entry, prepared.embedding_model)
        entry.latency_ms["total"] = answer.timings.total_ms
        self.accountant.record(entry)
        return measures(answer, entry.cost_usd)

    def run_forever(self) -> None:
        """Drain the queue until :meth:`stop`; errors are logged and retried."""
        while not self.stopping.is_set():
            try:
                taken = self.run_once()
            except (psycopg.Error, RagopsError) as exc:
                log.warning("rollout worker: %s; retrying", type(exc).__name__)
                taken = 0
            if not taken:
                self.stopping.wait(self.poll_s)

    def start(self) -> threading.Thread:
        """Run in a daemon thread."""
        self._thread = threading.Thread(target=self.run_forever, name="ragops-rollouts", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop after the current question."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
