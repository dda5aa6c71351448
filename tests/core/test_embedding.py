"""The embedder under concurrency."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from core import embedding
from core.embedding import Embedder


class _SlowEmbedder(Embedder):
    """Records how many model batches overlap; the base class decides how many may."""

    model_name = "slow"
    dimension = 4

    def __init__(self) -> None:
        super().__init__()
        self.running, self.peak, self._lock = 0, 0, threading.Lock()

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            time.sleep(0.05)  # widen the window in which batches could overlap
            return np.ones((len(texts), self.dimension), dtype=np.float32)
        finally:
            with self._lock:
                self.running -= 1


def test_embedding_batches_run_at_most_one_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sixteen threads on a 3-core allowance: exactly three batches overlap, never more, whatever the host has."""
    monkeypatch.setattr(embedding, "_cores", lambda: 3)  # fewer than the threads on any host
    embedder = _SlowEmbedder()
    threads = [threading.Thread(target=embedder.embed_query, args=(f"question {i}",)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert embedder.peak == 3
    assert embedder.texts_embedded == 16


def test_the_core_allowance_is_the_affinity_mask_not_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container pinned to two CPUs of a 64-core host gets two slots."""
    monkeypatch.setattr(embedding.os, "sched_getaffinity", lambda pid: {5, 9}, raising=False)
    monkeypatch.setattr(embedding.os, "cpu_count", lambda: 64)
    assert embedding._cores() == 2


def test_the_real_model_embeds_under_concurrency(embedder: Embedder) -> None:
    """Sixteen threads on the real model get the same vector each as one thread alone."""
    alone = embedder.embed_query("question 0")
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(embedder.embed_query("question 0"))) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 16
    assert all(np.allclose(vector, alone, atol=1e-5) for vector in results)
