"""``ragops eval run``: answer every question through the serving pipeline and score it.

The index version the configuration's index settings define is built (or reused) from the
bundled samples in its own collection, so a chunking or embedding change is evaluated for
real, and the answers come from the same :class:`RagPipeline` the API serves.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.generators.base import NOT_FOUND_ANSWER, generation_inputs
from app.pricing import Pricing, load_pricing
from app.rag import Answer, Question, RagPipeline, final_answer
from core.access import EVERYTHING
from core.catalog import Catalog
from core.config import LoadedConfig, list_config_names
from core.embedding import Embedder
from core.errors import ConfigError, EvalInputError
from core.git import git_commit
from core.pii import replace_spans
from core.runtime import Runtime
from core.settings import Settings
from evals.dataset import EvalQuestion, EvalSet
from evals.metrics import hit_at_k, mrr_at_k, ndcg_at_k, recall_at_k, unique_in_order
from ingest.documents import chunk_texts
from ingest.pipeline import IngestPipeline
from ingest.versions import IndexVersion

if TYPE_CHECKING:  # ragas is imported only when a judge is configured
    from app.judge import Judge, JudgeScores

REPORT_FORMAT = 1
EVAL_COLLECTION = "eval-samples"
# Metrics where lower is better; every other metric is "higher is better".
LOWER_IS_BETTER = frozenset({"pii_leak", "cost_usd", "latency_ms"})


def load_catalog(configs_dir: Path, prompts_dir: Path, config_name: str) -> Catalog:
    """Every configuration and prompt, with ``config_name`` required to exist (else unusable input)."""
    known = list_config_names(configs_dir)
    if config_name not in known:
        raise EvalInputError(f"unknown configuration {config_name!r} in {configs_dir} (known: {', '.join(known)})")
    try:
        return Catalog.load(configs_dir, prompts_dir, config_name)
    except ConfigError as exc:
        raise EvalInputError(str(exc)) from None


def build_index(rt: Runtime, config: LoadedConfig, samples: Path, pipeline: RagPipeline) -> IndexVersion:
    """Build or reuse the version these index settings define (incremental: unchanged docs cost nothing)."""
    ingest = IngestPipeline(rt.conn, config, pipeline.embedder(config), collection=EVAL_COLLECTION)
    report = ingest.run(samples, sync=True, activate=False)
    return report.index_version


def ragas_scores(
    answer: str, reference: str, retrieved: list[str], reference_contexts: list[str], key_fact: str | None = None
) -> dict[str, float]:
    """ragas' non-LLM metrics: ROUGE-L of the answer, string-matched context recall and precision, and
    string presence of the question's short key fact (a whole reference sentence is never verbatim)."""
    from ragas.dataset_schema import SingleTurnSample
    from ragas.metrics import NonLLMContextPrecisionWithReference, NonLLMContextRecall, RougeScore, StringPresence

    sample = SingleTurnSample(
        user_input="", response=answer, reference=reference, retrieved_contexts=retrieved or [""],
        reference_contexts=reference_contexts or [""],
    )  # fmt: skip
    scores = {"rouge_l": float(RougeScore(rouge_type="rougeL", mode="fmeasure").single_turn_score(sample))}
    if reference_contexts and retrieved:
        scores["context_recall"] = float(NonLLMContextRecall().single_turn_score(sample))
        scores["context_precision"] = float(NonLLMContextPrecisionWithReference().single_turn_score(sample))
    if key_fact:
        fact = SingleTurnSample(response=answer, reference=key_fact)
        scores["string_presence"] = float(StringPresence().single_turn_score(fact))
    return scores


def score_question(
    q: EvalQuestion,
    answer: Answer,
    top_k: int,
    similarity: float,
    cost: float,
    retrieved: list[str] | None = None,
    reference_contexts: list[str] | None = None,
) -> dict[str, float]:
    """Every metric that applies to this question's kind."""
    refused = answer.text.strip().startswith(NOT_FOUND_ANSWER)
    metrics: dict[str, float] = {"latency_ms": answer.timings.total_ms, "cost_usd": cost}
    if q.kind == "unanswerable":
        metrics["refusal_accuracy"] = 1.0 if refused else 0.0
        return metrics
    relevant = dict.fromkeys(q.sources, 1)
    ranked = unique_in_order([c.source for c in answer.citations])
    metrics |= {
        "recall_at_k": recall_at_k(ranked, relevant, top_k),
        "mrr_at_k": mrr_at_k(ranked, relevant, top_k),
        "ndcg_at_10": ndcg_at_k(ranked, relevant, 10),
        "hit_at_k": hit_at_k(ranked, relevant, top_k),
        "answered": 0.0 if refused else 1.0,
        "semantic_similarity": similarity,
        **ragas_scores(answer.text, q.reference, retrieved or [], reference_contexts or [], q.key_fact),
    }
    if q.kind == "pii":
        metrics["pii_leak"] = 1.0 if any(value in answer.text for value in q.pii) else 0.0
    return metrics


def aggregate(questions: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of each metric over the questions it applies to, plus latency percentiles and cost."""
    names = sorted({name for q in questions for name in q["metrics"]})
    result: dict[str, float] = {}
    for name in names:
        values = [q["metrics"][name] for q in questions if name in q["metrics"]]
        result[name] = float(np.mean(values))
    latencies = [q["metrics"]["latency_ms"] for q in questions]
    result["latency_p50_ms"] = float(np.percentile(latencies, 50))
    result["latency_p95_ms"] = float(np.percentile(latencies, 95))
    result["cost_per_question_usd"] = result.pop("cost_usd", 0.0)
    result.pop("latency_ms", None)
    return result


def make_judge(
    settings: Settings, url: str | None, model: str | None, config_model: str, embedder: Embedder
) -> Judge | None:
    """The judge the arguments (else the settings) name, or None; its model defaults to the config's."""
    url = url or settings.judge_url
    if not url:
        return None
    from app.judge import Judge

    key = settings.judge_api_key.get_secret_value() if settings.judge_api_key else None
    return Judge(url, model or settings.judge_model or config_model, embedder, api_key=key,
                 timeout_s=settings.judge_timeout_s, max_tokens=settings.judge_max_tokens)  # fmt: skip


def record_judged(judged: list[JudgeScores]) -> dict[str, Any]:
    """Per question: every repeat's judge score (they vary), and why the others are missing."""
    if not judged:
        return {}
    scores: dict[str, list[float]] = {}
    failures: dict[str, dict[str, int]] = {}
    for j in judged:
        for name, value in j.scores.items():
            scores.setdefault(name, []).append(value)
        for name, reason in j.failures.items():
            failures.setdefault(name, {}).setdefault(reason, 0)
            failures[name][reason] += 1
    return {"scores": scores, "failures": failures}


@dataclass(frozen=True)
class EvalContext:
    """What answering and scoring every question of one run needs, built once."""

    config_name: str
    config: LoadedConfig
    pipeline: RagPipeline
    index: IndexVersion
    pricing: Pricing
    embedder: Embedder
    judge: Judge | None
    gold_chunks: dict[str, list[str]]  # source -> its chunks' texts in the eval index


# One repeat of one question: the answer, its metrics, and the judge's scores when a judge ran.
QuestionRun = tuple[Answer, dict[str, float], "JudgeScores | None"]


def answer_and_score(ctx: EvalContext, q: EvalQuestion) -> QuestionRun:
    """One repeat of one question: answer it through the serving pipeline, price it, score it (and judge it)."""
    question = Question(text=q.question, config=ctx.config_name, collection=EVAL_COLLECTION,
                        index_version=ctx.index.id)  # fmt: skip
    prepared = ctx.pipeline.prepare(question, EVERYTHING)  # the harness's own collection and pinned version
    answer = final_answer(ctx.pipeline.stream(prepared))
    vectors = ctx.embedder.embed_batch([answer.text, q.reference])
    u = answer.usage
    cost = ctx.pricing.request_cost(
        answer.versions.model, ctx.config.config.index.embedding.model, u.prompt_tokens, u.completion_tokens,
        u.cached_tokens, u.embedding_tokens,
    )  # fmt: skip
    retrieved = [p.hit.text for p in prepared.request.passages]
    reference_contexts = [t for source in q.sources for t in ctx.gold_chunks.get(source, [])]
    similarity = float(vectors[0] @ vectors[1])
    top_k = ctx.config.config.retrieval.top_k
    metrics = score_question(q, answer, top_k, similarity, cost, retrieved, reference_contexts)
    judged = None
    if ctx.judge is not None and "answered" in metrics and metrics["answered"]:
        judged = ctx.judge.score(prepared.request.question, answer.text, retrieved)
    return answer, metrics, judged


def report_scrubber(ctx: EvalContext) -> Callable[[str], str]:
    """Reports are shared: their texts go through the configuration's PII policy (every type becomes ``<TYPE>``)."""
    engine = ctx.pipeline.pii_engine(ctx.config)
    policy = ctx.config.config.pii
    if engine is None:
        return lambda text: text

    def scrub(text: str) -> str:
        # Values the dataset lists are already "<PII>": not a name for the NER model to find.
        marks = [(m.start(), m.end()) for m in re.finditer("<PII>", text)]
        spans = [s for s in engine.analyze(text, policy) if not any(a < s.end and s.start < b for a, b in marks)]
        return replace_spans(text, spans, lambda entity_type, _value: f"<{entity_type}>")

    return scrub


def question_record(q: EvalQuestion, runs: list[QuestionRun], scrub: Callable[[str], str]) -> dict[str, Any]:
    """A question's entry in the report: the first repeat's answer, each metric's mean over the repeats."""
    answer = runs[0][0]
    metrics = {name: statistics.fmean(m[name] for _, m, _ in runs) for name in runs[0][1]}
    judge_record = record_judged([j for *_, j in runs if j is not None])
    metrics |= {name: statistics.fmean(values) for name, values in judge_record.get("scores", {}).items()}
    return {
        "id": q.id,
        "kind": q.kind,
        "question": scrub(q.redacted(q.question)),
        "reference": scrub(q.redacted(q.reference)),
        "answer": scrub(q.redacted(answer.text)),
        "retrieved": unique_in_order([c.source for c in answer.citations]),
        "gold": q.sources,
        "metrics": metrics,
        **({"judge": judge_record} if judge_record else {}),
    }


def answer_questions(ctx: EvalContext, questions: list[EvalQuestion], repeats: int) -> tuple[list[dict[str, Any]], str]:
    """Every question's report entry, and the model that answered (the last answer's)."""
    results = []
    model = ""
    scrub = report_scrubber(ctx)
    for q in questions:
        runs = [answer_and_score(ctx, q) for _ in range(repeats)]
        model = runs[-1][0].versions.model
        results.append(question_record(q, runs, scrub))
    return results, model


def run_eval(
    rt: Runtime,
    config_name: str,
    dataset: EvalSet,
    *,
    samples: Path,
    repeats: int = 1,
    configs_dir: Path | None = None,
    prompts_dir: Path | None = None,
    judge_url: str | None = None,
    judge_model: str | None = None,
) -> dict[str, Any]:
    """Evaluate one configuration on one dataset; returns the report (JSON-ready, no raw PII).

    With a judge URL (argument or ``RAGOPS_JUDGE_URL``), answered questions also get ragas
    Faithfulness and AnswerRelevancy, on every repeat; judge failures are counted, not raised.
    """
    settings = rt.settings
    configs_dir = configs_dir or settings.configs_dir
    catalog = load_catalog(configs_dir, prompts_dir or settings.prompts_dir, config_name)
    pricing = load_pricing(configs_dir)
    config = catalog.config(config_name)
    started = time.perf_counter()
    with rt.database.pool(2) as pool:
        pipeline = RagPipeline(settings, catalog, pool)
        index = build_index(rt, config, samples, pipeline)
        build_seconds = time.perf_counter() - started
        embedder = pipeline.embedder(config)
        judge = make_judge(settings, judge_url, judge_model, config.config.generation.model, embedder)
        all_sources = sorted({s for q in dataset.questions for s in q.sources})
        gold_chunks = chunk_texts(rt.conn, index, EVAL_COLLECTION, all_sources)
        ctx = EvalContext(config_name, config, pipeline, index, pricing, embedder, judge, gold_chunks)
        results, model = answer_questions(ctx, dataset.questions, repeats)
        generator = pipeline.generator(config)
        prompt_version = catalog.prompt_for(config).version
        judge_summary = None
        if judge is not None:
            judge_summary = judge.summary()
            judge.close()
    return {
        "format": REPORT_FORMAT,
        "dataset": {"name": dataset.name, "sha256": dataset.sha256, "questions": len(dataset.questions)},
        "versions": {
            "config": config.version,
            "prompt": prompt_version,
            "index": index.name,
            "model": model,
            "pricing": pricing.version,
            "git_commit": git_commit(configs_dir.resolve()),
        },
        "repeats": repeats,
        # Which generator answered, and which of the configuration's generation inputs it reads:
        # the gate calls a change to one it does not read "not evaluated", never a pass.
        "generator": {
            "name": generator.name,
            "model": model,
            "reads": sorted(generator.reads),
            "inputs": generation_inputs(config, prompt_version),
        },
        "judge": judge_summary,
        "index_build_seconds": round(build_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        "aggregates": aggregate(results),
        "questions": results,
    }
