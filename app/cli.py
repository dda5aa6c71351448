"""The ``ragops`` command line: one root that mounts every layer's commands."""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from app.model_server import llm_app
from core.errors import RagopsError
from core.logs import configure_logging
from core.settings import get_settings
from ingest import cli as ingest_cli

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
app.add_typer(ingest_cli.jobs_app, name="jobs")
app.add_typer(ingest_cli.collections_app, name="collections")
config_app = typer.Typer(help="Check configurations and prompts.", no_args_is_help=True)
app.add_typer(config_app, name="config")
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
feedback_app = typer.Typer(help="Ratings of answers and the opt-in transcript store.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")
app.add_typer(llm_app, name="llm")
drift_app = typer.Typer(help="Drift monitoring: pin references, report judged windows.", no_args_is_help=True)
app.add_typer(drift_app, name="drift")
quality_app = typer.Typer(help="Online evaluation of sampled live answers.", no_args_is_help=True)
app.add_typer(quality_app, name="quality")
DEMO_KEY_FILE = "demo-api-key"
out = Console()


@app.command("worker")
def worker(
    once: Annotated[bool, typer.Option(help="Run queued jobs and evaluations until none is left, then exit.")] = False,
    batch_documents: Annotated[
        int, typer.Option(min=1, help="Documents per write batch: smaller = finer progress and cancellation.")
    ] = 256,
) -> None:
    """Run reindex jobs and online evaluations from their queues (several workers never take the same one),
    and the housekeeping between them (expired transcripts, drift windows)."""
    from app.main import worker_chores
    from core.catalog import Catalog

    settings = get_settings()
    catalog = Catalog.load(settings.configs_dir, settings.prompts_dir, settings.config)
    ingest_cli.worker(once, batch_documents, chores=worker_chores(catalog, settings))


def _figure(value: object, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


@quality_app.command("report")
def quality_report(
    collection: Annotated[str | None, typer.Option(help="Only this collection.")] = None,
    since: Annotated[str | None, typer.Option(help="First day: YYYY-MM-DD or a number of days like 7d.")] = None,
) -> None:
    """Online-evaluation figures per collection, configuration, prompt, index version and day."""
    from rich.table import Table

    from app.online_eval import judge_spend, since_day
    from app.online_eval import quality_report as report
    from core.runtime import open_runtime

    first = since_day(since)
    collections = [collection] if collection else None
    with open_runtime() as rt:
        rows = report(rt.conn, first, collections)
        spend = judge_spend(rt.conn, first, collections)
    if not rows:
        out.print(f"no evaluated answers since {first.isoformat()}" + (f" in {collection!r}" if collection else ""))
        return
    table = Table("day", "collection", "config", "prompt", "index", "answers", "support", "top score", "margin",
                  "refused", "citations", "PII", "latency ms", "cost $", "faithful", "relevancy", "judged")  # fmt: skip
    judge_notes = []
    for r in rows:
        table.add_row(
            r["day"], r["collection"], r["config_version"], r["prompt_version"], r["index_version"], str(r["answers"]),
            _figure(r["support"]), _figure(r["top_score"]), _figure(r["margin"]), _figure(r["refusal_rate"]),
            _figure(r["citations_mean"], 1), _figure(r["pii_entities_mean"], 1), _figure(r["latency_ms_mean"], 0),
            _figure(r["cost_usd_mean"], 6), _figure(r["faithfulness"]), _figure(r["answer_relevancy"]),
            f"{r['judged']}/{r['answer_relevancy_judged']}",
        )  # fmt: skip
        counts = [f"{metric} {reason} {n}" for metric, reasons in r["judge_failures"].items()
                  for reason, n in reasons.items()]  # fmt: skip
        counts += [f"skipped: {why} {n}" for why, n in r["judge_skipped"].items()]
        if counts:
            judge_notes.append(f"judge {r['day']} {r['config_version']} {r['collection']}: {', '.join(counts)}")
    out.print(table)
    for note in judge_notes:
        out.print(note, markup=False, highlight=False)
    for s in spend:
        out.print(f"judge spend {s['day']} {s['config']}: ${s['usd']:.6f} for {s['answers']} answers")


def _mount_plugins() -> None:
    """Mount sub-commands other packages register (``ragops.cli`` entry points), e.g. ``eval``."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="ragops.cli"):
        app.add_typer(entry.load(), name=entry.name)


_mount_plugins()


@config_app.command("pii")
def config_pii(
    text: Annotated[str | None, typer.Argument(help="Text to filter; '-' reads standard input.")] = None,
    config: Annotated[str | None, typer.Option(help="Configuration whose pii policy applies.")] = None,
    stage: Annotated[str, typer.Option(help="question (caller input: block refuses) or answer.")] = "question",
    collection: Annotated[
        str | None, typer.Option(help="Also list and apply this collection's learned own names (its allow-list).")
    ] = None,
) -> None:
    """Show what a configuration's PII policy finds in a text and what the text becomes: for tuning it.

    With ``--collection``, first the words learned as that collection's own names, with the evidence
    (veto one with ``pii.never_allow``).
    """
    from rich.table import Table

    from app.pii import PiiSession
    from core.catalog import Catalog
    from core.errors import PiiBlocked
    from core.pii import get_pii_engine

    if stage not in ("question", "answer"):
        raise RagopsError(f"--stage must be question or answer, not {stage!r}")
    settings = get_settings()
    loaded = Catalog.load(settings.configs_dir, settings.prompts_dir, settings.config).config(config)
    policy = loaded.config.pii
    if not policy.enabled:
        raise RagopsError(f"configuration {loaded.name!r} has PII filtering off (pii.enabled: false)")
    if text is None and collection is None:
        raise RagopsError("give a text to filter, or --collection to list its learned names")
    pii = PiiSession(get_pii_engine(policy.nlp_model), policy)
    if collection is not None:
        from core.runtime import open_runtime
        from ingest import pii_spans

        with open_runtime(settings) as rt:
            learned = pii_spans.load_terms(rt.conn, collection, policy.analysis())
        terms = Table("learned name", "occurrences", "documents", "tagged PERSON", "vetoed")
        for t in learned:
            vetoed = "yes" if t.term in policy.never_allow else ""
            terms.add_row(t.term, str(t.occurrences), str(t.documents), str(t.tagged_person), vetoed)
        out.print(terms)
        pii.also_allowed = frozenset(t.term for t in learned) - set(policy.never_allow)
    if text is None:
        return
    value = sys.stdin.read() if text == "-" else text
    found = pii.engine.analyze(value, policy) if pii.engine else []
    spans = [s for s in found if value[s.start : s.end] not in pii.also_allowed]
    table = Table("type", "start", "end", "score", "action")
    for span in spans:
        table.add_row(span.entity_type, str(span.start), str(span.end), f"{span.score:.2f}",
                      policy.entities.get(span.entity_type, "redact"))  # fmt: skip
    out.print(table)
    try:
        filtered = pii.filter_question(value) if stage == "question" else pii.filter_answer(value)
    except PiiBlocked as blocked:
        out.print(f"refused (422): {blocked}")
        return
    out.print(filtered, markup=False, highlight=False)


@config_app.command("validate")
def config_validate() -> None:
    """Validate every file in configs/ and prompts/; exit 1 with the first problem."""
    from app.online_judge import judge_model
    from app.pricing import load_pricing
    from core.catalog import Catalog

    settings = get_settings()
    catalog = Catalog.load(settings.configs_dir, settings.prompts_dir, settings.config)
    pricing = load_pricing(settings.configs_dir)
    for _, loaded in sorted(catalog.configs.items()):
        model = loaded.config.generation.model
        if loaded.config.generation.backend != "extractive":
            pricing.model(model)  # a model the config may use must have a price
        judge = loaded.config.online_eval.judge
        if judge.enabled:
            pricing.model(judge_model(loaded))  # the judge's daily cap is enforced from its price
            if judge.url == "vllm" and not settings.vllm_url:
                out.print(f"warning: {loaded.name}: online_eval.judge.url is vllm but RAGOPS_VLLM_URL is not set "
                          "here: its answers would be skipped (no_endpoint)", markup=False)  # fmt: skip
        out.print(f"ok  config {loaded.version}  (prompt {catalog.prompt_for(loaded).version})")
    for _, prompt in sorted(catalog.prompts.items()):
        out.print(f"ok  prompt {prompt.version}")
    out.print(f"ok  {pricing.version}  ({len(pricing.models)} models)")


def _split(values: str) -> list[str]:
    """A comma-separated option as a list, blanks dropped."""
    return [v.strip() for v in values.split(",") if v.strip()]


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what uses the key.")],
    collections: Annotated[
        str | None,
        typer.Option(help="Comma-separated collections the key may use, or '*' for all (a global admin needs '*')."),
    ] = None,
    configs: Annotated[
        str | None, typer.Option(help="Comma-separated configurations it may use, or '*'; unset: the default only.")
    ] = None,
    scopes: Annotated[str, typer.Option(help="Comma-separated: query, admin.")] = "query",
    budget_usd_day: Annotated[
        str | None,
        typer.Option(help="Daily spending cap in USD, exact to $0.000000001; 0 refuses every priced request."),
    ] = None,
    budget_usd_month: Annotated[
        str | None, typer.Option(help="Monthly spending cap in USD (as --budget-usd-day).")
    ] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
) -> None:
    """Create a key and print it ONCE (only a salted hash is stored). A key is granted nothing by default."""
    from app.keys import create_key
    from core.money import format_budget, parse_usd
    from core.runtime import open_runtime

    if collections is None:
        raise typer.BadParameter("name the collections the key may use (or '*' for all)", param_hint="--collections")
    day, month = (None if b is None else parse_usd(b, f"--budget-usd-{p}")
                  for b, p in ((budget_usd_day, "day"), (budget_usd_month, "month")))  # fmt: skip
    with open_runtime() as rt:
        key, secret = create_key(
            rt.conn, name, _split(scopes), collections=_split(collections), configs=_split(configs or ""),
            budget_usd_day=day, budget_usd_month=month, rpm=rpm, tpm=tpm,
        )  # fmt: skip
    out.print(
        f"created key {key.id} ({key.name}, scopes {','.join(key.scopes)}, collections {','.join(key.collections)}, "
        f"configs {','.join(key.configs) or '(the default)'}, "
        f"{format_budget(key.budget_usd_day, key.budget_usd_month)}); store it now, it is not shown again:"
    )
    print(secret)


@keys_app.command("list")
def keys_list() -> None:
    """Keys with their scopes, limits and state (never the secret)."""

    from app.keys import list_keys
    from core.money import format_budget
    from core.runtime import open_runtime

    with open_runtime() as rt:
        keys = list_keys(rt.conn)
    table = ingest_cli.fitted(
        "id", "name", "prefix", "scopes", "collections", "configs", "limits", "created", "revoked"
    )
    for k in keys:
        limits = [
            format_budget(k.budget_usd_day, k.budget_usd_month),
            f"{k.rpm} rpm" if k.rpm else "",
            f"{k.tpm} tpm" if k.tpm else "",
        ]
        table.add_row(
            str(k.id), k.name, k.prefix, ",".join(k.scopes), ",".join(k.collections),
            ",".join(k.configs) or "(default)", " ".join(x for x in limits if x),
            k.created_at.strftime("%Y-%m-%d %H:%M"), k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else "",
        )  # fmt: skip
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="Key id or prefix (see `keys list`).")]) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    from app.keys import revoke_key
    from core.runtime import open_runtime

    with open_runtime() as rt:
        revoked = revoke_key(rt.conn, key)
    out.print(f"revoked key {revoked.id} ({revoked.name})")


@feedback_app.command("purge")
def feedback_purge() -> None:
    """Delete transcripts whose retention ran out now (the worker also does it every few minutes)."""
    from app.feedback import purge_expired_transcripts
    from core.runtime import open_runtime

    with open_runtime() as rt:
        deleted = purge_expired_transcripts(rt.conn)
    out.print(f"deleted {deleted} expired transcript(s)")


@app.command("usage")
def usage_table(
    days: Annotated[int, typer.Option(help="Look back this many days.")] = 30,
    group_by: Annotated[str, typer.Option(help="key, day, config or model.")] = "key",
) -> None:
    """Requests, tokens and cost from the ledger, as a table."""
    from datetime import UTC, datetime, timedelta

    from rich.table import Table

    from app.usage import GROUPS, usage
    from core.money import format_usd
    from core.runtime import open_runtime

    if group_by not in GROUPS:
        raise RagopsError(f"--group-by must be one of {', '.join(GROUPS)}")
    end = datetime.now(UTC) + timedelta(seconds=1)
    with open_runtime() as rt:
        rows = usage(rt.conn, end - timedelta(days=days), end, group_by)
    table = Table(group_by, "requests", "errors", "prompt", "cached", "completion", "embedding", "cost USD")
    for r in rows:
        table.add_row(
            str(r["group"]), str(r["requests"]), str(r["errors"]), str(r["prompt_tokens"]), str(r["cached_tokens"]),
            str(r["completion_tokens"]), str(r["embedding_tokens"]), format_usd(r["cost_usd"]),
        )  # fmt: skip
    out.print(table)
    out.print(f"total: {sum(r['requests'] for r in rows)} requests, {format_usd(sum(r['cost_usd'] for r in rows))}")


@drift_app.command("pin")
def drift_pin(
    collection: Annotated[str, typer.Option(help="Collection whose reference this becomes.")] = "default",
    config: Annotated[str | None, typer.Option(help="Configuration (default: the service's).")] = None,
    window: Annotated[
        str | None, typer.Option(help="Pin the last WINDOW of live traffic (e.g. 7d, 12h) as the reference.")
    ] = None,
    questions: Annotated[
        Path | None,
        typer.Option(help='Pin a JSONL question set (one {"question": ...} per line, e.g. the eval set) instead.'),
    ] = None,
) -> None:
    """Pin a new, versioned drift reference; windows from now on are judged against it."""
    from app import drift
    from core.catalog import Catalog
    from core.runtime import open_runtime

    if (window is None) == (questions is None):
        raise RagopsError("give exactly one of --window or --questions")
    settings = get_settings()
    loaded = Catalog.load(settings.configs_dir, settings.prompts_dir, settings.config).config(config)
    with open_runtime(settings) as rt:
        if window is not None:
            pinned = drift.pin_window(rt.conn, collection, loaded, window)
        else:
            assert questions is not None
            texts = drift.read_questions(questions)
            pinned = drift.pin_questions(rt.conn, collection, loaded, texts, drift.questions_note(questions, texts))
    out.print(
        f"pinned drift reference {pinned.id} for {collection} / {loaded.name}: {pinned.questions} questions, "
        f"signals {', '.join(pinned.signals)}"
    )


@drift_app.command("report")
def drift_report(
    collection: Annotated[str | None, typer.Option(help="Only this collection.")] = None,
    config: Annotated[str | None, typer.Option(help="Only this configuration.")] = None,
    days: Annotated[int, typer.Option(min=1, help="Windows of the last DAYS days.")] = 7,
    html: Annotated[Path | None, typer.Option(help="Also write an HTML report (a chart per signal) here.")] = None,
) -> None:
    """Newest verdict per signal as a table; with --html, the whole time series as charts."""
    from datetime import UTC, datetime, timedelta

    from rich.table import Table

    from app.drift_report import render_html, threshold_of
    from core.catalog import Catalog
    from core.drift import store
    from core.runtime import open_runtime

    settings = get_settings()
    catalog = Catalog.load(settings.configs_dir, settings.prompts_dir, settings.config)
    since = datetime.now(UTC) - timedelta(days=days)
    with open_runtime(settings) as rt:
        rows = store.read_windows(rt.conn, collections=None, collection=collection, config=config, since=since)
    latest = {(r.collection, r.config, r.signal): r for r in rows}
    table = Table("collection", "config", "signal", "window start", "n", "state", "p", "p threshold", "PSI", "alarm")
    for (coll, cfg, signal), r in sorted(latest.items()):
        drift_settings = catalog.configs[cfg].config.drift if cfg in catalog.configs else None
        threshold = threshold_of(signal, drift_settings)
        table.add_row(
            coll, cfg, signal, f"{r.window_start:%Y-%m-%d %H:%M}", str(r.n), r.state.replace("_", " "),
            "" if r.p_value is None else f"{r.p_value:.3g}", "" if threshold is None else f"{threshold:.3g}",
            "" if r.psi is None else f"{r.psi:.3f}", "ALARM" if r.alarm else "",
        )  # fmt: skip
    out.print(table if latest else "no judged drift windows (is drift.enabled on and a reference pinned?)")
    if html is not None:
        configs = {name: loaded.config.drift for name, loaded in catalog.configs.items()}
        html.write_text(render_html(rows, configs), encoding="utf-8")
        out.print(f"wrote {html}")


def ensure_demo_key() -> tuple[str, bool] | None:
    """The local demo key and whether it was created now (once, kept in the data folder); embedded set-up only."""
    from app.keys import create_key, verify_key
    from core.errors import AuthError
    from core.runtime import open_runtime

    settings = get_settings()
    if settings.database_url is not None or not settings.auth_enabled:
        return None
    path = settings.data_dir / DEMO_KEY_FILE
    with open_runtime(settings) as rt:
        if path.exists():
            try:
                verify_key(rt.conn, path.read_text().strip())
                return path.read_text().strip(), False
            except AuthError:
                pass
        _, secret = create_key(rt.conn, "local-demo", ["query", "admin"], collections=["*"], configs=["*"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret, True


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (a name other than localhost counts as not)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (RAGOPS_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (RAGOPS_PORT).")] = None,
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs)."""
    import uvicorn

    from app.main import create_app
    from core.catalog import Catalog
    from core.embedding import get_embedder
    from core.runtime import limit_blas_threads, pin_malloc_mmap_threshold

    settings = get_settings()
    bind_host, bind_port = host or settings.host, port or settings.port
    if not settings.auth_enabled and not is_loopback(bind_host):
        raise RagopsError(
            f"refusing to serve on {bind_host} with authentication off (RAGOPS_AUTH_ENABLED=false): "
            "bind a loopback address (--host 127.0.0.1) or turn authentication on"
        )
    settings = settings.model_copy(update={"host": bind_host, "port": bind_port})  # the metrics port binds here too
    pin_malloc_mmap_threshold()  # RSS stays flat under load instead of growing with fragmented heap
    limit_blas_threads()
    configure_logging(settings.log_level)
    catalog = Catalog.load(settings.configs_dir, settings.prompts_dir, settings.config)  # refuse a bad file
    get_embedder(catalog.config(None).config.index.embedding)  # and a model that does not load (kept for the app)
    generator = f"vLLM at {settings.vllm_url}" if settings.vllm_url else "the extractive generator (no RAGOPS_VLLM_URL)"
    out.print(f"ragops serving on http://{bind_host}:{bind_port} (docs at /docs), answering with {generator}")
    out.print(f"console: http://{bind_host}:{bind_port}/ui (log in with an API key)", highlight=False)
    demo = ensure_demo_key()
    if demo:
        secret, created = demo
        path = settings.data_dir / DEMO_KEY_FILE
        # Printed whole only when created: after that the log shows where it is kept, not the key.
        shown = secret if created else f"{secret[:12]}... (in {path})"
        out.print(
            f"local demo API key: {shown}\n"
            f'  curl -s http://{bind_host}:{bind_port}/v1/query -H "Authorization: Bearer $(cat {path})" '
            "-H 'content-type: application/json' -d '{\"question\": \"How many PTO days do new employees get?\"}'",
            highlight=False,
            soft_wrap=True,  # one line, so it can be copied as is
        )
    uvicorn.run(create_app(settings), host=bind_host, port=bind_port, log_level=settings.log_level.lower())


@app.command("query")
def query(
    question: Annotated[str, typer.Argument(help="The question.")],
    config: Annotated[str | None, typer.Option(help="Configuration name.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Chunks to retrieve.")] = None,
    collection: Annotated[str | None, typer.Option(help="Collection to search; unset: 'default'.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole answer as JSON.")] = False,
) -> None:
    """Answer a question from the command line, with citations."""
    from app.rag import Question, RagPipeline
    from core.access import EVERYTHING
    from core.catalog import Catalog
    from core.runtime import open_runtime

    settings = get_settings()
    catalog = Catalog.load(settings.configs_dir, settings.prompts_dir, settings.config)
    with open_runtime(settings) as rt, rt.database.pool(2) as pool:
        asked = Question(text=question, config=config, top_k=top_k, collection=collection)
        answer = RagPipeline(settings, catalog, pool).answer(asked, EVERYTHING)  # the operator's own command
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
    configure_logging(logging.WARNING)  # one-shot commands; serve and worker use RAGOPS_LOG_LEVEL
    try:
        app()
    except RagopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
