"""CLI commands of the ingest layer: ``ragops ingest``, ``ragops index ...``, ``ragops db migrate``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from core.access import DEFAULT_COLLECTION
from core.config import load_config
from core.embedding import get_embedder
from core.errors import NotFound
from core.migrations import migrate
from core.runtime import open_runtime
from ingest import documents, versions
from ingest.pipeline import IngestPipeline, IngestProgress, IngestReport

if TYPE_CHECKING:
    from ingest.worker import Chore

console = Console(stderr=True)
out = Console()


def fitted(*headers: str) -> Table:
    """A table whose cells wrap at the terminal's width instead of being cut (ids and names stay whole)."""
    table = Table(*headers)
    for column in table.columns:
        column.overflow = "fold"
    return table


index_app = typer.Typer(help="List, activate and drop index versions.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
collections_app = typer.Typer(help="Collections and their documents.", no_args_is_help=True)


def ingest(
    source: Annotated[Path, typer.Argument(help="A folder or file: .md .txt .html .pdf .jsonl (BEIR).")],
    config: Annotated[str | None, typer.Option(help="RAG configuration name (configs/NAME.yaml).")] = None,
    collection: Annotated[str, typer.Option(help="Collection the documents belong to.")] = DEFAULT_COLLECTION,
    sync: Annotated[bool, typer.Option(help="Delete documents whose source disappeared.")] = False,
    activate: Annotated[
        bool | None,
        typer.Option(
            "--activate/--no-activate",
            help="Answer the collection from this index version after the run; unset: only if nothing answers it yet.",
        ),
    ] = None,
) -> None:
    """Ingest documents: only new or changed ones are embedded."""
    with open_runtime() as rt:
        loaded = load_config(config or rt.settings.config, rt.settings.configs_dir)
        console.print(
            f"[dim]configuration {loaded.version}; loading embedding model {loaded.config.index.embedding.model}[/]"
        )
        pipeline = IngestPipeline(rt.conn, loaded, get_embedder(loaded.config.index.embedding), collection=collection)
        with Progress(
            SpinnerColumn(),
            TextColumn("[bold]ingest[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("ingest", total=None, rate="")

            def on_progress(p: IngestProgress) -> None:
                elapsed = max(p.elapsed, 1e-9)
                bar.update(
                    task,
                    total=p.docs_total,
                    completed=p.docs_done,
                    rate=f"{p.docs_done / elapsed:.1f} docs/s  {p.chunks_done / elapsed:.1f} chunks/s",
                )

            report = pipeline.run(source, sync=sync, activate=activate, on_progress=on_progress)
        print_report(report)


def print_report(report: IngestReport) -> None:
    """The end-of-run summary."""
    version = report.index_version
    table = Table(title=f"ingest run {report.run_id} -> index {version.name}", show_header=False)
    for key, value in report.counts.items():
        table.add_row(key.replace("_", " "), str(value))
    table.add_row("embed time", f"{report.embed_seconds:.2f} s")
    table.add_row("total time", f"{report.total_seconds:.2f} s")
    rate = (report.added + report.updated) / report.total_seconds if report.total_seconds else 0.0
    table.add_row(
        "throughput",
        f"{rate:.1f} docs/s, {report.chunks_written / max(report.total_seconds, 1e-9):.1f} chunks/s",
    )
    table.add_row("index", f"{version.name} ({version.status}{', active' if report.answering else ''})")
    out.print(table)
    if report.activated:
        out.print(f"activated index version {version.name} for collection {report.collection!r}")
    elif not report.answering:
        out.print(
            f"index version {version.name} is built but does not answer {report.collection!r}: "
            f"ragops index activate {version.id} --collection {report.collection}"
        )
    for item in report.skipped:
        out.print(f"[yellow]skipped[/] {item['source']}: {item['reason']}")


@collections_app.command("list")
def collections_list() -> None:
    """Collections with their document counts and the index version answering each."""
    with open_runtime() as rt:
        found = documents.list_collections(rt.conn)
    table = fitted("collection", "documents", "index version", "updated")
    for c in found:
        table.add_row(c.name, str(c.documents), str(c.index_version_id or ""), c.updated_at.strftime("%Y-%m-%d %H:%M"))
    out.print(table)


@collections_app.command("documents")
def collections_documents(
    collection: Annotated[str, typer.Argument(help="The collection.")],
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 100,
    after: Annotated[int, typer.Option(min=0, help="Only documents with a larger id (the next page).")] = 0,
) -> None:
    """A collection's documents: ids (for deletion), sources, titles and chunks in the answering version."""
    with open_runtime() as rt:
        if not documents.collection_exists(rt.conn, collection):
            known = ", ".join(c.name for c in documents.list_collections(rt.conn)) or "(none yet)"
            raise typer.BadParameter(f"no collection {collection!r}; known: {known}", param_hint="COLLECTION")
        version = versions.active_index_version(rt.conn, collection)
        page = documents.list_documents(
            rt.conn, collection, version.id if version else None, after_id=after, limit=limit
        )
    table = fitted("id", "source", "title", "chunks", "updated")
    for d in page:
        table.add_row(str(d.id), d.source, d.title, "" if d.chunks is None else str(d.chunks),
                      d.updated_at.strftime("%Y-%m-%d %H:%M"))  # fmt: skip
    out.print(table)
    if len(page) == limit:
        out.print(f"more: --after {page[-1].id}")


@index_app.command("list")
def index_list() -> None:
    """Index versions with their settings, status and size."""
    with open_runtime() as rt:
        rows = versions.list_index_versions(rt.conn)
        pinned = versions.collection_versions(rt.conn)
    table = fitted("id", "name", "status", "active", "model", "dim", "chunk size/overlap", "docs", "chunks", "created")
    for version, n_docs, chunks in rows:
        own = sorted(c for c, v in pinned.items() if v == version.id)
        s = version.settings
        table.add_row(
            str(version.id),
            version.name,
            version.status,
            ", ".join(["default"] * version.is_active + own),
            version.embedding_model,
            str(version.dimension),
            f"{s.get('chunk_size')}/{s.get('chunk_overlap')}",
            str(n_docs),
            str(chunks),
            version.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    out.print(table)


@index_app.command("activate")
def index_activate(
    version_id: Annotated[int, typer.Argument(help="Index version id (see `index list`).")],
    collection: Annotated[
        str | None,
        typer.Option(help="Switch only this collection; unset: the default, for every collection without its own."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Even when the default configuration embeds with another model.")
    ] = False,
) -> None:
    """Switch queries to another index version, atomically (one collection, or the default)."""
    with open_runtime() as rt:
        if not force:
            default = load_config(rt.settings.config, rt.settings.configs_dir)
            versions.check_embedding_model(versions.get_index_version(rt.conn, version_id), default)
        if collection is not None and not documents.collection_exists(rt.conn, collection):
            raise NotFound(f"no collection {collection!r}: ingest into it first (ragops collections list)")
        version = versions.activate_index_version(rt.conn, version_id, collection)
    where = f"collection {collection!r}" if collection else "the default"
    out.print(f"active index version for {where}: {version.name}")


@index_app.command("drop")
def index_drop(
    version_id: Annotated[int, typer.Argument(help="Index version id (see `index list`).")],
) -> None:
    """Delete an inactive index version and its chunks."""
    with open_runtime() as rt:
        version = versions.drop_index_version(rt.conn, version_id)
    out.print(f"dropped index version {version.name}")


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending SQL migrations from sql/."""
    with open_runtime(auto_migrate=False) as rt:
        applied = migrate(rt.conn)
    out.print("applied: " + ", ".join(applied) if applied else "database is up to date")


# ---------------------------------------------------------------- background jobs

jobs_app = typer.Typer(help="Reindex jobs: list, watch with a live progress bar, cancel.", no_args_is_help=True)


def worker(
    once: Annotated[bool, typer.Option(help="Run queued jobs until none is left, then exit.")] = False,
    batch_documents: Annotated[
        int, typer.Option(min=1, help="Documents per write batch: smaller = finer progress and cancellation.")
    ] = 256,
    chores: Sequence[Chore] = (),
) -> None:
    """Run reindex jobs from the queue (several workers never run the same job); ``chores`` between them."""
    from core.logs import configure_logging
    from core.runtime import limit_blas_threads, pin_malloc_mmap_threshold
    from core.settings import get_settings
    from ingest.worker import Worker

    pin_malloc_mmap_threshold()
    limit_blas_threads()
    settings = get_settings()
    configure_logging(settings.log_level)
    with open_runtime(settings) as rt:
        job_worker = Worker(rt.database, rt.settings, batch_documents=batch_documents, chores=chores)
        console.print(f"worker {job_worker.worker_id} waiting for jobs (Ctrl-C stops; a running job is re-queued)")
        try:
            if once:
                done = job_worker.run_chores(rt.conn, force=True)
                while job_worker.run_once() is not None or done:
                    done = job_worker.run_chores(rt.conn)
            else:
                job_worker.run_forever()
        except KeyboardInterrupt:
            job_worker.stopping.set()


@jobs_app.command("list")
def jobs_list(
    limit: Annotated[int, typer.Option(help="Newest jobs to show.")] = 20,
) -> None:
    """Jobs with status, progress and errors."""
    from ingest.jobs import list_jobs

    with open_runtime() as rt:
        rows = list_jobs(rt.conn, limit=limit)
    table = fitted("id", "kind", "mode", "status", "docs", "docs/s", "errors", "index", "created", "note")
    for job in rows:
        table.add_row(
            str(job.id), job.kind, str(job.params.get("mode", "")), job.status,
            f"{job.docs_done}/{job.docs_total if job.docs_total is not None else '?'}",
            f"{job.docs_per_s:.1f}" if job.docs_per_s else "", str(len(job.errors)),
            str(job.index_version_id or ""), job.created_at.strftime("%Y-%m-%d %H:%M:%S"), (job.error or "")[:60],
        )  # fmt: skip
    out.print(table)


@jobs_app.command("watch")
def jobs_watch(job_id: Annotated[int, typer.Argument(help="Job id (see `jobs list`).")]) -> None:
    """Follow a job with a live progress bar until it ends; exit 1 unless it succeeded."""
    import time

    from core.errors import RagopsError
    from ingest.jobs import get_job

    with open_runtime() as rt:
        job = get_job(rt.conn, job_id)
        if job is None:
            raise RagopsError(f"no job {job_id}")
        with Progress(
            SpinnerColumn(),
            TextColumn(f"[bold]job {job_id}[/] {{task.fields[status]}}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("job", total=None, status=job.status, rate="")
            while True:
                rate = f"{job.docs_per_s:.1f} docs/s" if job.docs_per_s else ""
                if job.eta_s is not None:
                    rate += f"  ETA {job.eta_s:.0f} s"
                bar.update(task, total=job.docs_total, completed=job.docs_done, status=job.status, rate=rate)
                if job.finished:
                    break
                time.sleep(0.5)
                job = get_job(rt.conn, job_id) or job
    for item in job.errors:
        moved = f" (moved to {item['quarantined']})" if item.get("quarantined") else ""
        out.print(f"[yellow]skipped[/] {item.get('source')}: {item.get('reason')}{moved}")
    out.print(f"job {job.id} {job.status}" + (f": {job.error}" if job.error else ""))
    if job.status != "succeeded":
        raise typer.Exit(1)


@jobs_app.command("cancel")
def jobs_cancel(job_id: Annotated[int, typer.Argument(help="Job id (see `jobs list`).")]) -> None:
    """Cancel a queued job, or stop a running one at its next batch."""
    from core.errors import RagopsError
    from ingest.jobs import cancel_job

    with open_runtime() as rt:
        job = cancel_job(rt.conn, job_id)
    if job is None:
        raise RagopsError(f"no job {job_id}")
    if job.finished and job.status != "cancelled":  # as the API's 409: nothing was cancelled
        raise RagopsError(f"job {job_id} already {job.status}")
    out.print(f"job {job.id}: {job.status}" + (" (cancel requested)" if job.status == "running" else ""))
