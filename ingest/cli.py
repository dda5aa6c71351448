"""CLI commands of the ingest layer: ``ragops ingest``, ``ragops index ...``, ``ragops db migrate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ingest import store
from ingest.config import load_config
from ingest.embedding import get_embedder
from ingest.migrations import migrate
from ingest.pipeline import DEFAULT_COLLECTION, IngestPipeline, IngestProgress, IngestReport
from ingest.runtime import open_runtime

console = Console(stderr=True)
out = Console()

index_app = typer.Typer(help="List, activate and drop index versions.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)


def ingest(
    source: Annotated[Path, typer.Argument(help="A folder or file: .md .txt .html .pdf .jsonl (BEIR).")],
    config: Annotated[str | None, typer.Option(help="RAG configuration name (configs/NAME.yaml).")] = None,
    collection: Annotated[str, typer.Option(help="Collection the documents belong to.")] = DEFAULT_COLLECTION,
    sync: Annotated[bool, typer.Option(help="Delete documents whose source disappeared.")] = False,
    activate: Annotated[
        bool | None,
        typer.Option("--activate/--no-activate", help="Activate the index version after the run."),
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
    table.add_row("index", f"{version.name} ({version.status}{', active' if version.is_active else ''})")
    out.print(table)
    if report.activated:
        out.print(f"activated index version {version.name}")
    elif not version.is_active:
        out.print(f"index version {version.name} is built but not active: ragops index activate {version.id}")
    for item in report.skipped:
        out.print(f"[yellow]skipped[/] {item['source']}: {item['reason']}")


@index_app.command("list")
def index_list() -> None:
    """Index versions with their settings, status and size."""
    with open_runtime() as rt:
        rows = store.list_index_versions(rt.conn)
    table = Table("id", "name", "status", "active", "model", "dim", "chunk size/overlap", "docs", "chunks", "created")
    for version, documents, chunks in rows:
        s = version.settings
        table.add_row(
            str(version.id),
            version.name,
            version.status,
            "*" if version.is_active else "",
            version.embedding_model,
            str(version.dimension),
            f"{s.get('chunk_size')}/{s.get('chunk_overlap')}",
            str(documents),
            str(chunks),
            version.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    out.print(table)


@index_app.command("activate")
def index_activate(
    version_id: Annotated[int, typer.Argument(help="Index version id (see `index list`).")],
) -> None:
    """Switch queries to another index version, atomically."""
    with open_runtime() as rt:
        version = store.activate_index_version(rt.conn, version_id)
    out.print(f"active index version: {version.name}")


@index_app.command("drop")
def index_drop(
    version_id: Annotated[int, typer.Argument(help="Index version id (see `index list`).")],
) -> None:
    """Delete an inactive index version and its chunks."""
    with open_runtime() as rt:
        version = store.drop_index_version(rt.conn, version_id)
    out.print(f"dropped index version {version.name}")


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending SQL migrations from sql/."""
    with open_runtime(auto_migrate=False) as rt:
        applied = migrate(rt.conn)
    out.print("applied: " + ", ".join(applied) if applied else "database is up to date")
