"""The request path's part of a rollout: which side answers, and queueing a sampled question for the worker.

Nothing here answers a second time: a sampled question is one INSERT, written with the ledger row after
the response (its PII-filtered text and the measures of the answer the user got); the worker answers
it on the other side. Active rollouts are read at most once per ``ttl_s`` per process, so a request
costs no query; an abort or a promotion reaches every process within that time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import threading
import time

import psycopg
from psycopg_pool import ConnectionPool

from app.after_answer import AfterAnswer
from app.answers import Answer, Prepared, Question
from app.rollouts import store
from app.rollouts.measures import measures
from app.rollouts.store import Rollout, Side
from core.access import Grant

log = logging.getLogger(__name__)
ROLLOUT_TTL_S = 1.0


def canary_side(key_id: int | None, rollout: Rollout) -> Side:
    """Sticky per key and rollout: hash(key id, rollout id) below the canary share answers with the candidate."""
    digest = hashlib.sha256(f"{key_id}:{rollout.id}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return "candidate" if position < rollout.guards.canary_share else "live"


@dataclasses.dataclass(frozen=True)
class Assignment:
    """The rollout a request takes part in, and the side that answers it."""

    rollout: Rollout
    side: Side


class RolloutRouter:
    """Routes requests of collections with an active rollout; one per process."""

    def __init__(self, pool: ConnectionPool, *, ttl_s: float = ROLLOUT_TTL_S, rng: random.Random | None = None) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        self.rng = rng or random.Random()
        self._active: dict[str, Rollout] = {}
        self._expires = 0.0
        self._lock = threading.Lock()

    def active(self, collection: str) -> Rollout | None:
        """The collection's active rollout, as read at most ``ttl_s`` ago."""
        now = time.monotonic()
        if now >= self._expires:
            with self._lock:
                if now >= self._expires:
                    try:
                        with self.pool.connection() as conn:
                            self._active = store.active_rollouts(conn)
                    except psycopg.Error as exc:  # serving goes on with the last known state
                        log.warning("rollouts: could not read the active rollouts: %s", type(exc).__name__)
                    self._expires = now + self.ttl_s
        return self._active.get(collection)

    def forget(self) -> None:
        """Read the rollouts again on the next request (after a change made in this process)."""
        self._expires = 0.0

    def route(
        self, question: Question, grant: Grant, default_config: str, key_id: int | None
    ) -> tuple[Question, Grant, Assignment | None]:
        """The question and grant to answer with, and the assignment; unchanged outside a rollout.

        A request takes part when it asks its collection with the rollout's live configuration and
        pins no index version. The candidate side answers with the operator's candidate, which the
        key need not be granted by name.
        """
        if question.index_version is not None:
            return question, grant, None
        rollout = self.active(grant.collection(question.collection))
        if rollout is None or grant.config(question.config, default_config) != rollout.live.config:
            return question, grant, None
        side: Side = "live" if rollout.status == "shadow" else canary_side(key_id, rollout)
        if side == "candidate":
            c = rollout.candidate
            question = dataclasses.replace(question, config=c.config, prompt=c.prompt, index_version=c.index_version)
            grant = Grant(grant.collections, None)
        return question, grant, Assignment(rollout, side)

    def after_answer(self, assignment: Assignment, prepared: Prepared, answer: Answer, cost_usd: float,
                     request_id: str) -> AfterAnswer | None:  # fmt: skip
        """Queueing the question for the other side, for a sampled share of answers (never unfiltered text).

        The sample is drawn and the answer measured now; the row is written with the ledger row.
        """
        rollout = assignment.rollout
        rate = rollout.guards.shadow_sample_rate if rollout.status == "shadow" else rollout.guards.canary_sample_rate
        if rate <= 0 or self.rng.random() >= rate or not prepared.pii.applies("question"):
            return None
        question, served = prepared.question.text, measures(answer, cost_usd)
        return AfterAnswer(
            "rollout queue",
            lambda conn: store.enqueue(conn, rollout, request_id, assignment.side, question, served),
        )
