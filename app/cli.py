"""The ``ragops`` command line: one root that mounts every layer's commands."""

from __future__ import annotations

import logging
import sys

import typer

from ingest import cli as ingest_cli
from ingest.errors import RagopsError

app = typer.Typer(
    name="ragops",
    help="RAG operations: ingest documents, serve grounded answers, account for every request.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("ingest")(ingest_cli.ingest)
app.add_typer(ingest_cli.index_app, name="index")
app.add_typer(ingest_cli.db_app, name="db")


def main() -> None:
    """Entry point: known errors become one line on stderr and exit code 1."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except RagopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
