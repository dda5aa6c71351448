"""Online evaluation: a sampled share of live answers, measured in the worker, aggregated per day.

The request path only decides whether an answer is sampled and, if so, hands one small row to
the ledger write (after the response, in the same transaction; see app/after_answer.py). The
row keeps no one's words: the PII-filtered answer (none at all when the configuration does not
filter answers), the cited chunk ids and their retrieval scores, and numbers. The worker claims
rows with ``FOR UPDATE SKIP LOCKED``, measures them (app/quality.py: no model runs), adds the measures to
``online_quality`` and deletes the rows, all in one transaction: a worker that dies mid-batch
leaves its rows queued, so none is lost and none is counted twice.

With a judge configured (``online_eval.judge``), a share of the queued answers also keeps the
PII-filtered question, and the LLM judge scores them (app/online_judge.py). Judge calls are slow, so
those rows are leased in the claim transaction, judged after it commits, and folded in and deleted
in a second one only while the lease is still this worker's (sql/0017_online_judge.sql).
"""

from __future__ import annotations

import contextlib
import logging
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from app.after_answer import AfterAnswer
from app.answers import Answer, Prepared
from app.online_judge import OnlineJudges, lease_seconds
from app.quality import cited, cited_numbers, refused, support_share, top_score_and_margin
from core.catalog import Catalog
from core.config import LoadedConfig, OnlineEvalSettings, parse_duration
from core.errors import BadRequest, RagopsError
from core.money import to_stored_usd

log = logging.getLogger(__name__)
BATCH = 32  # rows claimed per transaction
# Measures reported per group: name -> (sum column, count column); a mean is sum / count.
MEANS = {
    "top_score": ("top_score_sum", "top_score_n"),
    "margin": ("margin_sum", "margin_n"),
    "support": ("support_sum", "support_n"),
    "faithfulness": ("faithfulness_sum", "faithfulness_n"),
    "answer_relevancy": ("relevancy_sum", "relevancy_n"),
}
GROUP = ("day", "collection", "config_version", "prompt_version", "index_version")


@dataclass(frozen=True)
class QueuedEvaluation:
    """One sampled answer, as queued: ids, scores and numbers, and the answer only as filtered."""

    request_id: str
    collection: str
    config_version: str
    prompt_version: str
    index_version: str
    index_version_id: int
    answer: str | None
    chunk_ids: list[int]
    scores: list[float]
    refused: bool
    cited: int
    pii_entities: int
    latency_ms: float
    cost_usd: float
    question: str | None = None  # PII-filtered; only for an answer the judge's sample picked


def sampled(rate: float, draw: Callable[[], float] = random.random) -> bool:
    """Whether this answer is in the sample (``rate`` 0: never, 1: always)."""
    return rate > 0 and (rate >= 1 or draw() < rate)


def queued_evaluation(request_id: str, prepared: Prepared, answer: Answer, cost_usd: float) -> QueuedEvaluation | None:
    """The queue row of an answer, if the configuration's ``online_eval.sample_rate`` samples it.

    The answer text is kept only as the PII filter left it (``PiiSession.filtered_transcript``);
    without an answer filter only the numbers are queued, and support is not measured. The filtered
    question is kept only when a judge is configured, its own sample picks the answer, and the answer
    is not a refusal (nothing to judge).
    """
    settings = prepared.config.config.online_eval
    if not sampled(settings.sample_rate):
        return None
    transcript = prepared.pii.filtered_transcript()
    citations = answer.citations
    was_refused = refused(answer.text)
    judged = (
        transcript is not None and not was_refused and settings.judge.enabled and sampled(settings.judge.sample_rate)
    )
    return QueuedEvaluation(
        request_id=request_id,
        collection=prepared.question.collection or "",
        config_version=answer.versions.config,
        prompt_version=answer.versions.prompt,
        index_version=answer.versions.index,
        index_version_id=prepared.index.id,
        answer=transcript["answer"] if transcript is not None else None,
        chunk_ids=[c.chunk_id for c in citations],
        scores=[c.score for c in citations],
        refused=was_refused,
        cited=len(cited_numbers(answer.text, len(citations))),
        pii_entities=sum(sum(types.values()) for types in answer.pii.values()),
        latency_ms=answer.timings.total_ms,
        cost_usd=cost_usd,
        question=transcript["question"] if judged and transcript is not None else None,
    )


def evaluation_to_queue(request_id: str, prepared: Prepared, answer: Answer, cost_usd: float) -> AfterAnswer | None:
    """Queueing the answer for online evaluation, when it is sampled (written with the ledger row)."""
    item = queued_evaluation(request_id, prepared, answer, cost_usd)
    return AfterAnswer("online evaluation", lambda conn: enqueue(conn, item)) if item is not None else None


def enqueue(conn: psycopg.Connection, item: QueuedEvaluation) -> None:
    """Queue one evaluation (a second one for the same request is ignored)."""
    conn.execute(
        """INSERT INTO online_eval_queue (request_id, collection, config_version, prompt_version, index_version,
               index_version_id, answer, chunk_ids, scores, refused, cited, pii_entities, latency_ms, cost_usd,
               question)
           VALUES (%(request_id)s, %(collection)s, %(config_version)s, %(prompt_version)s, %(index_version)s,
               %(index_version_id)s, %(answer)s, %(chunk_ids)s, %(scores)s, %(refused)s, %(cited)s,
               %(pii_entities)s, %(latency_ms)s, %(cost_usd)s, %(question)s)
           ON CONFLICT (request_id) DO NOTHING""",
        {**item.__dict__, "cost_usd": to_stored_usd(item.cost_usd)},
    )


@dataclass
class Measures:
    """What one evaluated answer adds to its group."""

    group: tuple[Any, ...]
    refused: bool
    cited: int
    pii_entities: int
    latency_ms: float
    cost_usd: Decimal
    top_score: float | None = None
    margin: float | None = None
    support: float | None = None
    judged: dict[str, float] = field(default_factory=dict)
    judge_cost_usd: float = 0.0
    judge_outcomes: Counter[str] = field(default_factory=Counter)  # "faithfulness:timeout", "skipped:cap", ...


def chunk_texts(conn: psycopg.Connection, index_version_id: int | None, chunk_ids: Sequence[int]) -> list[str]:
    """The text of ``chunk_ids`` in their index version (chunks since deleted, or a dropped version: fewer or none)."""
    if index_version_id is None or not chunk_ids:
        return []
    name = f"chunks_v{int(index_version_id)}"
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    if not exists or not exists[0]:
        return []
    rows = conn.execute(sql.SQL("SELECT text FROM {} WHERE id = ANY(%s)").format(sql.Identifier(name)),
                        (list(chunk_ids),)).fetchall()  # fmt: skip
    return [r[0] for r in rows]


def answer_support(
    conn: psycopg.Connection, answer: str, chunk_ids: Sequence[int], index_version_id: int | None, threshold: float
) -> float | None:
    """Share of the answer's sentences a chunk it cites supports (None for a refusal, or nothing to check)."""
    if refused(answer):
        return None
    return support_share(answer, chunk_texts(conn, index_version_id, cited(answer, chunk_ids)), threshold)


class OnlineEvaluator:
    """The worker's online-evaluation task: claims a batch of queued answers, measures, aggregates, deletes.

    ``judges``: the LLM judges (None: rows are never judged, their queued question is just deleted);
    up to ``judge_batch`` rows picked for the judge are judged per run, the rest wait for the next.
    """

    def __init__(
        self, settings_of: Callable[[str], OnlineEvalSettings], *, batch: int = BATCH,
        judges: OnlineJudges | None = None, judge_batch: int = 4,
    ) -> None:  # fmt: skip
        self.settings_of = settings_of  # configuration version -> its online_eval settings
        self.batch = batch
        self.judges = judges
        self.judge_batch = judge_batch

    def run_once(self, conn: psycopg.Connection) -> int:
        """Evaluate up to one batch; returns how many rows it took off the queue.

        Rows without a judge are measured, folded in and deleted in the claim's transaction. Rows for
        the judge are leased there, judged after it commits, and finished in a second transaction.
        """
        with conn.transaction():
            rows = conn.execute(
                """SELECT request_id, collection, config_version, prompt_version, index_version, index_version_id,
                          answer, chunk_ids, scores, refused, cited, pii_entities, latency_ms, cost_usd, answered_on,
                          question
                   FROM online_eval_queue WHERE judge_lease_until IS NULL OR judge_lease_until < now()
                   ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED""",
                (self.batch,),
            ).fetchall()
            if not rows:
                return 0
            # A queued question marks a row the judge's sample picked; without judges it is measured plainly.
            plain = [r for r in rows if self.judges is None or r[15] is None]
            for_judge = [r for r in rows if self.judges is not None and r[15] is not None][: self.judge_batch]
            leased = {r[0] for r in for_judge}
            if plain:
                add_measures(conn, [self.measure(conn, row) for row in plain])
                conn.execute("DELETE FROM online_eval_queue WHERE request_id = ANY(%s)", ([r[0] for r in plain],))
            lease = uuid.uuid4().hex
            if for_judge:
                conn.execute(
                    """UPDATE online_eval_queue SET judge_lease = %s,
                              judge_lease_until = now() + make_interval(secs => %s)
                       WHERE request_id = ANY(%s)""",
                    (lease, self.lease_s(for_judge), sorted(leased)),
                )
        return len(plain) + (self.finish_judged(conn, for_judge, lease) if for_judge else 0)

    def lease_s(self, rows: Sequence[Sequence[Any]]) -> float:
        """How long judging ``rows`` may take: each answer's calls at its judge's timeout."""
        seconds = 0.0
        for row in rows:
            try:
                judge = self.settings_of(row[2]).judge
            except RagopsError:  # a configuration since removed: it will not be judged
                judge = OnlineEvalSettings().judge
            seconds += lease_seconds(judge, 1)
        return seconds

    def finish_judged(self, conn: psycopg.Connection, rows: Sequence[Sequence[Any]], lease: str) -> int:
        """Measure and judge leased rows outside any transaction, then fold in and delete those still leased."""
        measures = {}
        for row in rows:
            measures[row[0]] = self.measure(conn, row)
            self.judge(conn, row, measures[row[0]])
        with conn.transaction():
            held = conn.execute(
                "SELECT request_id FROM online_eval_queue WHERE request_id = ANY(%s) AND judge_lease = %s FOR UPDATE",
                (sorted(measures), lease),
            ).fetchall()
            mine = [measures[r[0]] for r in held]  # a lease that ran out: another worker counts that row
            if mine:
                add_measures(conn, mine)
                conn.execute("DELETE FROM online_eval_queue WHERE request_id = ANY(%s)", ([r[0] for r in held],))
        return len(mine)

    def judge(self, conn: psycopg.Connection, row: Sequence[Any], measured: Measures) -> None:
        """Add the LLM judge's scores, outcomes and spend for one row (never raises for the judge's sake)."""
        assert self.judges is not None
        request_id, collection, config_version, version_id, answer, chunk_ids, question = (
            row[0], row[1], row[2], row[5], row[6], row[7], row[15]
        )  # fmt: skip
        if answer is None or question is None:
            return
        contexts = chunk_texts(conn, version_id, cited(answer, chunk_ids))
        try:
            outcome = self.judges.judge(conn, config_version, collection, question, answer, contexts)
        except (RagopsError, ValueError) as exc:  # e.g. a judge model without a price: the row is still measured
            log.warning("online evaluation of %s: not judged (%s)", request_id, type(exc).__name__)
            measured.judge_outcomes[f"skipped:{type(exc).__name__}"] += 1
            return
        measured.judged = outcome.scores
        measured.judge_outcomes = outcome.outcomes
        measured.judge_cost_usd = outcome.cost_usd

    def measure(self, conn: psycopg.Connection, row: Sequence[Any]) -> Measures:
        """The reference-free measures of one queued row."""
        (_, collection, config_version, prompt_version, index_version, version_id, answer, chunk_ids, scores,
         was_refused, cited, pii_entities, latency_ms, cost_usd, day, _question) = row  # fmt: skip
        top, margin = top_score_and_margin(scores)
        measured = Measures(
            group=(day, collection, config_version, prompt_version, index_version),
            refused=was_refused, cited=cited, pii_entities=pii_entities, latency_ms=latency_ms,
            cost_usd=cost_usd, top_score=top, margin=margin,
        )  # fmt: skip
        if answer is not None and not was_refused:
            try:
                threshold = self.settings_of(config_version).support_threshold
            except RagopsError:  # a configuration since removed: its default threshold
                threshold = OnlineEvalSettings().support_threshold
            try:
                measured.support = answer_support(conn, answer, chunk_ids, version_id, threshold)
            except (ValueError, IndexError, TypeError) as exc:  # one odd row must not stall the queue
                log.warning("online evaluation of %s: support not measured (%s)", row[0], type(exc).__name__)
        return measured


def online_evaluator(catalog: Catalog, judges: OnlineJudges | None = None) -> OnlineEvaluator:
    """The evaluator for the configurations a catalog holds; an answer from an older version of a
    configuration file is measured with the current one of the same name."""

    def config_of(version: str) -> LoadedConfig:
        return catalog.config(version.partition("@")[0])

    return OnlineEvaluator(lambda version: config_of(version).config.online_eval, judges=judges)


def add_measures(conn: psycopg.Connection, measures: Iterable[Measures]) -> None:
    """Fold measures into ``online_quality``, one upsert per group (and the judge's outcomes into theirs)."""
    measures = list(measures)
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for m in measures:
        g = groups.setdefault(m.group, {
            "answers": 0, "refused": 0, "cited_sum": 0, "pii_entities_sum": 0, "top_score_sum": 0.0,
            "top_score_n": 0, "margin_sum": 0.0, "margin_n": 0, "support_sum": 0.0, "support_n": 0,
            "latency_ms_sum": 0.0, "cost_usd_sum": Decimal(0), "faithfulness_sum": 0.0, "faithfulness_n": 0,
            "relevancy_sum": 0.0, "relevancy_n": 0, "judge_cost_usd": Decimal(0),
        })  # fmt: skip
        g["answers"] += 1
        g["refused"] += int(m.refused)
        g["cited_sum"] += m.cited
        g["pii_entities_sum"] += m.pii_entities
        g["latency_ms_sum"] += m.latency_ms
        g["cost_usd_sum"] += Decimal(m.cost_usd)
        g["judge_cost_usd"] += to_stored_usd(m.judge_cost_usd)
        for name, value in (("top_score", m.top_score), ("margin", m.margin), ("support", m.support),
                            ("faithfulness", m.judged.get("faithfulness")),
                            ("relevancy", m.judged.get("answer_relevancy"))):  # fmt: skip
            if value is not None:
                g[f"{name}_sum"] += value
                g[f"{name}_n"] += 1
    outcomes: dict[tuple[Any, ...], Counter[str]] = {}
    for m in measures:
        outcomes.setdefault(m.group, Counter()).update(m.judge_outcomes)
    for key, sums in sorted(groups.items()):
        for outcome, n in sorted(outcomes.get(key, Counter()).items()):
            conn.execute(
                """INSERT INTO online_judge_outcomes (day, collection, config_version, prompt_version, index_version,
                       outcome, n) VALUES (%s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (day, collection, config_version, prompt_version, index_version, outcome)
                   DO UPDATE SET n = online_judge_outcomes.n + excluded.n""",
                [*key, outcome, n],
            )
        columns = list(sums)
        conn.execute(
            sql.SQL(
                "INSERT INTO online_quality ({group}, {cols}) VALUES ({group_values}, {values}) "
                "ON CONFLICT ({group}) DO UPDATE SET {updates}, updated_at = now()"
            ).format(
                group=sql.SQL(", ").join(map(sql.Identifier, GROUP)),
                cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
                group_values=sql.SQL(", ").join(sql.Placeholder() * len(GROUP)),
                values=sql.SQL(", ").join(sql.Placeholder() * len(columns)),
                updates=sql.SQL(", ").join(
                    sql.SQL("{c} = online_quality.{c} + excluded.{c}").format(c=sql.Identifier(c)) for c in columns
                ),
            ),
            [*key, *sums.values()],
        )


def since_day(value: str | None, today: date | None = None, default_days: int = 7) -> date:
    """The first day a report covers: ``YYYY-MM-DD`` or a duration (``7d``: the last 7 days with today); unset: 7d."""
    today = today or datetime.now(UTC).date()
    if value is None or not value.strip():
        return today - timedelta(days=default_days - 1)
    text = value.strip()
    with contextlib.suppress(ValueError):
        return today - timedelta(days=max(parse_duration(text) // 86400, 1) - 1)
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"since must be a date (YYYY-MM-DD) or a duration like 7d, not {text[:40]!r}",
                         field="since") from None  # fmt: skip


def quality_report(
    conn: psycopg.Connection, since: date, collections: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Per collection x configuration x prompt x index version x day since ``since``: counts, rates and means.

    ``collections``: only these (None: all).
    """
    rows = conn.execute(
        """SELECT * FROM online_quality
           WHERE day >= %s AND (%s::text[] IS NULL OR collection = ANY(%s))
           ORDER BY day, collection, config_version, prompt_version, index_version""",
        (since, None if collections is None else list(collections), None if collections is None else list(collections)),
    )
    names = [d.name for d in rows.description or ()]
    groups = [dict(zip(names, row, strict=True)) for row in rows.fetchall()]
    outcomes: dict[tuple[Any, ...], dict[str, int]] = {}
    for *key, outcome, n in conn.execute(
        """SELECT day, collection, config_version, prompt_version, index_version, outcome, n
           FROM online_judge_outcomes WHERE day >= %s AND (%s::text[] IS NULL OR collection = ANY(%s))""",
        (since, None if collections is None else list(collections), None if collections is None else list(collections)),
    ).fetchall():
        outcomes.setdefault(tuple(key), {})[outcome] = n
    return [group_figures(g, outcomes.get(tuple(g[name] for name in GROUP), {})) for g in groups]


def judge_spend(
    conn: psycopg.Connection, since: date, collections: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """What the LLM judge spent per UTC day and configuration since ``since`` (``collections``: only theirs)."""
    rows = conn.execute(
        """SELECT day, config, sum(usd), sum(answers)::int FROM online_judge_spend
           WHERE day >= %s AND (%s::text[] IS NULL OR collection = ANY(%s))
           GROUP BY day, config ORDER BY day, config""",
        (since, None if collections is None else list(collections), None if collections is None else list(collections)),
    ).fetchall()
    return [{"day": d.isoformat(), "config": c, "usd": float(usd), "answers": n} for d, c, usd, n in rows]


def judge_outcome_figures(outcomes: dict[str, int]) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Outcome counts as (per metric: failure reason -> count, skip reason -> count)."""
    failures: dict[str, dict[str, int]] = {}
    skipped: dict[str, int] = {}
    for outcome, n in sorted(outcomes.items()):
        kind, _, reason = outcome.partition(":")
        if kind == "skipped":
            skipped[reason] = n
        else:
            failures.setdefault(kind, {})[reason] = n
    return failures, skipped


def group_figures(row: dict[str, Any], judge_outcomes: dict[str, int] | None = None) -> dict[str, Any]:
    """One ``online_quality`` row as the figures a person reads (rates and means, not sums)."""
    answers = row["answers"] or 0
    figures: dict[str, Any] = {name: row[name] for name in GROUP}
    figures["day"] = row["day"].isoformat()
    figures["answers"] = answers
    figures["refusal_rate"] = row["refused"] / answers if answers else None
    figures["citations_mean"] = row["cited_sum"] / answers if answers else None
    figures["pii_entities_mean"] = row["pii_entities_sum"] / answers if answers else None
    figures["latency_ms_mean"] = row["latency_ms_sum"] / answers if answers else None
    figures["cost_usd_mean"] = float(row["cost_usd_sum"]) / answers if answers else None
    for name, (total, n) in MEANS.items():
        figures[name] = row[total] / row[n] if row[n] else None
    figures["judged"] = row["faithfulness_n"]
    figures["answer_relevancy_judged"] = row["relevancy_n"]
    figures["judge_cost_usd"] = float(row["judge_cost_usd"])
    figures["judge_failures"], figures["judge_skipped"] = judge_outcome_figures(judge_outcomes or {})
    return figures


def today_figures(pool: ConnectionPool) -> tuple[list[dict[str, Any]], int]:
    """Today's groups and the queue's length (for the Prometheus gauges)."""
    with pool.connection() as conn:
        rows = quality_report(conn, datetime.now(UTC).date())
        row = conn.execute("SELECT count(*) FROM online_eval_queue").fetchone()
    return rows, int(row[0]) if row else 0
