"""Imports flow one way (evals -> app -> ingest -> core) and the web framework stays at the edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# What each layer must not import: everything above it (upward) and beside it (sideways).
FORBIDDEN = {
    "core": {"ingest", "app", "evals"},
    "ingest": {"app", "evals"},
    "app": {"evals"},
    "evals": set(),
}
FASTAPI_ALLOWED = ("app/main.py", "app/api/")


def imported_roots(path: Path) -> set[str]:
    """Top-level packages a module imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def layering_offenders(root: Path, package: str) -> dict[str, list[str]]:
    """Files of ``package`` under ``root`` that import a layer they must not, with what they import."""
    offenders = {}
    for path in sorted((root / package).rglob("*.py")):
        bad = imported_roots(path) & FORBIDDEN[package]
        if bad:
            offenders[path.relative_to(root).as_posix()] = sorted(bad)
    return offenders


def fastapi_offenders(root: Path) -> list[str]:
    """Files outside the HTTP edge that import the web framework."""
    return [
        rel
        for package in FORBIDDEN
        for path in sorted((root / package).rglob("*.py"))
        if {"fastapi", "starlette"} & imported_roots(path)
        and not (rel := path.relative_to(root).as_posix()).startswith(FASTAPI_ALLOWED)
    ]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_import_only_downwards(package: str) -> None:
    assert layering_offenders(REPO, package) == {}


def test_fastapi_is_imported_only_at_the_edge() -> None:
    assert fastapi_offenders(REPO) == []


@pytest.mark.parametrize(
    ("package", "source", "expected"),
    [
        ("core", "from app.rag import RagPipeline\n", ["app"]),  # upward
        ("core", "def f():\n    import ingest.pipeline\n", ["ingest"]),  # upward, inside a function
        ("ingest", "from evals import runner\n", ["evals"]),
        ("app", "import evals.cli\n", ["evals"]),
    ],
)
def test_a_planted_upward_import_is_caught(tmp_path: Path, package: str, source: str, expected: list[str]) -> None:
    (tmp_path / package).mkdir()
    (tmp_path / package / "planted.py").write_text(source, encoding="utf-8")
    assert layering_offenders(tmp_path, package) == {f"{package}/planted.py": expected}


def test_a_planted_fastapi_import_outside_the_edge_is_caught(tmp_path: Path) -> None:
    for rel in ("core/settings.py", "app/api/query.py", "app/rag.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("from fastapi import Depends\n", encoding="utf-8")
    assert sorted(fastapi_offenders(tmp_path)) == ["app/rag.py", "core/settings.py"]
