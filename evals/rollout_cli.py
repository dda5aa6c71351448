"""``ragops rollout gate|start|status|promote|abort|work``: staged rollouts from the command line.

Mounted through the ``ragops.cli`` entry point (the gate lives in evals; app never imports it).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from core.errors import RagopsError
from core.runtime import open_runtime

app = typer.Typer(help="Staged rollouts: gate, shadow, canary, promote or roll back.", no_args_is_help=True)
out = Console(stderr=True)
CollectionOpt = Annotated[str, typer.Option(help="The collection the rollout serves.")]
ConfigOpt = Annotated[str | None, typer.Option(help="Candidate configuration (configs/NAME.yaml).")]
PromptOpt = Annotated[str | None, typer.Option(help="Candidate prompt (prompts/NAME.md).")]
IndexOpt = Annotated[int | None, typer.Option("--index-version", help="Candidate index version id.")]
LiveOpt = Annotated[str | None, typer.Option(help="The live configuration; default: the served default.")]
AllowOpt = Annotated[
    bool, typer.Option(help="Start even when the gate could not evaluate part of the change (a prompt).")
]


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _show(rollout: Any, samples: dict[str, int]) -> None:
    print(json.dumps({
        "id": rollout.id, "collection": rollout.collection, "status": rollout.status, "live": rollout.live.as_dict(),
        "candidate": rollout.candidate.as_dict(), "gate_id": rollout.gate_id, "samples": samples,
        "decision": rollout.decision, "reason": rollout.reason,
    }, indent=2, default=str))  # fmt: skip


def _gate(rt: Any, collection: str, config: str | None, prompt: str | None, index_version: int | None,
          live_config: str | None, allow_not_evaluated: bool) -> int:  # fmt: skip
    """Run and record the gate on the candidate; returns the gate run's id (exit 1 when it failed)."""
    from app.rollouts import service
    from core.catalog import Catalog
    from evals.rollout import record, run_gate

    catalog = Catalog.load(rt.settings.configs_dir, rt.settings.prompts_dir, rt.settings.config)
    live = service.live_versions(rt.conn, catalog, collection, live_config)
    candidate = service.candidate_versions(rt.conn, catalog, live, config, prompt, index_version)
    out.print(f"eval gate on {candidate.as_dict()} against {live.config}'s baseline ...")
    run = run_gate(rt, candidate.config, baseline_config=live.config, index_version=index_version, prompt=prompt,
                   allow_not_evaluated=allow_not_evaluated)  # fmt: skip
    gate = record(rt, run, {"config": config, "prompt": prompt, "index_version": index_version})
    out.print(f"gate run {gate.id}: {run.verdict} (report sha256 {run.sha256[:12]})")
    if not gate.passed:
        _fail(f"the gate did not pass: the rollout does not start ({run.verdict})", 1)
    return gate.id


@app.command("gate")
def gate_cmd(collection: CollectionOpt, config: ConfigOpt = None, prompt: PromptOpt = None,
             index_version: IndexOpt = None, live_config: LiveOpt = None, allow_not_evaluated: AllowOpt = False
             ) -> None:  # fmt: skip
    """Run the eval gate on a candidate and record it; prints the gate run's id (exit 1 when it failed)."""
    try:
        with open_runtime() as rt:
            print(_gate(rt, collection, config, prompt, index_version, live_config, allow_not_evaluated))
    except RagopsError as exc:
        _fail(str(exc))


@app.command("start")
def start_cmd(
    collection: CollectionOpt, config: ConfigOpt = None, prompt: PromptOpt = None, index_version: IndexOpt = None,
    live_config: LiveOpt = None, allow_not_evaluated: AllowOpt = False,
    gate_id: Annotated[int | None, typer.Option(help="A passed gate run of this candidate; unset: run it.")] = None,
) -> None:  # fmt: skip
    """Gate the candidate (unless --gate-id names a passed run), then start it in shadow."""
    from app.rollouts import service, store
    from core.catalog import Catalog

    try:
        with open_runtime() as rt:
            if gate_id is None:
                gate_id = _gate(rt, collection, config, prompt, index_version, live_config, allow_not_evaluated)
            catalog = Catalog.load(rt.settings.configs_dir, rt.settings.prompts_dir, rt.settings.config)
            rollout = service.start_rollout(
                rt.conn, catalog, collection, gate_id=gate_id, config=config, prompt=prompt,
                index_version=index_version, live_config=live_config, created_by="cli",
            )  # fmt: skip
            _show(rollout, store.sample_counts(rt.conn, rollout.id))
    except RagopsError as exc:
        _fail(str(exc))


@app.command("status")
def status_cmd(
    rollout_id: Annotated[int | None, typer.Argument(help="One rollout; unset: the latest ones.")] = None,
    collection: Annotated[str | None, typer.Option(help="Only this collection's.")] = None,
) -> None:
    """A rollout's stage, paired samples and the sequential test's state (JSON)."""
    from app.rollouts import store

    with open_runtime() as rt:
        if rollout_id is not None:
            rollout = store.get_rollout(rt.conn, rollout_id)
            if rollout is None:
                _fail(f"no rollout {rollout_id}")
            assert rollout is not None
            found = [rollout]
        else:
            found = store.list_rollouts(rt.conn, collections=frozenset({collection}) if collection else None, limit=20)
        for rollout in found:
            _show(rollout, store.sample_counts(rt.conn, rollout.id))


@app.command("promote")
def promote_cmd(rollout_id: Annotated[int, typer.Argument()]) -> None:
    """Promote now: the candidate's index version answers the collection (one transaction)."""
    from app.rollouts import service, store

    try:
        with open_runtime() as rt:
            rollout = service.promote_rollout(rt.conn, rollout_id)
            _show(rollout, store.sample_counts(rt.conn, rollout.id))
    except RagopsError as exc:
        _fail(str(exc))


@app.command("abort")
def abort_cmd(
    rollout_id: Annotated[int, typer.Argument()],
    reason: Annotated[str, typer.Option(help="Recorded with the rollout.")] = "aborted by an operator",
) -> None:
    """Stop a rollout: every answer comes from the live versions again."""
    from app.rollouts import service, store

    try:
        with open_runtime() as rt:
            rollout = service.abort_rollout(rt.conn, rollout_id, reason[:500])
            _show(rollout, store.sample_counts(rt.conn, rollout.id))
    except RagopsError as exc:
        _fail(str(exc))


@app.command("work")
def work_cmd() -> None:
    """Answer queued shadow and canary questions on the other side, and apply the decisions (Ctrl-C stops)."""
    from app.accounting import Accountant
    from app.pricing import load_pricing
    from app.rag import RagPipeline
    from app.rollouts.shadow import ShadowWorker
    from core.catalog import Catalog

    with open_runtime() as rt, rt.database.pool(2) as pool:
        settings = rt.settings
        catalog = Catalog.load(settings.configs_dir, settings.prompts_dir, settings.config)
        worker = ShadowWorker(
            RagPipeline(settings, catalog, pool), Accountant(pool, load_pricing(settings.configs_dir))
        )
        out.print("rollout worker waiting for queued questions (Ctrl-C stops)")
        try:
            worker.run_forever()
        except KeyboardInterrupt:
            worker.stop()
