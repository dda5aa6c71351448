"""Live answer measures: the answer-side drift signals of the answers recorded in a window.

One seam, :class:`AnswerMeasures`, so the source can change without the monitor changing: the
ledger (cost and PII counts of each recorded answer, joined on its request id) and the numbers
recorded beside each answer's observation (length, refusal, and online evaluation's support
share), side by side through :class:`CombinedMeasures`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime

import numpy as np
import psycopg

from core.drift import store


class AnswerMeasures(ABC):
    """Per-answer measures of the answers recorded for (collection, config) in ``[start, end)``."""

    signals: tuple[str, ...]

    @abstractmethod
    def window(
        self, conn: psycopg.Connection, collection: str, config: str, start: datetime, end: datetime
    ) -> dict[str, np.ndarray]:
        """Signal name -> one value per answer that has the measure (answers without it are left out)."""


class LedgerMeasures(AnswerMeasures):
    """Cost and PII entities filtered, from each answer's ledger row."""

    signals = ("cost_usd", "pii_entities")

    def window(
        self, conn: psycopg.Connection, collection: str, config: str, start: datetime, end: datetime
    ) -> dict[str, np.ndarray]:
        rows = conn.execute(
            """SELECT l.cost_usd::float8,
                      coalesce((SELECT sum(c.value::int) FROM jsonb_each(l.pii_counts) AS s(stage, counts),
                                jsonb_each_text(s.counts) AS c(type, value)
                                WHERE jsonb_typeof(s.counts) = 'object'), 0)
               FROM drift_observations o JOIN ledger l ON l.request_id = o.request_id
               WHERE o.collection = %s AND o.config = %s AND o.created_at >= %s AND o.created_at < %s
                 AND l.status < 400
               ORDER BY o.id""",
            (collection, config, start, end),
        ).fetchall()
        return {name: np.array([r[i] for r in rows], dtype=np.float64) for i, name in enumerate(self.signals)}


class ObservedMeasures(AnswerMeasures):
    """Answer length, refusal and support share, as recorded beside each answer's observation."""

    signals = ("answer_tokens", "refusal", "support_share")

    def window(
        self, conn: psycopg.Connection, collection: str, config: str, start: datetime, end: datetime
    ) -> dict[str, np.ndarray]:
        return store.window_answers(conn, collection, config, start, end)


class BlockMeasures(AnswerMeasures):
    """Share of questions refused for carrying personal data of a blocked type (they leave no answer)."""

    signals = ("pii_blocked",)

    def window(
        self, conn: psycopg.Connection, collection: str, config: str, start: datetime, end: datetime
    ) -> dict[str, np.ndarray]:
        return {"pii_blocked": store.window_blocks(conn, collection, config, start, end)}


class CombinedMeasures(AnswerMeasures):
    """Several sources side by side; a later source's signal wins over an earlier one's of the same name."""

    def __init__(self, sources: Sequence[AnswerMeasures]) -> None:
        self.sources = tuple(sources)
        self.signals = tuple(dict.fromkeys(s for source in self.sources for s in source.signals))

    def window(
        self, conn: psycopg.Connection, collection: str, config: str, start: datetime, end: datetime
    ) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for source in self.sources:
            out.update(source.window(conn, collection, config, start, end))
        return out


class CorpusSamples(ABC):
    """Chunk vectors of a collection's active index: those of documents ingested in a window, and the rest.

    Implemented where the index is known (``ingest.drift_corpus``); the worker hands it to the monitor.
    """

    @abstractmethod
    def window(
        self, conn: psycopg.Connection, collection: str, start: datetime, end: datetime, limit: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(chunks of documents added or changed in ``[start, end)``, a sample of the chunks indexed before)."""


def default_measures() -> AnswerMeasures:
    """The answer measures the worker reads: the ledger's, those recorded with each answer, and PII blocks."""
    return CombinedMeasures([LedgerMeasures(), ObservedMeasures(), BlockMeasures()])
