"""Reading Prometheus' text exposition format in tests."""

from __future__ import annotations


def metric_series(text: str) -> dict[str, float]:
    """Every sample line of ``/metrics`` as ``{'name{labels}': value}`` (comments skipped)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


REJECTED = 'ragops_rejected_requests_total{reason="%s"}'
