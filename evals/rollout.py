"""The offline stage of a rollout, and of an activating reindex: the eval gate on the candidate.

The candidate configuration is evaluated on the eval set (its index built from the bundled samples
with its own index settings) and compared with the live configuration's committed baseline by the
gate's rules (evals/gate.yaml). The outcome is recorded with the report's sha256, so a rollout, from
the CLI or from the admin route, starts only from a passed run. The worker reaches
:func:`activation_check` through the ``ragops.activation_checks`` entry point, so ingest never imports evals.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.rollouts import store
from core.config import load_config
from core.errors import EvalInputError
from core.runtime import Runtime
from evals.compare import NOT_EVALUATED, PASS, Comparison, compare, load_gate, load_report
from evals.dataset import load_dataset
from evals.runner import run_eval
from ingest import versions

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATASET = REPO / "evals" / "datasets" / "sample.jsonl"
DEFAULT_GATE = REPO / "evals" / "gate.yaml"
BASELINES = REPO / "evals" / "baselines"
SAMPLES = REPO / "samples"


@dataclass(frozen=True)
class GateRun:
    """One gate run on a candidate: the comparison, the report's hash, and whether the rollout may start."""

    comparison: Comparison
    report: dict[str, Any]
    sha256: str
    passed: bool
    verdict: str


def report_sha256(report: dict[str, Any]) -> str:
    """Hash of a report's canonical JSON."""
    return hashlib.sha256(json.dumps(report, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def run_gate(
    rt: Runtime,
    config: str,
    *,
    baseline_config: str,
    index_version: int | None = None,
    prompt: str | None = None,
    allow_not_evaluated: bool = False,
    dataset: Path = DEFAULT_DATASET,
    gate: Path = DEFAULT_GATE,
) -> GateRun:
    """Evaluate ``config`` and apply the gate against ``baseline_config``'s committed baseline."""
    baseline_path = BASELINES / f"{baseline_config}.json"
    baseline = load_report(baseline_path)  # EvalInputError when missing
    loaded = load_config(config, rt.settings.configs_dir)
    if index_version is not None:  # the gate builds a configuration's index: it must be the one that version has
        version = versions.get_index_version(rt.conn, index_version)
        if version.settings_hash != loaded.config.index.version_hash():
            raise EvalInputError(
                f"index version {version.name} was built with other index settings than configuration {config!r}; "
                "the gate evaluates a configuration's index settings: name the configuration that built it"
            )
    report = run_eval(rt, config, load_dataset(dataset), samples=SAMPLES)
    comparison = compare(baseline, report, load_gate(gate))
    code = comparison.exit_code
    verdict = comparison.verdict
    if prompt is not None and prompt != loaded.config.generation.prompt:
        code = max(code, NOT_EVALUATED) if code == PASS else code
        verdict = f"{verdict}; prompt {prompt!r} not evaluated offline (the eval answers with the config's prompt)"
    passed = code == PASS or (code == NOT_EVALUATED and allow_not_evaluated)
    return GateRun(comparison, report, report_sha256(report), passed, verdict)


def record(rt: Runtime, run: GateRun, candidate: dict[str, Any]) -> store.Gate:
    """Store the outcome; its id is what a rollout starts from."""
    return store.record_gate(rt.conn, candidate, run.passed, run.verdict, run.sha256, run.report["versions"])


def activation_check(rt: Runtime, config: str, collection: str) -> tuple[bool, str]:
    """The gate for a full reindex asked to activate: (passed, why), on ``config``'s index settings.

    Registered as the ``gate`` entry point of ``ragops.activation_checks``; the job worker calls it
    before activating a version it built, with its own settings and database.
    """
    baseline = rt.settings.config
    if not (BASELINES / f"{baseline}.json").is_file():
        return False, f"no committed baseline evals/baselines/{baseline}.json to compare the build with"
    run = run_gate(rt, config, baseline_config=baseline)
    why = f"eval gate on configuration {config!r} for {collection!r}: {run.verdict} (report {run.sha256[:12]})"
    return run.passed, why
