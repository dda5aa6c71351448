"""What every benchmark needs: a throwaway embedded PostgreSQL, BEIR data, result files."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from core.db import Database, EmbeddedPostgres
from core.git import git_commit
from core.migrations import migrate

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DATASETS = Path(os.environ.get("RAGOPS_DATASETS", ROOT.parent / "shared" / "datasets"))


@contextlib.contextmanager
def bench_server() -> Iterator[str]:
    """A fresh embedded PostgreSQL in a temporary folder; yields its admin URI."""
    folder = Path(tempfile.mkdtemp(prefix="ragops-bench-"))
    server = EmbeddedPostgres(folder / "pgdata")
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def fresh_database(admin_uri: str, name: str) -> Database:
    """Create (or recreate) database ``name``, migrated."""
    with psycopg.connect(admin_uri, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    database = Database(url=make_conninfo(admin_uri, dbname=name))
    with database.connect() as conn:
        migrate(conn)
    return database


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All records of a JSONL file."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    """Median, NaN for no values."""
    return statistics.median(values) if values else float("nan")


def paired_summary(diffs: list[float], digits: int = 2) -> dict[str, Any]:
    """Paired differences (A minus B per pair, same input back to back): p50, p95, IQR and mean, in ms."""
    return {
        "pairs": len(diffs),
        "paired_diff_p50_ms": round(percentile(diffs, 50), digits),
        "paired_diff_p95_ms": round(percentile(diffs, 95), digits),
        "paired_diff_iqr_ms": [round(percentile(diffs, 25), digits), round(percentile(diffs, 75), digits)],
        "paired_diff_mean_ms": round(sum(diffs) / len(diffs), digits),
    }


# The code whose change makes a result stale; `bench report` flags results older than it.
# Every benchmark measures the service's code; each also measures its own script (BENCH_SCRIPTS).
MEASURED_CODE = ("core", "app", "ingest", "evals", "sql", "configs", "prompts", "pyproject.toml", "bench/common.py")
BENCH_SCRIPTS = {
    "ingest": "bench/ingest_bench.py", "html": "bench/html_extraction.py", "chunks": "bench/chunk_lengths.py",
    "quality": "bench/retrieval_quality.py",
    "tune": "bench/tune.py",
    "latency": "bench/retrieval_latency.py", "api": "bench/api_latency.py", "extractive": "bench/extractive.py",
    "answers": "bench/answers.py",
    "streaming": "bench/streaming.py",
    "gate": "bench/gate.py", "pii": "bench/pii.py", "pii_detection": "bench/pii.py", "load": "bench/load.py",
    "soak": "bench/load.py", "reindex": "bench/reindex.py", "hostile": "bench/hostile.py",
    "console": "bench/console.py",
    "drift": "bench/drift.py",
    "online": "bench/online.py",
    "rollout": "bench/rollout.py",
}  # fmt: skip


def code_changed_since(commit: str, benchmark: str | None = None) -> bool | None:
    """Whether a commit after ``commit`` (or an uncommitted edit) touched the measured code; None if unknown."""
    paths = [*MEASURED_CODE, BENCH_SCRIPTS.get(benchmark or "", "bench")]
    try:
        later = subprocess.run(
            ["git", "-C", str(ROOT), "rev-list", f"{commit}..HEAD", "--", *paths],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--", *paths],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(later or dirty)


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Save a benchmark's result with the machine it ran on and the commit it measured."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    commit = git_commit(ROOT)
    result = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        # Other work on the machine shows here: a load far above the cores means absolute times are inflated.
        "load_avg_15m": round(os.getloadavg()[2], 1),
        "commit": commit,
        # Uncommitted edits to the measured code: the commit alone does not name what ran.
        "uncommitted_changes": commit is not None and code_changed_since(commit, name) is True,
        **result,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path
