"""Reindex through the job system: a full build of a 1,000-document corpus, then an incremental reindex of it unchanged.

Both jobs are queued with :func:`ingest.jobs.enqueue_reindex` and run by a real worker
(:class:`ingest.jobs.Worker`), so the times include claiming, heartbeats and activation. A job's
time is its ``finished_at - started_at`` in the database. Target: incremental <= 5% of full.

    python -m bench reindex [--docs 1000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bench.common import DATASETS, ROOT, bench_server, fresh_database, read_jsonl, write_result
from bench.ingest_bench import CHUNK_OVERLAP, CHUNK_SIZE, write_corpus
from core.config import EmbeddingSettings
from core.embedding import get_embedder
from core.settings import Settings
from ingest import jobs, worker


def run_job(worker: worker.Worker, database: Any, settings: Settings, **request: Any) -> dict[str, Any]:
    """Queue one reindex job, let the worker run it, and return its timings and counts."""
    with database.connect() as conn:
        job = jobs.enqueue_reindex(conn, settings, **request)
    wall = time.perf_counter()
    done = worker.run_once()
    wall = time.perf_counter() - wall
    assert done is not None and done.id == job.id and done.status == "succeeded", done
    assert done.started_at and done.finished_at and done.result
    return {
        "job_id": done.id,
        "seconds": (done.finished_at - done.started_at).total_seconds(),
        "wall_seconds": wall,
        "docs_per_s": done.docs_per_s,
        "counts": done.result["counts"],
        "index_version": done.result["index_version"],
        "activated": done.activated,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench reindex")
    parser.add_argument("--docs", type=int, default=1000)
    args = parser.parse_args(argv)

    records = read_jsonl(DATASETS / "pubmedqa" / "corpus_docs.jsonl")[: args.docs]
    get_embedder(EmbeddingSettings()).embed_batch(["warm up the model"] * 8)  # model load is not part of a build
    result: dict[str, Any] = {
        "corpus": f"pubmedqa corpus_docs.jsonl, first {len(records)} abstracts",
        "chunk_size": CHUNK_SIZE,
    }
    with tempfile.TemporaryDirectory() as tmp, bench_server() as admin_uri:
        folder = Path(tmp)
        (folder / "source").mkdir()
        corpus = write_corpus(records, folder / "source")
        configs = folder / "configs"
        configs.mkdir()
        for path in (ROOT / "configs").glob("*.yaml"):
            (configs / path.name).write_bytes(path.read_bytes())
        (configs / "bench.yaml").write_text(
            f"index:\n  chunking:\n    chunk_size: {CHUNK_SIZE}\n    chunk_overlap: {CHUNK_OVERLAP}\n", encoding="utf-8"
        )
        database = fresh_database(admin_uri, "bench_reindex")
        settings = Settings(
            database_url=SecretStr(database.url), data_dir=folder / "data", configs_dir=configs,
            prompts_dir=ROOT / "prompts", source_roots=[folder / "source"],
        )  # fmt: skip
        job_worker = worker.Worker(database, settings)
        full = run_job(job_worker, database, settings, source=str(corpus), config="bench", mode="full", activate=True)
        incremental = run_job(job_worker, database, settings, source=str(corpus), config="bench", mode="incremental")
    assert incremental["counts"]["unchanged"] == full["counts"]["added"], (full, incremental)
    result["full"] = full
    result["incremental_unchanged"] = incremental
    result["incremental_share_of_full"] = incremental["seconds"] / full["seconds"]
    path = write_result("reindex", result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
