"""RAG configuration files: validated strictly, versioned by content."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import IndexSettings, list_config_names, load_config
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


# The default index version's hash before the embedding backend existed: existing indexes keep it.
DEFAULT_VERSION_HASH = "fc711bfb489b5cddc6aea61c2742e17f99b4a0ba718484325631acbbd410839c"


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ({"embedding": {"batch_size": 8}}, True),
        # Same vectors (checked when a model is exported): switching backend must not rebuild the index.
        ({"embedding": {"backend": "torch"}}, True),
        ({"embedding": {"backend": "onnx"}}, True),
        ({"embedding": {"query_cache_size": 0}}, True),
        ({"chunking": {"chunk_size": 128}}, False),
        ({"embedding": {"model": "/models/other"}}, False),
        ({"embedding": {"normalize": False}}, False),
    ],
)
def test_index_version_hash_follows_what_changes_the_vectors(change: dict[str, object], same: bool) -> None:
    assert IndexSettings().version_hash() == DEFAULT_VERSION_HASH
    assert (IndexSettings.model_validate(change).version_hash() == DEFAULT_VERSION_HASH) is same
