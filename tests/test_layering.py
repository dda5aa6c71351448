"""Imports flow one way (evals -> app -> ingest) and the web framework stays at the edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = {"ingest": {"app", "evals"}, "app": {"evals"}, "evals": set()}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def python_files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_import_only_downwards(package: str) -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_roots(path) & FORBIDDEN[package])
        for path in python_files(package)
        if imported_roots(path) & FORBIDDEN[package]
    }
    assert offenders == {}


def test_fastapi_is_imported_only_at_the_edge() -> None:
    allowed = {"app/main.py", "app/deps.py"}
    offenders = [
        str(path.relative_to(REPO))
        for package in FORBIDDEN
        for path in python_files(package)
        if {"fastapi", "starlette"} & imported_roots(path)
        and str(path.relative_to(REPO)) not in allowed
        and not str(path.relative_to(REPO)).startswith("app/api/")
    ]
    assert offenders == []
