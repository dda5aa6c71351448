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
from core.money import format_usd
from evals.runner import LOWER_IS_BETTER, REPORT_FORMAT

PASS, REGRESSION, UNUSABLE, NOT_EVALUATED = 0, 1, 2, 3
# A question is listed as changed when one of its gated scores moved by more than this: scores are
# means of 0/1 outcomes and similarities, so anything smaller is float noise (an unchanged run's
# semantic similarities differ in the 1e-8s), never a change a reviewer should read.
SCORE_EPSILON = 1e-6
# The reports list at most this many changed questions, worst first (the count of the rest is given).
MAX_LISTED_QUESTIONS = 20


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
    changed_questions: list[dict[str, Any]]  # see :func:`changed_questions`
    baseline_versions: dict[str, Any]
    candidate_versions: dict[str, Any]
    not_evaluated: list[str] = field(default_factory=list)  # changed generation inputs no generator read
    answered_by: tuple[str, str] = ("unknown", "unknown")  # baseline's and candidate's generator (and model)
    judged_by: tuple[str, str] = ("none", "none")
    aggregates: tuple[dict[str, float], dict[str, float]] = ({}, {})  # both reports' means, latency and cost

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


def changed_questions(
    changes: dict[str, dict[str, tuple[float, float]]], base: dict[str, dict[str, Any]], cand: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every question with a gated metric that moved by more than :data:`SCORE_EPSILON`, worst first.

    ``score_change`` is the sum over those metrics of the change, signed so that negative is worse
    (lower-is-better metrics negated): -1.000 is one metric lost entirely, e.g. a hit that became a miss.
    """
    rows = []
    for i, moved in changes.items():
        if not moved:
            continue
        score = sum((b - c) if name in LOWER_IS_BETTER else (c - b) for name, (b, c) in moved.items())
        rows.append(
            {
                "id": i, "kind": cand[i]["kind"], "question": cand[i]["question"], "score_change": score,
                "metric_changes": {name: {"baseline": b, "candidate": c} for name, (b, c) in sorted(moved.items())},
                "baseline_answer": base[i]["answer"], "candidate_answer": cand[i]["answer"],
                "baseline_retrieved": base[i].get("retrieved", []), "candidate_retrieved": cand[i].get("retrieved", []),
                "gold": cand[i].get("gold", []),
                "latency_ms": _pair(base[i], cand[i], "latency_ms"), "cost_usd": _pair(base[i], cand[i], "cost_usd"),
            }
        )  # fmt: skip
    return sorted(rows, key=lambda q: (q["score_change"], q["id"]))


def _pair(base: dict[str, Any], cand: dict[str, Any], name: str) -> dict[str, float | None]:
    """A question's value of an ungated measure (latency, cost) on both sides."""
    return {"baseline": base["metrics"].get(name), "candidate": cand["metrics"].get(name)}


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
    changes: dict[str, dict[str, tuple[float, float]]] = {i: {} for i in base}
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
        if rule.advisory:  # noisy judge scores do not decide which questions are listed
            continue
        for i, before, after in zip(ids, b, c, strict=True):
            if abs(after - before) > SCORE_EPSILON:
                changes[i][name] = (float(before), float(after))
    ceilings = []
    for name, limit in gate.ceilings.items():
        value = float(candidate["aggregates"].get(name, float("nan")))
        ceilings.append((name, value, limit, bool(value <= limit)))
    return Comparison(
        results, ceilings, changed_questions(changes, base, cand), baseline["versions"], candidate["versions"],
        aggregates=(baseline.get("aggregates", {}), candidate.get("aggregates", {})),
        not_evaluated=unread_changes(baseline, candidate),
        answered_by=(answered_by(baseline), answered_by(candidate)),
        judged_by=(judged_by(baseline), judged_by(candidate)),
    )  # fmt: skip


# The aggregates shown beside the metrics: latency and cost are not scores but belong in the same table.
MEASURES = ("latency_p50_ms", "latency_p95_ms", "cost_per_question_usd")
SCORE_CHANGE_MEANING = (
    "Score change: the sum over the gated metrics of candidate minus baseline, signed so that negative is "
    "worse; each metric is a 0-1 score, so -1.000 is one metric lost entirely (e.g. a hit that became a miss)"
)


@dataclass(frozen=True)
class Row:
    """One line of the metric table, formatted with its unit; ``status`` is ok, fail, advisory or unavailable."""

    name: str
    baseline: str
    candidate: str
    diff: str
    interval: str
    n: str
    verdict: str
    status: str


def format_measure(name: str, value: float | None, *, signed: bool = False) -> str:
    """A value with its unit: ``1,757.6 ms``, ``$0.0000000722``, or a 0-1 score to three places."""
    if value is None or value != value:
        return ""
    sign = ("+" if value >= 0 else "-") if signed else ("-" if value < 0 else "")
    if name.endswith("_ms"):
        return f"{sign}{abs(value):,.1f} ms"
    if name.endswith("_usd"):
        return sign + format_usd(abs(value))
    return f"{sign}{abs(value):.3f}"


def metric_rows(comparison: Comparison) -> list[Row]:
    """Every gated metric, then latency and cost (with their ceilings' verdicts), formatted for a table."""
    rows = []
    for m in comparison.metrics:
        if not m.available:
            rows.append(Row(m.name, "", "", "", "", "0", f"unavailable, advisory ({m.note})", "unavailable"))
            continue
        verdict, status = ("ok", "ok") if m.passed else ("; ".join(m.failures), "fail")
        if m.advisory:
            verdict = ("ok" if m.passed else "would fail: " + verdict) + f", advisory ({m.note})"
            status = "ok" if m.passed else "advisory"
        rows.append(
            Row(m.name, f"{m.baseline:.3f}", f"{m.candidate:.3f}", f"{m.diff:+.3f}",
                f"[{m.ci_low:+.3f}, {m.ci_high:+.3f}]", str(m.questions), verdict, status)
        )  # fmt: skip
    limits = {name: (limit, ok) for name, _, limit, ok in comparison.ceilings}
    before, after = comparison.aggregates
    for name in [*MEASURES, *(n for n in limits if n not in MEASURES)]:
        b, c = before.get(name), after.get(name)
        if b is None and c is None:
            continue
        diff = c - b if b is not None and c is not None else None
        verdict, status = "", "ok"
        if name in limits:
            limit, ok = limits[name]
            verdict = f"{'ok' if ok else 'over the limit'} (limit {format_measure(name, limit)})"
            status = "ok" if ok else "fail"
        rows.append(Row(name, format_measure(name, b), format_measure(name, c), format_measure(name, diff, signed=True),
                        "", "", verdict, status))  # fmt: skip
    return rows


def retrieved_rows(q: dict[str, Any]) -> list[tuple[int, str | None, str | None]]:
    """(rank, document before, document after) for every rank either side retrieved."""
    before, after = q["baseline_retrieved"], q["candidate_retrieved"]
    return [
        (rank + 1, before[rank] if rank < len(before) else None, after[rank] if rank < len(after) else None)
        for rank in range(max(len(before), len(after)))
    ]


def question_measures(q: dict[str, Any]) -> list[tuple[str, str, str]]:
    """A changed question's latency and cost on both sides, with units (not scored: shown for context)."""
    return [
        (name, format_measure(name, q[name]["baseline"]), format_measure(name, q[name]["candidate"]))
        for name in ("latency_ms", "cost_usd")
        if q[name]["baseline"] is not None or q[name]["candidate"] is not None
    ]


def gold_ranks(q: dict[str, Any]) -> str:
    """Where each gold document was ranked before and after: ``handbook/pto.md: 4 -> not retrieved``."""

    def rank(retrieved: list[str], doc: str) -> str:
        return str(retrieved.index(doc) + 1) if doc in retrieved else "not retrieved"

    return (
        "; ".join(
            f"{doc}: {rank(q['baseline_retrieved'], doc)} -> {rank(q['candidate_retrieved'], doc)}" for doc in q["gold"]
        )
        or "(no gold documents)"
    )


def changes_summary(comparison: Comparison) -> str:
    """How many questions changed (and how many are shown), or that none did."""
    n = len(comparison.changed_questions)
    if not n:
        return f"No question's gated scores changed (by more than {SCORE_EPSILON:g})."
    shown = min(n, MAX_LISTED_QUESTIONS)
    more = f"; the {n - shown} with the smallest changes are not shown" if n > shown else ""
    return (
        f"{n} question{'s' if n != 1 else ''} changed by more than {SCORE_EPSILON:g} in a gated score, "
        f"worst first{more}. {SCORE_CHANGE_MEANING}."
    )


def listed_questions(comparison: Comparison) -> list[dict[str, Any]]:
    """The changed questions the reports show: the worst and the best, the rest counted."""
    changed = comparison.changed_questions
    if len(changed) <= MAX_LISTED_QUESTIONS:
        return changed
    by_size = sorted(changed, key=lambda q: -abs(q["score_change"]))[:MAX_LISTED_QUESTIONS]
    return sorted(by_size, key=lambda q: (q["score_change"], q["id"]))


def markdown(comparison: Comparison) -> str:
    """The PR comment: verdict, who answered, every metric (latency and cost too), then each changed question."""
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
    for r in metric_rows(comparison):
        verdict = f"**{r.verdict}**" if r.status == "fail" else r.verdict
        lines.append(f"| {r.name} | {r.baseline} | {r.candidate} | {r.diff} | {r.interval} | {r.n} | {verdict} |")
    lines += ["", "### Changed questions", "", changes_summary(comparison)]
    for q in listed_questions(comparison):
        lines += [
            "",
            f"#### {q['id']} ({q['kind']}): score change {q['score_change']:+.3f}",
            "",
            f"Question: {_md(q['question'])}",
            "",
            "| metric | before | after | change |",
            "|---|---:|---:|---:|",
            *(
                f"| {name} | {v['baseline']:.3f} | {v['candidate']:.3f} | {v['candidate'] - v['baseline']:+.3f} |"
                for name, v in q["metric_changes"].items()
            ),
            *(f"| {name} | {before} | {after} | |" for name, before, after in question_measures(q)),
            "",
            "| rank | retrieved before | retrieved after | |",
            "|---:|---|---|---|",
            *(
                f"| {rank} | {_md_doc(b, q['gold'])} | {_md_doc(c, q['gold'])} | {'changed' if b != c else ''} |"
                for rank, b, c in retrieved_rows(q)
            ),
            "",
            f"Gold (**bold** above), rank before -> after: {_md(gold_ranks(q))}",
            "",
            f"- answer before: {_md(q['baseline_answer'][:300])}",
            f"- answer after: {_md(q['candidate_answer'][:300])}",
        ]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    """Report text on one Markdown line, without table breaks."""
    return " ".join(text.split()).replace("|", "\\|")


def _md_doc(doc: str | None, gold: list[str]) -> str:
    if doc is None:
        return "(none)"
    return f"**{_md(doc)}** (gold)" if doc in gold else _md(doc)


_CSS = (
    ".ragops-eval{font-family:sans-serif}.ragops-eval table{border-collapse:collapse;margin:.5em 0 1em}"
    ".ragops-eval td,.ragops-eval th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}"
    ".ragops-eval .num{text-align:right;font-variant-numeric:tabular-nums}"
    ".ragops-eval .fail,.ragops-eval .worse{background:#fde0e0}.ragops-eval .better{background:#e0f4e0}"
    ".ragops-eval .advisory{background:#fff0d8}.ragops-eval .changed{background:#fff8c4}"
    ".ragops-eval .gold{font-weight:bold}.ragops-eval .about{border-left:4px solid #999;padding-left:.6em}"
)


def html_fragment(comparison: Comparison) -> str:
    """The report as one ``<section class="ragops-eval">`` with its own styles, for a page of one's own."""
    e = html.escape
    header = "".join(f"<p class='about'>{e(line)}</p>" for line in comparison.header())
    versions = (
        f"<p>Baseline <code>{e(str(comparison.baseline_versions.get('config')))}</code> / index "
        f"<code>{e(str(comparison.baseline_versions.get('index')))}</code> vs candidate "
        f"<code>{e(str(comparison.candidate_versions.get('config')))}</code> / index "
        f"<code>{e(str(comparison.candidate_versions.get('index')))}</code> (prompt "
        f"<code>{e(str(comparison.candidate_versions.get('prompt')))}</code>).</p>"
    )
    scored = {m.name: m for m in comparison.metrics if m.available}
    metric_table = (
        "<p>The interval: the mean paired difference (dot) and its 95% bootstrap interval; the line is zero.</p>"
        "<table><tr><th>metric</th><th>baseline</th><th>candidate</th><th>diff</th><th>95% CI</th><th></th><th>n</th>"
        "<th>verdict</th></tr>"
        + "".join(
            f"<tr class='{r.status}'><td>{e(r.name)}</td><td class='num'>{e(r.baseline)}</td>"
            f"<td class='num'>{e(r.candidate)}</td><td class='num'>{e(r.diff)}</td><td>{e(r.interval)}</td>"
            f"<td>{_interval_svg(scored[r.name]) if r.name in scored else ''}</td>"
            f"<td class='num'>{e(r.n)}</td><td>{e(r.verdict)}</td></tr>"
            for r in metric_rows(comparison)
        )
        + "</table>"
    )
    questions = "".join(_html_question(q) for q in listed_questions(comparison))
    return (
        f"<section class='ragops-eval'><style>{_CSS}</style>"
        f"<h1>ragops eval gate: {e(comparison.verdict)}</h1>{header}{versions}{metric_table}"
        f"<h2>Changed questions</h2><p>{e(changes_summary(comparison))}</p>{questions}</section>"
    )


def _interval_svg(m: MetricResult) -> str:
    """The paired difference and its interval on a -0.25..+0.25 axis (clipped), zero in the middle."""
    mid, unit = 100, 400  # x of zero, pixels per unit of difference
    lo, hi, d = (min(max(mid + v * unit, 0), 200) for v in (m.ci_low, m.ci_high, m.diff))
    colour = "#2e7d32" if m.passed else "#ef6c00" if m.advisory else "#c62828"
    return (
        f'<svg width="200" height="20"><line x1="{mid}" y1="0" x2="{mid}" y2="20" stroke="#999"/>'
        f'<line x1="{lo:.1f}" y1="10" x2="{hi:.1f}" y2="10" stroke="{colour}" stroke-width="3"/>'
        f'<circle cx="{d:.1f}" cy="10" r="4" fill="{colour}"/></svg>'
    )


def _html_question(q: dict[str, Any]) -> str:
    """One changed question: its score changes, both retrieved lists side by side, both answers."""
    e = html.escape

    def doc(value: str | None) -> str:
        if value is None:
            return "<td>(none)</td>"
        return f"<td class='gold'>{e(value)} (gold)</td>" if value in q["gold"] else f"<td>{e(value)}</td>"

    scores = "".join(
        f"<tr class='{'better' if _better(name, v) else 'worse'}'><td>{e(name)}</td>"
        f"<td class='num'>{v['baseline']:.3f}</td><td class='num'>{v['candidate']:.3f}</td>"
        f"<td class='num'>{v['candidate'] - v['baseline']:+.3f}</td></tr>"
        for name, v in q["metric_changes"].items()
    ) + "".join(
        f"<tr><td>{name}</td><td class='num'>{e(before)}</td><td class='num'>{e(after)}</td><td></td></tr>"
        for name, before, after in question_measures(q)
    )
    retrieved = "".join(
        f"<tr{' class=changed' if b != c else ''}><td class='num'>{rank}</td>{doc(b)}{doc(c)}</tr>"
        for rank, b, c in retrieved_rows(q)
    )
    return (
        f"<h3>{e(q['id'])} ({e(q['kind'])}): score change {q['score_change']:+.3f}</h3>"
        f"<p>Question: {e(q['question'])}</p>"
        "<table><tr><th>metric</th><th>before</th><th>after</th><th>change</th></tr>" + scores + "</table>"
        "<table><tr><th>rank</th><th>retrieved before</th><th>retrieved after</th></tr>" + retrieved + "</table>"
        f"<p>Gold, rank before &rarr; after: {e(gold_ranks(q))}</p>"
        "<table><tr><th>answer before</th><th>answer after</th></tr>"
        f"<tr><td>{e(q['baseline_answer'])}</td><td>{e(q['candidate_answer'])}</td></tr></table>"
    )


def _better(name: str, change: dict[str, float]) -> bool:
    diff = change["candidate"] - change["baseline"]
    return diff < 0 if name in LOWER_IS_BETTER else diff > 0


def html_report(comparison: Comparison) -> str:
    """A self-contained page: :func:`html_fragment` in a document of its own."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>ragops eval gate</title></head>"
        f"<body style='margin:2em'>{html_fragment(comparison)}</body></html>"
    )
