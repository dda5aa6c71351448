"""The ``ragops`` command line: one root that mounts every layer's commands."""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated

import typer
from rich.console import Console

from ingest import cli as ingest_cli
from ingest.errors import RagopsError
from ingest.settings import get_settings

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
config_app = typer.Typer(help="Check configurations and prompts.", no_args_is_help=True)
app.add_typer(config_app, name="config")
out = Console()


@config_app.command("validate")
def config_validate() -> None:
    """Validate every file in configs/ and prompts/; exit 1 with the first problem."""
    from app.catalog import Catalog

    settings = get_settings()
    catalog = Catalog.load(settings.configs_dir, settings.prompts_dir, settings.config)
    for _, loaded in sorted(catalog.configs.items()):
        out.print(f"ok  config {loaded.version}  (prompt {catalog.prompt_for(loaded).version})")
    for _, prompt in sorted(catalog.prompts.items()):
        out.print(f"ok  prompt {prompt.version}")


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (RAGOPS_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (RAGOPS_PORT).")] = None,
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs)."""
    import uvicorn

    from app.catalog import Catalog
    from app.main import create_app

    settings = get_settings()
    Catalog.load(settings.configs_dir, settings.prompts_dir, settings.config)  # refuse to start on a bad file
    generator = f"vLLM at {settings.vllm_url}" if settings.vllm_url else "the extractive generator (no RAGOPS_VLLM_URL)"
    bind_host, bind_port = host or settings.host, port or settings.port
    out.print(f"ragops serving on http://{bind_host}:{bind_port} (docs at /docs), answering with {generator}")
    uvicorn.run(create_app(settings), host=bind_host, port=bind_port, log_level="warning")


@app.command("query")
def query(
    question: Annotated[str, typer.Argument(help="The question.")],
    config: Annotated[str | None, typer.Option(help="Configuration name.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Chunks to retrieve.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole answer as JSON.")] = False,
) -> None:
    """Answer a question from the command line, with citations."""
    from app.catalog import Catalog
    from app.rag import Question, RagPipeline
    from ingest.runtime import open_runtime

    settings = get_settings()
    catalog = Catalog.load(settings.configs_dir, settings.prompts_dir, settings.config)
    with open_runtime(settings) as rt, rt.database.pool(2) as pool:
        answer = RagPipeline(settings, catalog, pool).answer(Question(text=question, config=config, top_k=top_k))
    if as_json:
        from dataclasses import asdict

        out.print_json(json.dumps(asdict(answer)))
        return
    out.print(answer.text, highlight=False)
    out.print()
    for c in answer.citations:
        where = f"{c.source}" + (f" ({c.section})" if c.section else "")
        out.print(f"[{c.n}] {where}  score {c.score:.3f}", highlight=False)
    u, v = answer.usage, answer.versions
    out.print(
        f"\n[dim]tokens: prompt {u.prompt_tokens}, completion {u.completion_tokens}, embedding {u.embedding_tokens}"
        f" | config {v.config}, prompt {v.prompt}, index {v.index}, model {v.model}[/]"
    )


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
