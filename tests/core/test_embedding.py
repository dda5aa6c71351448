"""The embedder under concurrency."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from core.embedding import Embedder


def test_embedding_batches_run_at_most_one_per_core(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sixteen threads embed at once; the real model's batches never overlap more than the cores allow."""
    running, peak, lock = 0, 0, threading.Lock()
    real = embedder._embed

    def counted(texts: Sequence[str]) -> np.ndarray:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            time.sleep(0.02)  # widen the window in which batches could overlap
            return real(texts)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(embedder, "_embed", counted)
    threads = [threading.Thread(target=embedder.embed_query, args=(f"question {i}",)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 1 <= peak <= len(os.sched_getaffinity(0))
