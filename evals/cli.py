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
