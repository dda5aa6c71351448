"""RAG configuration files: validated strictly, versioned by content."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import config as config_module
from core.config import CHUNKER_VERSION, IndexSettings, list_config_names, load_config
from core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_repository_configurations_are_valid() -> None:
    names = list_config_names(REPO / "configs")
    assert "default" in names
    for name in names:
        assert load_config(name, REPO / "configs").version.startswith(f"{name}@")


def test_version_changes_with_the_bytes(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("index:\n  chunking:\n    chunk_size: 100\n")
    first = load_config("a", tmp_path).version
    (tmp_path / "a.yaml").write_text("index:\n  chunking:\n    chunk_size: 100  # comment\n")
    assert load_config("a", tmp_path).version != first


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "index:\n  chunking:\n    chunk_sise: 100\n",
            "index.chunking.chunk_sise: Extra inputs are not permitted",
        ),
        ("index:\n  chunking:\n    chunk_size: 10\n", "index.chunking.chunk_size"),
        (
            "index:\n  chunking:\n    chunk_size: 64\n    chunk_overlap: 64\n",
            "must be smaller than chunk_size",
        ),
        ("index: [1, 2\n", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("retrieval_typo: {}\n", "retrieval_typo: Extra inputs are not permitted"),
        ("index:\n  sentence_vectors: sometimes\n", "index.sentence_vectors"),
        ("generation:\n  extractive:\n    rescore: -1\n", "generation.extractive.rescore"),
    ],
)
def test_invalid_files_get_a_precise_message(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config("bad", tmp_path)
    assert message in str(info.value)
    assert "bad.yaml" in str(info.value)


def test_unknown_names_are_refused_with_the_known_ones(tmp_path: Path) -> None:
    (tmp_path / "small.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"unknown configuration 'missing': no file .*known: small"):
        load_config("missing", tmp_path)


@pytest.mark.parametrize("name", ["../outside", "sub/../../outside", "/abs/outside", ""])
def test_unsafe_names_are_refused_before_any_file_is_read(tmp_path: Path, name: str) -> None:
    """A valid file waits where the traversal points: only the name check stands between it and the loader."""
    configs = tmp_path / "configs"
    (configs / "sub").mkdir(parents=True)
    (tmp_path / "outside.yaml").write_text("{}\n")
    (configs / "outside.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"invalid configuration name .*use letters, digits"):
        load_config(name, configs)


# The default index version's hash. It changes only when the chunks or vectors would: chunker version 2
# (chunks fitted to the embedder's input limit) moved it from fc711bfb...; the embedding backend,
# precision, batch size and query cache never did, so an index built with one backend serves the other.
DEFAULT_VERSION_HASH = "4de39ee6f3da40453add81df388f1bf99e84b51da1e97bbbd88084973f8b3e19"


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ({"embedding": {"batch_size": 8}}, True),
        # Same vectors (checked when a model is exported): switching backend must not rebuild the index.
        ({"embedding": {"backend": "torch"}}, True),
        ({"embedding": {"backend": "onnx"}}, True),
        # Same vectors again (checked against float32 on probe texts when the model loads).
        ({"embedding": {"precision": "float32"}}, True),
        ({"embedding": {"precision": "bfloat16"}}, True),
        ({"embedding": {"query_cache_size": 0}}, True),
        # Sentence vectors change no chunk, vector or search result; a version lacking them gets them on ingest.
        ({"sentence_vectors": False}, True),
        ({"chunking": {"chunk_size": 128}}, False),
        ({"embedding": {"model": "/models/other"}}, False),
        ({"embedding": {"normalize": False}}, False),
    ],
)
def test_index_version_hash_follows_what_changes_the_vectors(change: dict[str, object], same: bool) -> None:
    assert IndexSettings().version_hash() == DEFAULT_VERSION_HASH
    assert (IndexSettings.model_validate(change).version_hash() == DEFAULT_VERSION_HASH) is same


def test_the_chunking_rule_is_part_of_the_index_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks fitted to the embedder are not mixed into a version built by the chunker before (version 1)."""
    assert IndexSettings().identity()["chunker_version"] == CHUNKER_VERSION == 2
    monkeypatch.setattr(config_module, "CHUNKER_VERSION", 1)
    assert IndexSettings().version_hash().startswith("fc711bfb")  # what existing index versions were built as
