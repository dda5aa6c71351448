"""Prometheus metrics, one registry per application (so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

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

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
