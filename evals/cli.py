"""``ragops eval ...``: run the eval, compare against a baseline, update the baseline.

Mounted into the ``ragops`` command through the ``ragops.cli`` entry point, so ``app`` never
imports ``evals``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from core.errors import EvalInputError, RagopsError
from core.runtime import open_runtime
from core.settings import get_settings
from evals.compare import UNUSABLE, compare, html_report, load_gate, load_report, markdown
from evals.dataset import load_dataset

app = typer.Typer(help="Evaluate configurations and gate changes on quality.", no_args_is_help=True)
out = Console(stderr=True)
REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATASET = REPO / "evals" / "datasets" / "sample.jsonl"
DEFAULT_GATE = REPO / "evals" / "gate.yaml"
SAMPLES = REPO / "samples"


def _fail(exc: RagopsError) -> None:
    print(f"error: {exc}", file=sys.stderr)
    raise typer.Exit(UNUSABLE)


@app.command("run")
def run(
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the JSON report.")],
    config: Annotated[str, typer.Option(help="Configuration name (configs/NAME.yaml).")] = "default",
    dataset: Annotated[Path, typer.Option(help="Eval set (JSONL).")] = DEFAULT_DATASET,
    beir: Annotated[Path | None, typer.Option(help="Evaluate retrieval on a BEIR-layout folder instead.")] = None,
    split: Annotated[str, typer.Option(help="BEIR qrels split (with --beir).")] = "test",
    repeats: Annotated[int, typer.Option(min=1, max=20, help="Answer each question N times.")] = 1,
    samples: Annotated[Path, typer.Option(help="Documents the eval index is built from.")] = SAMPLES,
    configs_dir: Annotated[Path | None, typer.Option(help="Folder of configurations (default: settings).")] = None,
    judge_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible judge for Faithfulness/AnswerRelevancy (RAGOPS_JUDGE_URL).")
    ] = None,
    judge_model: Annotated[str | None, typer.Option(help="Judge model (RAGOPS_JUDGE_MODEL; default: config's)")] = None,
) -> None:
    """Build (or reuse) the config's index, answer every question through the serving pipeline, score it."""
    from evals.runner import run_eval

    try:
        with open_runtime() as rt:
            if beir is not None:
                from evals.beir_eval import run_beir

                report = run_beir(rt, config, beir, split, configs_dir=configs_dir)
            else:
                report = run_eval(rt, config, load_dataset(dataset), samples=samples, repeats=repeats,
                                  configs_dir=configs_dir, judge_url=judge_url, judge_model=judge_model)  # fmt: skip
    except EvalInputError as exc:
        _fail(exc)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    shown = {k: round(v, 4) for k, v in report["aggregates"].items()}
    out.print(f"{report['versions']['config']} on {report['dataset']['name']}: {shown}")
    if report.get("judge"):
        for name, counts in report["judge"]["metrics"].items():
            failed = ", ".join(f"{reason} {n}" for reason, n in counts["failed"].items()) or "none"
            out.print(f"judge {name}: {counts['scored']} scored, failed: {failed}")
    out.print(f"wrote {out_file} in {report['total_seconds']:.1f} s")


@app.command("compare")
def compare_cmd(
    baseline: Annotated[Path, typer.Argument(help="Baseline report (e.g. evals/baselines/default.json).")],
    candidate: Annotated[Path, typer.Argument(help="Candidate report.")],
    gate: Annotated[Path, typer.Option(help="Gate rules.")] = DEFAULT_GATE,
    markdown_file: Annotated[Path | None, typer.Option("--markdown", help="Write the markdown report here.")] = None,
    html_file: Annotated[Path | None, typer.Option("--html", help="Write the HTML report here.")] = None,
) -> None:
    """Paired comparison with bootstrap intervals; exit 0 pass, 1 regression, 2 unusable input, 3 not evaluated.

    Not evaluated: the prompt or a generation setting changed, and the generator that answered does not read it.
    """
    try:
        comparison = compare(load_report(baseline), load_report(candidate), load_gate(gate))
    except EvalInputError as exc:
        _fail(exc)
    text = markdown(comparison)
    if markdown_file:
        markdown_file.write_text(text)
    if html_file:
        html_file.write_text(html_report(comparison))
    print(text)
    raise typer.Exit(comparison.exit_code)


@app.command("baseline")
def baseline(
    config: Annotated[str, typer.Option(help="Configuration name.")] = "default",
    dataset: Annotated[Path, typer.Option(help="Eval set (JSONL).")] = DEFAULT_DATASET,
) -> None:
    """Re-run the eval and overwrite evals/baselines/CONFIG.json (commit it in a reviewed change)."""
    target = REPO / "evals" / "baselines" / f"{config}.json"
    run(out_file=target, config=config, dataset=dataset, beir=None, split="test", repeats=1, samples=SAMPLES,
        configs_dir=get_settings().configs_dir, judge_url=None, judge_model=None)  # fmt: skip


@app.command("harvest")
def harvest_cmd(
    collection: Annotated[str | None, typer.Option(help="Collection whose feedback to harvest.")] = None,
    since: Annotated[str, typer.Option(help="Ratings updated since: a duration (7d, 24h) or an ISO date.")] = "7d",
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Review file to write (default: harvest-COLLECTION-DATE.jsonl).")
    ] = None,
    dataset: Annotated[Path, typer.Option(help="Eval set to deduplicate against, or to append to.")] = DEFAULT_DATASET,
    accept_file: Annotated[
        Path | None, typer.Option("--accept", help="Append this review file's accepted rows to --dataset.")
    ] = None,
    config: Annotated[str | None, typer.Option(help="Configuration whose embedder finds near-duplicates.")] = None,
) -> None:
    """Propose eval rows from negative feedback (review file), or append the reviewed ones (--accept)."""
    from app.feedback import parse_since
    from core.catalog import Catalog
    from core.embedding import get_embedder
    from evals.harvest import accept, harvest, review_lines

    try:
        if accept_file is not None:
            before, after, skipped = accept(accept_file, dataset)
            added = len(after.questions) - len(before.questions)
            out.print(f"appended {added} row(s) to {dataset} ({skipped} not accepted)")
            out.print(
                f"dataset sha256 {before.sha256[:12]} -> {after.sha256[:12]}: baselines made on the old dataset are "
                "refused by the gate until regenerated. Regenerate deliberately and commit both in one reviewed "
                f"change: `ragops eval baseline --dataset {dataset}`"
            )
            return
        if collection is None:
            raise EvalInputError("name the collection to harvest with --collection (or pass --accept FILE)")
        settings = get_settings()
        start = parse_since(since)
        eval_set = load_dataset(dataset)
        catalog = Catalog.load(settings.configs_dir, settings.prompts_dir, settings.config)
        embedder = get_embedder(catalog.config(config).config.index.embedding)
        with open_runtime(settings) as rt:
            result = harvest(rt.conn, collection, start, eval_set, embedder=embedder)
    except RagopsError as exc:
        _fail(exc)
    target = out_file or Path(f"harvest-{collection}-{start:%Y%m%d}.jsonl")
    lines = review_lines(result)
    target.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    out.print(f"{result.negative_ratings} negative rating(s) in {collection!r} since {start:%Y-%m-%d %H:%M} UTC")
    if result.without_transcript:
        out.print(
            f"{result.without_transcript} of them kept no question (the transcript store was off for their "
            "configuration, or the transcript expired): enable feedback.transcripts to harvest them"
        )
    if result.unknown_sources:
        out.print(f"{result.unknown_sources} marked-right document(s) no longer exist and were left out")
    for dup in result.duplicates:
        out.print(f"skipped request {dup['request_id']}: duplicate of {dup['duplicate_of']} ({dup['how']})")
    out.print(
        f'wrote {len(lines)} proposed row(s) to {target}: write each reference, set "accept": true, then '
        f"`ragops eval harvest --accept {target} --dataset {dataset}`"
    )


tune_app = typer.Typer(help="Fit hybrid retrieval to one collection (ragops tune --collection NAME).")


@tune_app.callback(invoke_without_command=True)
def tune_cmd(
    collection: Annotated[str, typer.Option(help="The collection to fit (its active index version).")],
    config: Annotated[str, typer.Option(help="Configuration to start from (configs/NAME.yaml).")] = "default",
    name: Annotated[
        str | None, typer.Option(help="Name of the configuration written; unset: CONFIG-COLLECTION.")
    ] = None,
    queries: Annotated[int, typer.Option(min=20, max=5000, help="Pseudo-queries to generate.")] = 400,
    eval_set: Annotated[
        Path | None, typer.Option(help="The team's eval set (JSONL with sources), added to the pseudo-queries.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed (same seed, same queries).")] = 0,
) -> None:
    """Fit BM25 and fusion settings to COLLECTION from pseudo-queries; write a configuration for review.

    Prints held-out nDCG@10 before and after. The file written goes through the eval gate like any
    configuration change; nothing is activated.
    """
    from core.config import NAME_PATTERN, RESERVED_NAMES, load_config
    from core.embedding import get_embedder
    from evals.tune import eval_set_queries, tune, write_tuned_config
    from ingest import versions

    settings = get_settings()
    target = name or f"{config}-{collection}".replace("_", "-").lower()
    try:
        if not NAME_PATTERN.match(target) or target in RESERVED_NAMES:
            raise EvalInputError(f"--name {target!r}: use letters, digits, '.', '_' and '-' (64 at most)")
        loaded = load_config(config, settings.configs_dir)
        extra = eval_set_queries(eval_set) if eval_set else []
        embedder = get_embedder(loaded.config.index.embedding)
        with open_runtime(settings) as rt, rt.database.connect() as conn:
            version = versions.active_index_version(conn, collection)
            if version is None:
                raise EvalInputError("no active index: ingest documents first (ragops ingest PATH)")
            result = tune(conn, version, collection, loaded, embedder, extra=extra, limit=queries, seed=seed,
                          on_progress=lambda message: out.print(f"[dim]{message}[/]"))  # fmt: skip
        out.print(
            f"held-out nDCG@10 over {result.held_out_queries} queries: {config} {result.before:.4f}, "
            f"tuned {result.after:.4f}"
        )
        for row in result.ranking:
            out.print(f"[dim]  fit {row['fit']:.4f}  {json.dumps({k: v for k, v in row.items() if k != 'fit'})}[/]")
        if not result.chosen:
            out.print(f"no setting beat {config} on held-out queries by enough to change it; nothing written")
            return
        path = write_tuned_config(loaded, settings.configs_dir, target, result, collection)
    except RagopsError as exc:
        _fail(exc)
    out.print(f"changes: {json.dumps(result.chosen)}")
    out.print(f"wrote {path}: review it, then `ragops eval run --config {target}` and the gate")
    print(path)
