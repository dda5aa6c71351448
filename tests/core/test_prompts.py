"""Prompt files: parsed, validated, versioned, rendered with values kept as data."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.catalog import Catalog
from core.errors import ConfigError
from core.prompts import load_prompt
from tests.conftest import REPO

GOOD = """---
name: p
description: test prompt
variables: [question, context]
---
## system
Answer from the documents. Literal braces: {{not a variable}}.
## user
{context}

Q: {question}
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.md"
    path.write_text(text)
    return path


def test_render_keeps_values_as_data(tmp_path: Path) -> None:
    write(tmp_path, "p", GOOD)
    prompt = load_prompt("p", tmp_path)
    messages = prompt.render(question="What is {context}?", context="<document n=1>{x}</document>")
    assert messages[0] == {"role": "system", "content": "Answer from the documents. Literal braces: {not a variable}."}
    assert messages[1]["role"] == "user"
    assert "What is {context}?" in messages[1]["content"] and "{x}" in messages[1]["content"]
    assert prompt.version.startswith("p@") and len(prompt.version) == 14


def test_version_follows_the_bytes(tmp_path: Path) -> None:
    write(tmp_path, "p", GOOD)
    first = load_prompt("p", tmp_path).version
    write(tmp_path, "p", GOOD.replace("Answer from", "Answer only from"))
    assert load_prompt("p", tmp_path).version != first


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no front matter", "missing YAML front matter"),
        ("---\nname: p\nvariables: [question, context]\n---\n## user\n{question}{context}\n", "'## system'"),
        ("---\nname: other\nvariables: [question, context]\n---\n## system\nx\n## user\n{question}{context}\n",
         "differs from the file name"),
        ("---\nname: p\nvariables: [question]\n---\n## system\nx\n## user\n{question}{context}\n",
         "variables declared ['question'] but the templates use ['context', 'question']"),
        ("---\nname: p\nvariables: [question]\n---\n## system\nx\n## user\n{question}\n", "must use"),
        ("---\nname: p\ncolour: red\nvariables: []\n---\n## system\nx\n## user\ny\n", "colour: Extra inputs"),
    ],
)  # fmt: skip
def test_bad_prompt_files_get_a_precise_message(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path, "p", text)
    with pytest.raises(ConfigError) as info:
        load_prompt("p", tmp_path)
    assert message in str(info.value)
    assert "p.md" in str(info.value)


def test_repository_catalog_loads() -> None:
    catalog = Catalog.load(REPO / "configs", REPO / "prompts", "default")
    assert catalog.prompt_for(catalog.config(None)).name == "default"


def test_a_config_naming_a_missing_prompt_is_refused(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "default.yaml").write_text("generation:\n  prompt: nope\n")
    with pytest.raises(ConfigError, match=r"generation\.prompt: unknown prompt 'nope'"):
        Catalog.load(tmp_path / "configs", REPO / "prompts", "default")
