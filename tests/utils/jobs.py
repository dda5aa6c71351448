"""Factories for job tests: a configs folder with a second chunking, job settings, a larger corpus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pydantic import SecretStr

from core.db import Database
from core.settings import Settings
from tests.conftest import REPO

SMALL_CHUNKS = "index:\n  chunking:\n    chunk_size: 24\n    chunk_overlap: 4\n"


def write_configs(folder: Path) -> Path:
    """The repository's configurations plus ``small`` (24-token chunks: a different index version)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in (REPO / "configs").glob("*.yaml"):
        shutil.copy(path, folder / path.name)
    (folder / "small.yaml").write_text(SMALL_CHUNKS, encoding="utf-8")
    return folder


def job_settings(database: Database, tmp: Path, roots: list[Path], **overrides: object) -> Settings:
    """Settings for a worker or app on ``database`` reading sources only under ``roots``."""
    values: dict[str, object] = {
        "database_url": SecretStr(database.url),
        "data_dir": tmp / "data",
        "configs_dir": write_configs(tmp / "configs"),
        "prompts_dir": REPO / "prompts",
        "source_roots": roots,
        # A full build asked to activate would run the whole eval gate (evals' activation check) first:
        # tests of jobs run without it unless they ask (tests/ingest/test_activation_gate.py).
        "activation_checks": False,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def write_many(path: Path, count: int) -> Path:
    """A BEIR JSONL file of ``count`` short, distinct documents (one chunk each)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    topics = ["invoices", "badges", "laptops", "parking", "travel", "payroll", "backups", "printers"]
    lines = [
        json.dumps(
            {
                "_id": f"d{i}",
                "title": f"Note {i} on {topics[i % len(topics)]}",
                "text": f"Record {i}: the {topics[i % len(topics)]} procedure changed in week {i % 52} "
                f"and now needs approval from team {i % 17}.",
            }
        )
        for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
