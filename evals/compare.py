"""``ragops eval compare``: candidate vs baseline, question by question, with bootstrap intervals.

Exit codes: 0 pass, 1 regression, 2 unusable input, 3 not evaluated: the change alters a
generation input (the prompt, the model, max_tokens, temperature) that the generator which
answered does not read (the extractive one reads none of them), so equal metrics prove nothing.
A regression found anyway still exits 1.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.generators.extractive import ExtractiveGenerator
from core.errors import EvalInputError
from evals.runner import LOWER_IS_BETTER, REPORT_FORMAT

PASS, REGRESSION, UNUSABLE, NOT_EVALUATED = 0, 1, 2, 3


class MetricRule(BaseModel):
    """Limits for one metric."""

    model_config = ConfigDict(extra="forbid")

    floor: float | None = None
    ceiling: float | None = None
    max_drop: float | None = Field(default=None, ge=0)
    advisory: bool = Field(
        default=False,
        description="Reported (with what would fail) but never fails the gate, and may be unavailable: judge scores.",
    )


class Bootstrap(BaseModel):
    """How intervals are computed."""

    model_config = ConfigDict(extra="forbid")

    resamples: int = Field(default=2000, ge=100)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    seed: int = 7


class Gate(BaseModel):
    """The whole gate file."""

    model_config = ConfigDict(extra="forbid")

    bootstrap: Bootstrap = Bootstrap()
    metrics: dict[str, MetricRule]
    ceilings: dict[str, float] = Field(default_factory=dict)


@dataclass
class MetricResult:
    """One metric's comparison."""

    name: str
    baseline: float
    candidate: float
    diff: float
    ci_low: float
    ci_high: float
    questions: int
    failures: list[str] = field(default_factory=list)
    advisory: bool = False
    note: str = ""  # for advisory metrics: how the judge fared on each side

    @property
    def passed(self) -> bool:
        """No rule broken."""
        return not self.failures

    @property
    def blocking(self) -> bool:
        """A broken rule that fails the gate (advisory metrics never do)."""
        return bool(self.failures) and not self.advisory

    @property
    def available(self) -> bool:
        """Both reports scored this metric on at least one common question."""
        return self.questions > 0


@dataclass
class Comparison:
    """The gate's verdict."""

    metrics: list[MetricResult]
    ceilings: list[tuple[str, float, float, bool]]
    worst_questions: list[dict[str, Any]]
    baseline_versions: dict[str, Any]
    candidate_versions: dict[str, Any]
    not_evaluated: list[str] = field(default_factory=list)  # changed generation inputs no generator read
    answered_by: tuple[str, str] = ("unknown", "unknown")  # baseline's and candidate's generator (and model)
    judged_by: tuple[str, str] = ("none", "none")

    @property
    def regressed(self) -> bool:
        """A blocking metric or a ceiling broken."""
        return any(m.blocking for m in self.metrics) or not all(ok for *_, ok in self.ceilings)

    @property
    def exit_code(self) -> int:
        """1 on a regression; else 3 when part of the change was not evaluated; else 0."""
        if self.regressed:
            return REGRESSION
        return NOT_EVALUATED if self.not_evaluated else PASS

    @property
    def verdict(self) -> str:
        """The report's first line, after "ragops eval gate: "."""
        if self.regressed:
            return "FAIL: quality regressed" + (
                " (and part of the change was not evaluated)" if self.not_evaluated else ""
            )
        if self.not_evaluated:
            changed = ", ".join(self.not_evaluated)
            return f"NOT EVALUATED: {changed} changed, and the generator that answered does not read it"
        return "PASS"

    def header(self) -> list[str]:
        """What a reviewer must know before the numbers: who answered and judged, and what was not measured."""
        lines = [
            f"Answered by: baseline {self.answered_by[0]}, candidate {self.answered_by[1]}. "
            f"Judge: baseline {self.judged_by[0]}, candidate {self.judged_by[1]}."
        ]
        if self.not_evaluated:
            lines.append(
                f"Not evaluated: this change alters {', '.join(self.not_evaluated)}, which the generator that answered "
                "never reads (the extractive generator quotes retrieved sentences; prompts and generation settings "
                "do not reach it). The metrics below cannot show its effect: run the gate with a model "
                "(RAGOPS_VLLM_URL; the eval-gate workflow starts one) to judge it."
            )
        return lines


def load_gate(path: Path) -> Gate:
    """Parse the gate file."""
    try:
        return Gate.model_validate(yaml.safe_load(path.read_text()) or {})
    except FileNotFoundError:
        raise EvalInputError(f"gate file {path} does not exist") from None
    except (yaml.YAMLError, ValidationError) as exc:
        raise EvalInputError(f"{path}: invalid gate file: {exc}") from None


def load_report(path: Path) -> dict[str, Any]:
    """Parse an eval report."""
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise EvalInputError(f"report {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise EvalInputError(f"report {path} is not valid JSON: {exc.msg}") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT or "questions" not in report:
        raise EvalInputError(f"{path} is not a ragops eval report (format {REPORT_FORMAT})")
    return report


def bootstrap_ci(diffs: np.ndarray, bootstrap: Bootstrap) -> tuple[float, float]:
    """Percentile interval of the mean paired difference."""
    if len(diffs) == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(bootstrap.seed)
    samples = rng.choice(diffs, size=(bootstrap.resamples, len(diffs)), replace=True).mean(axis=1)
    tail = (1 - bootstrap.confidence) / 2 * 100
    return float(np.percentile(samples, tail)), float(np.percentile(samples, 100 - tail))


def judge_note(report: dict[str, Any], name: str) -> str:
    """How the report's judge fared on one metric: "no judge", or "40 scored, failed: bad_json 2"."""
    judge = report.get("judge")
    if not judge or name not in judge.get("metrics", {}):
        return "no judge"
    counts = judge["metrics"][name]
    failed = ", ".join(f"{reason} {n}" for reason, n in counts["failed"].items())
    return f"{counts['scored']} scored" + (f", failed: {failed}" if failed else "")


def paired_questions(
    baseline: dict[str, Any], candidate: dict[str, Any]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Both reports' questions by id; :class:`EvalInputError` unless they answer the same dataset."""
    if baseline["dataset"]["sha256"] != candidate["dataset"]["sha256"]:
        raise EvalInputError(
            f"the baseline was made on another dataset ({baseline['dataset']['name']} "
            f"{baseline['dataset']['sha256'][:12]}) than the candidate ({candidate['dataset']['name']} "
            f"{candidate['dataset']['sha256'][:12]}); regenerate it with `ragops eval baseline`"
        )
    base = {q["id"]: q for q in baseline["questions"]}
    cand = {q["id"]: q for q in candidate["questions"]}
    if set(base) != set(cand):
        raise EvalInputError("baseline and candidate answer different questions")
    return base, cand


def check_metric(
    name: str, rule: MetricRule, b: np.ndarray, c: np.ndarray, bootstrap: Bootstrap, note: str
) -> MetricResult:
    """One metric's paired scores against its rule: means, the interval of the change, broken limits."""
    diffs = c - b
    low, high = bootstrap_ci(diffs, bootstrap)
    result = MetricResult(name, float(b.mean()), float(c.mean()), float(diffs.mean()), low, high, len(b),
                          advisory=rule.advisory, note=note)  # fmt: skip
    lower_is_better = name in LOWER_IS_BETTER
    drop = result.diff if lower_is_better else -result.diff  # > 0: the candidate is worse
    significant = low > 0 if lower_is_better else high < 0
    if rule.floor is not None and result.candidate < rule.floor:
        result.failures.append(f"below floor {rule.floor}")
    if rule.ceiling is not None and result.candidate > rule.ceiling:
        result.failures.append(f"above ceiling {rule.ceiling}")
    if rule.max_drop is not None and drop > rule.max_drop and significant:
        result.failures.append(f"worse by {drop:.3f} > {rule.max_drop} (95% CI excludes 0)")
    return result


def worst_questions(
    regressions: dict[str, float], base: dict[str, dict[str, Any]], cand: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The ten questions that lost the most, worst first, with both answers and what each retrieved."""
    worst = sorted((i for i in regressions if regressions[i] < 0), key=lambda i: regressions[i])[:10]
    return [
        {
            "id": i, "kind": cand[i]["kind"], "question": cand[i]["question"], "score_change": round(regressions[i], 3),
            "baseline_answer": base[i]["answer"], "candidate_answer": cand[i]["answer"],
            "baseline_retrieved": base[i].get("retrieved", []), "candidate_retrieved": cand[i].get("retrieved", []),
            "gold": cand[i].get("gold", []),
        }
        for i in worst
    ]  # fmt: skip


def generator_reads(report: dict[str, Any]) -> frozenset[str] | None:
    """The generation inputs the report's generator reads; None when unknown (a model answered: assume all).

    Reports from before this was recorded name only the model: "extractive" is the extractive generator.
    """
    generator = report.get("generator")
    if generator and "reads" in generator:
        return frozenset(generator["reads"])
    if report.get("versions", {}).get("model") == "extractive":
        return ExtractiveGenerator.reads
    return None


def changed_inputs(baseline: dict[str, Any], candidate: dict[str, Any]) -> list[str]:
    """The generation inputs that differ between the reports (settings only when both recorded them)."""
    changed = ["prompt"] if baseline["versions"].get("prompt") != candidate["versions"].get("prompt") else []
    before = (baseline.get("generator") or {}).get("inputs")
    after = (candidate.get("generator") or {}).get("inputs")
    if before is not None and after is not None:
        changed += [
            name
            for name in sorted(set(before) | set(after))
            if name != "prompt" and before.get(name) != after.get(name)
        ]
    return changed


def unread_changes(baseline: dict[str, Any], candidate: dict[str, Any]) -> list[str]:
    """Changed generation inputs that the generator on either side does not read: not evaluated."""
    reads = [r for r in (generator_reads(baseline), generator_reads(candidate)) if r is not None]
    return [name for name in changed_inputs(baseline, candidate) if any(name not in r for r in reads)]


def answered_by(report: dict[str, Any]) -> str:
    """``extractive`` or ``vllm (model ragops-llm)``: the generator that answered, as the report recorded it."""
    generator = report.get("generator") or {}
    model = generator.get("model") or report.get("versions", {}).get("model") or "unknown"
    name = generator.get("name")
    return model if name is None or name == model else f"{name} (model {model})"


def judged_by(report: dict[str, Any]) -> str:
    """``none`` or the judge's model and endpoint."""
    judge = report.get("judge")
    return f"{judge.get('model')} at {judge.get('url')}" if judge else "none"


def compare(baseline: dict[str, Any], candidate: dict[str, Any], gate: Gate) -> Comparison:
    """Apply the gate; raises :class:`EvalInputError` when the reports are not comparable."""
    base, cand = paired_questions(baseline, candidate)
    results = []
    regressions: dict[str, float] = {}
    for name, rule in gate.metrics.items():
        ids = [i for i in base if name in base[i]["metrics"] and name in cand[i]["metrics"]]
        note = ""
        if rule.advisory:
            note = f"baseline {judge_note(baseline, name)}; candidate {judge_note(candidate, name)}"
        if not ids and rule.advisory:  # e.g. no judge configured, or every judge call failed
            nan = float("nan")
            results.append(MetricResult(name, nan, nan, nan, nan, nan, 0, advisory=True, note=note))
            continue
        if not ids:
            raise EvalInputError(f"metric {name!r} of the gate is in neither report")
        b = np.array([base[i]["metrics"][name] for i in ids])
        c = np.array([cand[i]["metrics"][name] for i in ids])
        results.append(check_metric(name, rule, b, c, gate.bootstrap, note))
        if rule.advisory:  # noisy judge scores do not decide which questions are listed first
            continue
        lower_is_better = name in LOWER_IS_BETTER
        for i, d in zip(ids, c - b, strict=True):  # sum of per-question losses, for "worst first"
            regressions[i] = regressions.get(i, 0.0) + float(min(0.0, -d if lower_is_better else d))
    ceilings = []
    for name, limit in gate.ceilings.items():
        value = float(candidate["aggregates"].get(name, float("nan")))
        ceilings.append((name, value, limit, bool(value <= limit)))
    return Comparison(
        results, ceilings, worst_questions(regressions, base, cand), baseline["versions"], candidate["versions"],
        not_evaluated=unread_changes(baseline, candidate),
        answered_by=(answered_by(baseline), answered_by(candidate)),
        judged_by=(judged_by(baseline), judged_by(candidate)),
    )  # fmt: skip


def markdown(comparison: Comparison) -> str:
    """The PR comment: verdict, the metric table, then the worst-regressed questions first."""
    lines = [
        f"## ragops eval gate: {comparison.verdict}",
        "",
        *(part for line in comparison.header() for part in (f"> {line}", "")),
        f"Baseline `{comparison.baseline_versions.get('config')}` / index `{comparison.baseline_versions.get('index')}`"
        f" vs candidate `{comparison.candidate_versions.get('config')}` / index "
        f"`{comparison.candidate_versions.get('index')}` (prompt `{comparison.candidate_versions.get('prompt')}`).",
        "",
        "| metric | baseline | candidate | diff | 95% CI | n | verdict |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    for m in comparison.metrics:
        if not m.available:
            lines.append(f"| {m.name} | | | | | 0 | unavailable, advisory ({m.note}) |")
            continue
        verdict_cell = "ok" if m.passed else "**" + "; ".join(m.failures) + "**"
        if m.advisory:
            verdict_cell = ("ok" if m.passed else "would fail: " + "; ".join(m.failures)) + f", advisory ({m.note})"
        lines.append(
            f"| {m.name} | {m.baseline:.3f} | {m.candidate:.3f} | {m.diff:+.3f} | [{m.ci_low:+.3f}, {m.ci_high:+.3f}] "
            f"| {m.questions} | {verdict_cell} |"
        )
    for name, value, limit, ok in comparison.ceilings:
        lines.append(f"| {name} | | {value:.4g} | | limit {limit:g} | | {'ok' if ok else '**over the limit**'} |")
    if comparison.worst_questions:
        lines += ["", "### Worst-regressed questions", ""]
        for q in comparison.worst_questions:
            lines += [
                f"- **{q['id']}** ({q['kind']}, change {q['score_change']:+.3f}): {q['question']}",
                f"  - gold: {', '.join(q['gold']) or '(none)'}; retrieved before: "
                f"{', '.join(q['baseline_retrieved'][:3]) or '(none)'}; after: "
                f"{', '.join(q['candidate_retrieved'][:3]) or '(none)'}",
                f"  - before: {q['baseline_answer'][:200]}",
                f"  - after: {q['candidate_answer'][:200]}",
            ]
    return "\n".join(lines) + "\n"


def html_report(comparison: Comparison) -> str:
    """A self-contained page: per-metric bars for both sides and the paired difference with its interval."""
    rows = []
    for m in comparison.metrics:
        if not m.available:
            cell = f"<td colspan='5'>unavailable: {html.escape(m.note)}</td>"
            rows.append(f"<tr><td>{html.escape(m.name)}</td>{cell}</tr>")
            continue
        scale = max(1.0, m.baseline, m.candidate)
        bw, cw = 200 * m.baseline / scale, 200 * m.candidate / scale
        mid, unit = 100, 400  # x of zero and pixels per unit of difference
        lo, hi, d = mid + m.ci_low * unit, mid + m.ci_high * unit, mid + m.diff * unit
        colour = "#2e7d32" if m.passed else "#ef6c00" if m.advisory else "#c62828"
        rows.append(
            f"<tr><td>{html.escape(m.name)}</td>"
            f'<td><svg width="210" height="34"><rect x="0" y="2" width="{bw:.1f}" height="13" fill="#90a4ae"/>'
            f'<rect x="0" y="18" width="{cw:.1f}" height="13" fill="{colour}"/></svg></td>'
            f"<td>{m.baseline:.3f} &rarr; {m.candidate:.3f}</td>"
            f'<td><svg width="200" height="20"><line x1="{mid}" y1="0" x2="{mid}" y2="20" stroke="#999"/>'
            f'<line x1="{max(lo, 0):.1f}" y1="10" x2="{min(hi, 200):.1f}" y2="10" stroke="{colour}" stroke-width="3"/>'
            f'<circle cx="{min(max(d, 0), 200):.1f}" cy="10" r="4" fill="{colour}"/></svg></td>'
            f"<td>{m.diff:+.3f} [{m.ci_low:+.3f}, {m.ci_high:+.3f}]</td>"
            f"<td>{'ok' if m.passed else html.escape('; '.join(m.failures))}</td></tr>"
        )
    header = "".join(f"<p class='about'>{html.escape(line)}</p>" for line in comparison.header())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>ragops eval gate</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:4px 10px;border-bottom:1px solid #eee}</style>"
        f"</head><body><h1>ragops eval gate: {html.escape(comparison.verdict)}</h1>{header}"
        "<p>Grey: baseline; coloured: candidate. Right: mean paired difference with its 95% bootstrap interval "
        "(the vertical line is zero).</p>"
        "<table><tr><th>metric</th><th>bars</th><th>means</th><th>difference</th><th></th><th>verdict</th></tr>"
        + "".join(rows)
        + "</table><h2>Worst-regressed questions</h2><pre>"
        + html.escape(json.dumps(comparison.worst_questions, indent=2))
        + "</pre></body></html>"
    )
