"""Prometheus metrics, one registry per application (so tests can build many apps)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from psycopg_pool import ConnectionPool

from core.catalog import Catalog
from core.drift import store
from core.drift.signals import SIGNALS, group_size
from core.drift.stats import State

log = logging.getLogger(__name__)

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Labels of ragops_rejected_requests_total: a fixed set, so junk traffic cannot add series.
REJECTED_REASONS = ("unauthenticated", "not_found")


class Metrics:
    """Counters and histograms an operator scrapes at /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ragops_requests", "Requests by route template and status.", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "ragops_request_seconds", "Request latency by route template.", ["route"], buckets=_BUCKETS, registry=r
        )
        self.stage = Histogram(
            "ragops_stage_seconds", "Time per pipeline stage.", ["stage"], buckets=_BUCKETS, registry=r
        )
        self.tokens = Counter("ragops_tokens", "Tokens by kind and model.", ["kind", "model"], registry=r)
        self.cost = Counter("ragops_cost_usd", "Cost in USD by model.", ["model"], registry=r)
        self.budget_rejections = Counter("ragops_budget_rejections", "Requests refused by budgets.", registry=r)
        self.rate_limited = Counter("ragops_rate_limited", "Requests refused by rate limits.", registry=r)
        self.pii_detections = Counter(
            "ragops_pii_detections", "PII entities filtered, by type and stage.", ["type", "stage"], registry=r
        )
        self.pii_blocked = Counter("ragops_pii_blocked", "Requests refused for blocked PII types.", registry=r)
        self.pii_failures = Counter(
            "ragops_pii_failures", "PII filter errors and timeouts (requests failed closed).", registry=r
        )
        self.retrieval_empty = Counter("ragops_retrieval_empty", "Questions that retrieved nothing.", registry=r)
        self.retrievals = Counter("ragops_retrievals", "Questions that ran retrieval.", registry=r)
        self.generator_errors = Counter("ragops_generator_errors", "Generator failures by kind.", ["kind"], registry=r)
        self.rejected = Counter(
            "ragops_rejected_requests",
            "Requests refused before a key was verified (unauthenticated) or matching no route (not_found); "
            "never ledgered.",
            ["reason"],
            registry=r,
        )
        for reason in REJECTED_REASONS:  # every series exists from the start
            self.rejected.labels(reason)

    def watch_drift(self, pool: ConnectionPool, catalog: Catalog) -> None:
        """Export the newest drift verdicts as ``ragops_drift_*`` gauges (read at scrape time, cached briefly)."""
        self.registry.register(DriftCollector(pool, catalog))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


DRIFT_STATES: tuple[State, ...] = ("ok", "drift", "not_enough_data", "no_reference")
_DRIFT_CACHE_S = 15.0  # scrapes closer together than this reuse one query


class DriftCollector(Collector):
    """The newest judged window of every (collection, config, signal), with its thresholds and alert state.

    Labels come from drift_windows, whose collections and signals the operator's configuration and the
    fixed signal list bound, so junk traffic cannot add series.
    """

    def __init__(self, pool: ConnectionPool, catalog: Catalog) -> None:
        self.pool, self.catalog = pool, catalog
        self._lock = threading.Lock()
        self._cached: tuple[float, list[store.WindowRow]] = (0.0, [])

    def _rows(self) -> list[store.WindowRow]:
        with self._lock:
            at, rows = self._cached
            if time.monotonic() - at < _DRIFT_CACHE_S:
                return rows
            try:
                with self.pool.connection() as conn:
                    rows = store.latest_windows(conn)
            except psycopg.Error as exc:  # /metrics must answer even when the database does not
                log.warning("drift gauges: %s", type(exc).__name__)
                return rows
            self._cached = (time.monotonic(), rows)
            return rows

    def describe(self) -> list[GaugeMetricFamily]:
        """No samples at registration: collect() reads the database only when scraped."""
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["collection", "config", "signal"]
        families = {
            "p_value": GaugeMetricFamily("ragops_drift_p_value", "p-value of the newest judged window.", labels=labels),
            "statistic": GaugeMetricFamily(
                "ragops_drift_statistic", "Test statistic (MMD^2, KS D, rate difference).", labels=labels
            ),
            "psi": GaugeMetricFamily("ragops_drift_psi", "Population stability index (scalar signals).", labels=labels),
            "p_threshold": GaugeMetricFamily(
                "ragops_drift_p_threshold",
                "p below this counts as drift (alpha / signals in the group).",
                labels=labels,
            ),
            "psi_threshold": GaugeMetricFamily(
                "ragops_drift_psi_threshold", "Scalar signals also need this PSI to count as drift.", labels=labels
            ),
            "questions": GaugeMetricFamily(
                "ragops_drift_window_questions", "Answers in the newest judged window.", labels=labels
            ),
            "alert": GaugeMetricFamily(
                "ragops_drift_alert", "1 when the signal drifted on drift.consecutive windows in a row.", labels=labels
            ),
            "state": GaugeMetricFamily(
                "ragops_drift_state", "1 for the newest window's state.", labels=[*labels, "state"]
            ),
            "window_end": GaugeMetricFamily(
                "ragops_drift_window_end_seconds", "End of the newest judged window (Unix time).", labels=labels
            ),
        }
        for row in self._rows():
            key = [row.collection, row.config, row.signal]
            settings = self.catalog.configs[row.config].config.drift if row.config in self.catalog.configs else None
            for name, value in (("p_value", row.p_value), ("statistic", row.statistic), ("psi", row.psi)):
                if value is not None:
                    families[name].add_metric(key, value)
            if settings is not None and row.signal in SIGNALS:
                families["p_threshold"].add_metric(key, settings.alpha / group_size(SIGNALS[row.signal].group))
                if SIGNALS[row.signal].kind == "scalar":
                    families["psi_threshold"].add_metric(key, settings.psi_min)
            families["questions"].add_metric(key, row.n)
            families["alert"].add_metric(key, 1.0 if row.alarm else 0.0)
            families["window_end"].add_metric(key, row.window_end.timestamp())
            for state in DRIFT_STATES:
                families["state"].add_metric([*key, state], 1.0 if row.state == state else 0.0)
        yield from families.values()


QUALITY_MEASURES = ("support", "top_score", "margin", "refusal_rate", "citations_mean", "latency_ms_mean",
                    "cost_usd_mean", "pii_entities_mean", "faithfulness", "answer_relevancy")  # fmt: skip
QUALITY_LABELS = ["collection", "config", "prompt", "index", "measure"]


class QualityGauges(Collector):
    """Today's online-evaluation figures (UTC day) and the evaluation queue's length, read at scrape time.

    ``read`` returns (rows of ``online_eval.quality_report``, queued rows); it runs at most once
    every ``ttl_s`` so a fast scraper costs the database little. A failed read keeps the last figures.
    """

    def __init__(self, read: Callable[[], tuple[list[dict[str, Any]], int]], ttl_s: float = 30.0) -> None:
        self.read = read
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._cached: tuple[list[dict[str, Any]], int] = ([], 0)
        self._expires = 0.0

    def _figures(self) -> tuple[list[dict[str, Any]], int]:
        with self._lock:
            if time.monotonic() >= self._expires:
                try:
                    self._cached = self.read()
                except Exception as exc:  # the database away: /metrics still answers
                    log.warning("online quality gauges not refreshed: %s", type(exc).__name__)
                self._expires = time.monotonic() + self.ttl_s
            return self._cached

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """``ragops_online_quality`` per group and measure, ``ragops_online_evaluated_answers``, the queue length."""
        rows, queued = self._figures()
        quality = GaugeMetricFamily(
            "ragops_online_quality", "Today's online-evaluation means of sampled answers.", labels=QUALITY_LABELS
        )
        answers = GaugeMetricFamily(
            "ragops_online_evaluated_answers", "Sampled answers evaluated today.", labels=QUALITY_LABELS[:4]
        )
        judged = GaugeMetricFamily(
            "ragops_online_judged_answers", "Answers the LLM judge scored today.", labels=QUALITY_LABELS[:4]
        )
        judge_cost = GaugeMetricFamily(
            "ragops_online_judge_cost_usd", "What judging today's answers cost.", labels=QUALITY_LABELS[:4]
        )
        for row in rows:
            group = [row["collection"], row["config_version"], row["prompt_version"], row["index_version"]]
            answers.add_metric(group, row["answers"])
            judged.add_metric(group, row.get("judged") or 0)
            judge_cost.add_metric(group, row.get("judge_cost_usd") or 0.0)
            for measure in QUALITY_MEASURES:
                if row.get(measure) is not None:
                    quality.add_metric([*group, measure], float(row[measure]))
        yield quality
        yield answers
        yield judged
        yield judge_cost
        yield GaugeMetricFamily("ragops_online_eval_queued", "Answers waiting for online evaluation.", value=queued)


class SentenceVectorCounters(Collector):
    """How extractive answers got their candidates' vectors, read at scrape time from the generators.

    ``read`` returns (stored, embedded): candidates scored with the vector stored at ingest, and those
    embedded per answer because their chunk had none (a version not re-ingested since) or its filtered
    text split into other candidates. A growing ``embedded`` is an index to re-ingest.
    """

    def __init__(self, read: Callable[[], tuple[int, int]]) -> None:
        self.read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        """``ragops_extractive_candidates_total`` by ``vector`` (stored, embedded)."""
        stored, embedded = self.read()
        family = CounterMetricFamily(
            "ragops_extractive_candidates", "Extractive answer candidates by where their vector came from.",
            labels=["vector"],
        )  # fmt: skip
        family.add_metric(["stored"], stored)
        family.add_metric(["embedded"], embedded)
        yield family
