"""Keys, a priced question and a slowed generator, for the accounting and billing tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from app.generators.base import Delta, Finished, GenerationRequest, Generator
from app.keys import create_key
from core.db import Database

QUESTION = {"question": "How many PTO days do new employees get in their first year?"}
PRICED = """models:
  extractive:
    prompt_usd_per_million: 1000
    completion_usd_per_million: 0
  ragops-llm:
    prompt_usd_per_million: 1
    completion_usd_per_million: 1
embeddings: {}
"""


def new_key(
    database: Database,
    scopes: list[str],
    *,
    collections: list[str] | None = None,
    configs: list[str] | None = None,
    **limits: Any,
) -> str:
    """A fresh key (every collection and configuration unless narrowed); returns the secret."""
    with database.connect() as conn:
        name = f"k-{time.monotonic_ns()}"
        granted = {"collections": ["*"] if collections is None else collections, "configs": configs or ["*"]}
        return create_key(conn, name, scopes, **granted, **limits)[1]


class SlowGenerator(Generator):
    """The real extractive generator, slowed down between deltas.

    A fake in one respect only: a real generator answers these short texts faster than a
    client can hang up, so the disconnect could not be placed mid-stream.
    """

    name = "extractive"

    def __init__(self, inner: Generator) -> None:
        self.inner = inner

    def stream(self, request: GenerationRequest) -> Iterator[Delta | Finished]:
        for event in self.inner.stream(request):
            time.sleep(0.2)
            yield event

    def model_for(self, request: GenerationRequest) -> str:
        return self.inner.model_for(request)


@contextmanager
def slowed(app: Any) -> Iterator[None]:
    """The default configuration answers through :class:`SlowGenerator` inside, so requests stay in flight."""
    pipeline = app.state.pipeline
    config = pipeline.catalog.config(None)
    slot = f"extractive:{config.name}"
    real = pipeline.generator(config)
    pipeline._generators[slot] = SlowGenerator(real)
    try:
        yield
    finally:
        pipeline._generators[slot] = real
