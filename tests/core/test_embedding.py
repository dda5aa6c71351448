"""Embedders: concurrency, the ONNX backend and bfloat16 against torch in float32, the query cache."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core import embedding
from core.config import EmbeddingSettings, load_config
from core.embedding import (
    Embedder,
    OnnxEmbedder,
    build_embedder,
    export_onnx,
    get_embedder,
    onnx_export_dir,
    resolve_model_path,
    weights_hash,
)
from core.errors import EmbeddingError
from ingest.chunking import Chunker
from ingest.loaders import load_file
from ingest.sentences import sentence_spans
from tests.conftest import REPO


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


# --- the model's own tokens and input limit --------------------------------------------------------


def _longest_prefix_within(embedder: Embedder, text: str, limit: int) -> str:
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if embedder.count_tokens([text[:mid]])[0] <= limit else (lo, mid - 1)
    return text[:lo]


def test_the_limit_and_the_count_are_where_the_model_cuts(embedder: Embedder) -> None:
    """Word pieces with [CLS] and [SEP], up to 256: the model reads the longest prefix within them and nothing more."""
    assert embedder.max_tokens == 256
    assert embedder.count_tokens(["", "hello world"]) == [2, 4]
    long = " ".join(str(n) for n in range(4_000_000, 4_000_200))  # 200 seven-digit numbers, 3 pieces or more each
    assert embedder.count_tokens([long])[0] > 500
    read = _longest_prefix_within(embedder, long, embedder.max_tokens)
    unread = long[len(read) : len(read) + 8]
    vectors = embedder.embed_batch([long, read, read + unread])
    assert float(vectors[0] @ vectors[1]) > 0.9999 and float(vectors[0] @ vectors[2]) > 0.9999
    shorter = embedder.embed_batch([_longest_prefix_within(embedder, long, embedder.max_tokens - 8)])[0]
    assert float(vectors[0] @ shorter) < 0.9999  # the last pieces within the limit are read


def test_the_embedder_counts_the_texts_it_cuts(embedder: Embedder) -> None:
    """Each call reports its own count (ingest sums them); the process-wide counter adds them all."""
    long = " ".join(str(n) for n in range(4_000_000, 4_000_200))
    before, seen = embedder.texts_truncated, []
    vectors = embedder.embed_batch(["a short text", long, "another short one"], on_truncated=seen.append)
    assert vectors.shape == (3, embedder.dimension)
    embedder.embed_batch(["fits easily"], on_truncated=seen.append)
    assert seen == [1, 0] and embedder.texts_truncated == before + 1
    assert embedder.count_truncated(["a", long, long + " 1"]) == 2


def test_an_embedder_without_a_tokenizer_has_no_limit() -> None:
    """A custom embedder that knows no tokenizer cuts nothing that it could count: chunks are not fitted to it."""
    slow = _SlowEmbedder()
    assert slow.max_tokens is None and slow.count_truncated(["x" * 10_000]) == 0
    seen: list[int] = []
    slow.embed_batch(["x" * 10_000], on_truncated=seen.append)
    assert seen == [0]
    with pytest.raises(EmbeddingError, match="has no tokenizer"):
        slow.count_tokens(["x"])


# --- the ONNX backend ----------------------------------------------------------------------------

SAMPLES = REPO / "samples"


@pytest.fixture(scope="module")
def sample_texts(torch_embedder: Embedder) -> dict[str, list[str]]:
    """The bundled samples as ingest embeds them (chunks of configs/default.yaml) and as whole documents."""
    chunker = Chunker(load_config("default", REPO / "configs").config.index.chunking, torch_embedder)
    texts: dict[str, list[str]] = {"chunks": [], "documents": []}
    for path in sorted(p for p in SAMPLES.rglob("*") if p.is_file()):
        for result in load_file(path, path.relative_to(SAMPLES).as_posix()):
            if result.document is not None:
                texts["documents"].append(result.document.text)
                texts["chunks"].extend(chunk.embed_text for chunk in chunker.split(result.document))
    return texts


@pytest.fixture(scope="module")
def torch_embedder(models_dir: Path) -> Embedder:
    """The reference: torch in float32."""
    return get_embedder(EmbeddingSettings(backend="torch", precision="float32"), cache_root=models_dir)


@pytest.fixture(scope="module")
def onnx_embedder(models_dir: Path) -> Embedder:
    return get_embedder(EmbeddingSettings(backend="onnx"), cache_root=models_dir)


@pytest.mark.parametrize("unit", ["chunks", "documents"])
def test_onnx_gives_the_torch_vectors_on_the_samples(
    sample_texts: dict[str, list[str]], torch_embedder: Embedder, onnx_embedder: Embedder, unit: str
) -> None:
    """Every chunk (and every whole document, truncated at 256 word pieces) gets torch's vector."""
    texts = sample_texts[unit]
    assert len(texts) >= 20 and (unit == "chunks" or max(map(len, texts)) > 2000)  # documents exceed 256 pieces
    assert (torch_embedder.backend, onnx_embedder.backend) == ("torch", "onnx")
    expected, got = torch_embedder.embed_batch(texts), onnx_embedder.embed_batch(texts)
    assert got.shape == expected.shape and got.dtype == np.float32
    cosines = np.sum(expected * got, axis=1)
    worst = int(np.argmin(cosines))
    assert cosines[worst] >= 0.9999, texts[worst][:200]
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_both_backends_count_tokens_alike(
    sample_texts: dict[str, list[str]], torch_embedder: Embedder, onnx_embedder: Embedder
) -> None:
    """The ONNX export's tokenizer and limit are torch's: the same counts, the same texts cut."""
    documents = sample_texts["documents"]
    assert onnx_embedder.max_tokens == torch_embedder.max_tokens == 256
    assert onnx_embedder.count_tokens(documents) == torch_embedder.count_tokens(documents)
    assert onnx_embedder.count_truncated(documents) == torch_embedder.count_truncated(documents) > 0
    assert torch_embedder.count_truncated(sample_texts["chunks"]) == 0  # as ingest chunks them


def test_the_default_backend_is_torch_and_auto_picks_onnx(embedder: Embedder, models_dir: Path) -> None:
    """torch by default (bench/ingest_bench.py measured it faster on a quiet machine); auto: ONNX when it exports."""
    assert EmbeddingSettings().backend == "torch" and embedder.backend == "torch"
    assert get_embedder(EmbeddingSettings(backend="auto"), cache_root=models_dir).backend == "onnx"


def test_the_export_is_reproducible(onnx_embedder: Embedder, tmp_path: Path) -> None:
    """Exporting the same weights again writes the same bytes, and the cache folder says which."""
    assert isinstance(onnx_embedder, OnnxEmbedder)
    cached = json.loads((onnx_embedder.folder / "meta.json").read_text())
    folder = Path(resolve_model_path("all-MiniLM-L6-v2"))
    again = export_onnx(folder, tmp_path)
    assert again["onnx_sha256"] == cached["onnx_sha256"]
    assert hashlib.sha256((tmp_path / "model.onnx").read_bytes()).hexdigest() == cached["onnx_sha256"]
    assert again["fused"] and again["probe_min_cosine"] >= 0.9999
    assert cached["weights_sha256"] == again["weights_sha256"] == weights_hash(folder)


def test_the_export_cache_is_keyed_by_the_weights(tmp_path: Path) -> None:
    """A changed weights file is another export; a changed README is not."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "README.md").write_text("about")
    before = onnx_export_dir(str(folder), tmp_path / "cache")
    (folder / "README.md").write_text("about, edited")
    assert onnx_export_dir(str(folder), tmp_path / "cache") == before
    (folder / "model.safetensors").write_bytes(b"other weights")
    assert onnx_export_dir(str(folder), tmp_path / "cache") != before


def _write_static_model(folder: Path) -> None:
    """A real sentence-transformers folder with no transformer: a static (word-vector) model."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(resolve_model_path("all-MiniLM-L6-v2")) / "tokenizer.json"))
    weights = np.zeros((tokenizer.get_vocab_size(), 8), dtype=np.float32)
    SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_weights=weights)]).save(str(folder))


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (lambda folder: None, "it does not load as a sentence-transformers model"),
        (lambda folder: (folder / "config.json").write_text("{not json"), "it does not load as a sentence-"),
        (_write_static_model, "its tokenizer has no fast (tokenizer.json) form"),
    ],
    ids=["empty folder", "broken files", "static model"],
)
def test_a_folder_that_cannot_be_exported_is_refused_by_name(
    tmp_path: Path, write: Callable[[Path], Any], reason: str
) -> None:
    folder = tmp_path / "not-exportable"
    folder.mkdir()
    write(folder)
    cache = tmp_path / "cache"
    with pytest.raises(EmbeddingError) as caught:
        build_embedder(EmbeddingSettings(model=str(folder), backend="onnx"), cache)
    assert f"cannot export embedding model folder {folder} to ONNX: {reason}" in str(caught.value)
    assert not any(cache.iterdir()), "a failed export leaves nothing behind"


# --- bfloat16 --------------------------------------------------------------------------------------

NO_NATIVE_BFLOAT16 = "this CPU has no native bfloat16 (AVX512-BF16 or AMX)"
needs_native_bfloat16 = pytest.mark.skipif(not embedding.native_bfloat16(), reason=NO_NATIVE_BFLOAT16)


@pytest.fixture(scope="module")
def bfloat16_embedder(models_dir: Path) -> Embedder:
    if not embedding.native_bfloat16():
        pytest.skip(NO_NATIVE_BFLOAT16)
    return get_embedder(EmbeddingSettings(backend="torch", precision="bfloat16"), cache_root=models_dir)


@pytest.mark.parametrize("unit", ["chunks", "documents"])
def test_bfloat16_gives_the_float32_vectors_on_the_samples(
    sample_texts: dict[str, list[str]], torch_embedder: Embedder, bfloat16_embedder: Embedder, unit: str
) -> None:
    """Every chunk (and every whole document) gets float32's vector, as unit vectors in float32."""
    texts = sample_texts[unit]
    assert (torch_embedder.precision, bfloat16_embedder.precision) == ("float32", "bfloat16")
    expected, got = torch_embedder.embed_batch(texts), bfloat16_embedder.embed_batch(texts)
    assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    cosines = np.sum(expected * got, axis=1)
    worst = int(np.argmin(cosines))
    assert cosines[worst] >= embedding.SAME_VECTORS_COSINE, texts[worst][:200]
    assert np.max(np.abs(expected - got)) > 0, "bfloat16 arithmetic was not used"


@needs_native_bfloat16
def test_auto_precision_is_bfloat16_where_the_cpu_has_it(embedder: Embedder) -> None:
    assert EmbeddingSettings().precision == "auto" and embedder.precision == "bfloat16"


@pytest.mark.parametrize("precision", [pytest.param("bfloat16", marks=needs_native_bfloat16), "float32"])
def test_the_chosen_precision_is_logged_and_bfloat16_weights_are_cast_once(
    precision: str, caplog: pytest.LogCaptureFixture
) -> None:
    """bfloat16 stores the linear layers' weights in bfloat16 (autocast would re-cast float32 ones per call)."""
    import torch

    with caplog.at_level("INFO", logger="core.embedding"):
        embedder = build_embedder(EmbeddingSettings(precision=precision), Path("unused"))
    assert f"embedding model all-MiniLM-L6-v2: torch, {precision}, batch 16" in caplog.text
    linear = [m for m in embedder._model.modules() if isinstance(m, torch.nn.Linear)]
    assert linear and {m.weight.dtype for m in linear} == {getattr(torch, precision)}


def test_auto_precision_is_float32_without_native_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU without bfloat16 is simulated (the CPU feature probe answers no); explicit bfloat16 is then refused."""
    monkeypatch.setattr(embedding, "native_bfloat16", lambda: False)
    assert build_embedder(EmbeddingSettings(), Path("unused")).precision == "float32"
    with pytest.raises(EmbeddingError, match="precision bfloat16 needs a CPU with native bfloat16"):
        build_embedder(EmbeddingSettings(precision="bfloat16"), Path("unused"))


@needs_native_bfloat16
def test_bfloat16_that_misses_the_float32_vectors_is_not_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The probe check is real; only the bar is raised past what any arithmetic but float32's can reach."""
    monkeypatch.setattr(embedding, "SAME_VECTORS_COSINE", 1.000001)
    with caplog.at_level("WARNING", logger="core.embedding"):
        assert build_embedder(EmbeddingSettings(), Path("unused")).precision == "float32"
    assert "bfloat16 vectors of 'all-MiniLM-L6-v2' differ from float32's" in caplog.text
    with pytest.raises(EmbeddingError, match=r"differ from float32's \(cosine 0\.9.*: set precision to auto"):
        build_embedder(EmbeddingSettings(precision="bfloat16"), Path("unused"))


# --- the query cache -----------------------------------------------------------------------------


@pytest.fixture
def cached_embedder(models_dir: Path) -> Embedder:
    """The real model with a query cache of two questions, emptied for each test."""
    embedder = get_embedder(EmbeddingSettings(query_cache_size=2), cache_root=models_dir)
    embedder.clear_query_cache()
    return embedder


def test_a_repeated_question_comes_from_the_cache(cached_embedder: Embedder) -> None:
    embedded, hits = cached_embedder.texts_embedded, cached_embedder.query_cache_hits
    first = cached_embedder.embed_query("How many PTO days do new employees get?")
    again = cached_embedder.embed_query("How many PTO days do new employees get?")
    assert cached_embedder.texts_embedded == embedded + 1
    assert cached_embedder.query_cache_hits == hits + 1
    assert np.array_equal(first, again)
    assert np.array_equal(again, cached_embedder.embed_batch(["How many PTO days do new employees get?"])[0])


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda v: v.__setitem__(0, 42.0),
        lambda v: v.__imul__(2.0),
        lambda v: v.setflags(write=True),
        lambda v: v.base.setflags(write=True) if v.base is not None else v.setflags(write=True),
    ],
    ids=["item", "in place", "writeable flag", "base's writeable flag"],
)
def test_callers_cannot_corrupt_a_cached_vector(cached_embedder: Embedder, corrupt: Callable[[Any], Any]) -> None:
    cold = cached_embedder.embed_query("Which days are office days?")
    pristine = np.array(cold)
    for vector in (cold, cached_embedder.embed_query("Which days are office days?")):
        with pytest.raises(ValueError):
            corrupt(vector)
    assert np.array_equal(cached_embedder.embed_query("Which days are office days?"), pristine)


def test_the_query_cache_forgets_the_least_recently_used(cached_embedder: Embedder) -> None:
    for question in ("a", "b", "a", "c"):  # "a" was used after "b": "b" is the one dropped
        cached_embedder.embed_query(question)
    embedded = cached_embedder.texts_embedded
    cached_embedder.embed_query("a")
    cached_embedder.embed_query("c")
    assert cached_embedder.texts_embedded == embedded
    cached_embedder.embed_query("b")
    assert cached_embedder.texts_embedded == embedded + 1


def test_the_query_cache_under_concurrency(cached_embedder: Embedder) -> None:
    """Sixteen threads asking two questions get one vector per question, equal to a single thread's."""
    results: list[tuple[str, np.ndarray]] = []
    questions = ["question one", "question two"] * 8

    def ask(question: str) -> None:
        results.append((question, cached_embedder.embed_query(question)))

    threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    asked = ["question one", "question two"]
    expected = dict(zip(asked, cached_embedder.embed_batch(asked), strict=True))
    assert len(results) == 16
    assert all(np.allclose(vector, expected[q], atol=1e-6) for q, vector in results)


def test_no_query_cache_when_its_size_is_zero(models_dir: Path) -> None:
    embedder = get_embedder(EmbeddingSettings(query_cache_size=0), cache_root=models_dir)
    embedded = embedder.texts_embedded
    first, second = embedder.embed_query("same question"), embedder.embed_query("same question")
    assert embedder.texts_embedded == embedded + 2 and embedder.query_cache_hits == 0
    first[0] = 1.0  # its own fresh array, as without a cache
    assert not np.array_equal(first, second)


@pytest.fixture(scope="module")
def sample_chunks(torch_embedder: Embedder) -> list[tuple[str, list[tuple[tuple[int, int], ...]]]]:
    """The samples' chunks as ingest embeds them, each with its candidates' spans in the embedded text."""
    chunker = Chunker(load_config("default", REPO / "configs").config.index.chunking, torch_embedder)
    out = []
    for path in sorted(p for p in SAMPLES.rglob("*") if p.is_file()):
        for result in load_file(path, path.relative_to(SAMPLES).as_posix()):
            if result.document is not None:
                for chunk in chunker.split(result.document):
                    offset = len(chunk.embed_text) - len(chunk.text)
                    out.append((chunk.embed_text, sentence_spans(chunk.text, chunk.section, offset)))
    return out


@pytest.mark.parametrize("backend", ["torch", "onnx", "bfloat16"])
def test_pooling_sentence_vectors_leaves_the_chunk_vectors_as_they_are(
    sample_chunks: list[tuple[str, list[tuple[tuple[int, int], ...]]]], request: pytest.FixtureRequest, backend: str
) -> None:
    """The pass that pools sentence vectors gives each chunk the vector it gets without them (the index's vectors)."""
    embedder: Embedder = request.getfixturevalue(f"{backend}_embedder")  # only bfloat16 may skip
    assert embedder.pools_spans
    texts = [text for text, _ in sample_chunks]
    vectors, pooled = embedder.embed_pooled(texts, [spans for _, spans in sample_chunks])
    assert np.min(np.sum(vectors * embedder.embed_batch(texts), axis=1)) >= 0.9999
    assert [len(p) for p in pooled] == [len(spans) for _, spans in sample_chunks]
    assert sum(len(p) for p in pooled) > 3 * len(texts)
    rows = np.concatenate(pooled)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)  # the chunker fits chunks: every sentence read


@pytest.mark.parametrize("other", ["onnx", "bfloat16"])
def test_every_backend_pools_the_same_sentence_vectors(
    sample_chunks: list[tuple[str, list[tuple[tuple[int, int], ...]]]],
    torch_embedder: Embedder,
    request: pytest.FixtureRequest,
    other: str,
) -> None:
    texts, spans = [text for text, _ in sample_chunks], [spans for _, spans in sample_chunks]
    expected = np.concatenate(torch_embedder.embed_pooled(texts, spans)[1])
    embedder: Embedder = request.getfixturevalue(f"{other}_embedder")  # only bfloat16 may skip
    got = np.concatenate(embedder.embed_pooled(texts, spans)[1])
    assert np.min(np.sum(expected * got, axis=1)) >= 0.9999


def test_a_sentence_vector_is_the_mean_of_its_tokens(torch_embedder: Embedder) -> None:
    """Pooled over a span, the model's own mean pooling over that part of the pass; a span past the cut is zero."""
    sentence = "The espresso machine is descaled every Friday."
    text = f"{sentence} " + " ".join(["filler words about nothing"] * 80)  # well past 256 word pieces
    past = (len(text) - 10, len(text))
    _, (pooled,) = torch_embedder.embed_pooled([text], [[((0, len(sentence)),), (past,)]])
    assert np.linalg.norm(pooled[1]) == 0.0
    _, (states,) = torch_embedder._embed_tokens([text])
    assert states is not None
    read = (states.offsets[:, 1] > states.offsets[:, 0]) & (states.offsets[:, 0] < len(sentence))
    mean = states.embeddings[read].mean(axis=0)
    assert np.allclose(pooled[0], mean / np.linalg.norm(mean), atol=1e-5)
    assert 0.5 < float(pooled[0] @ torch_embedder.embed_batch([sentence])[0]) < 1.0


def test_an_embedder_that_cannot_pool_says_so() -> None:
    slow = _SlowEmbedder()
    assert not slow.pools_spans
    with pytest.raises(EmbeddingError, match="cannot pool"):
        slow.embed_pooled(["a text"], [[((0, 1),)]])
