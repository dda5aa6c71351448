"""The LLM judge of online evaluation: judges queued answers within each configuration's daily spend cap.

A configuration's ``online_eval.judge`` names an OpenAI-compatible endpoint (or "vllm": the service's
own), a model and a cap. The worker hands each answer the judge's sample picked to ``OnlineJudges.judge``
outside any transaction; it checks today's spend against the cap, scores the PII-filtered question
and answer against the cited chunks, filtered by the same policy (app/judge.py: ragas Faithfulness
and AnswerRelevancy), prices
the tokens the judge reported and records the spend at once. Failures become counted outcomes,
never exceptions: a judge that is down costs the batch its judge scores, nothing else.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psycopg

from app.pii import PiiSession
from app.pricing import Pricing
from core.catalog import Catalog
from core.config import LoadedConfig, OnlineJudgeSettings
from core.embedding import get_embedder
from core.errors import RagopsError
from core.money import to_stored_usd
from core.pii import get_pii_engine
from core.settings import Settings

if TYPE_CHECKING:  # ragas is imported only once a judge runs
    from app.judge import Judge

log = logging.getLogger(__name__)
# A judged answer takes up to this many judge calls (Faithfulness: statements, then verdicts; AnswerRelevancy:
# one); its lease allows each its full timeout, plus slack.
CALLS_PER_ANSWER = 4
LEASE_SLACK_S = 30.0


@dataclass
class JudgeOutcome:
    """What judging one answer gave: scores, outcomes to count ("faithfulness:timeout", "skipped:cap"), spend."""

    scores: dict[str, float] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    cost_usd: float = 0.0


def judge_model(config: LoadedConfig) -> str:
    """The model a configuration's judge asks for (and is priced as): its own, else the generation model."""
    return config.config.online_eval.judge.model or config.config.generation.model


def filtered_contexts(config: LoadedConfig, texts: list[str]) -> list[str] | None:
    """The cited chunks as the configuration's PII policy lets them reach a model (``apply_to.context``),
    as the answer's own model saw them; None when the filter failed (the judge then sees nothing)."""
    policy = config.config.pii
    session = PiiSession(get_pii_engine(policy.nlp_model) if policy.enabled else None, policy)
    filtered = [session.filter_context(text) for text in texts]
    return None if session.failures else filtered


def lease_seconds(judge: OnlineJudgeSettings, answers: int) -> float:
    """How long ``answers`` judged one after another may take before another worker may take them over."""
    return answers * CALLS_PER_ANSWER * judge.timeout_s + LEASE_SLACK_S


def spent_today(conn: psycopg.Connection, config_name: str) -> float:
    """The judge spend of a configuration (all its versions and collections) on today's UTC day."""
    row = conn.execute(
        "SELECT coalesce(sum(usd), 0) FROM online_judge_spend WHERE day = %s AND config = %s",
        (datetime.now(UTC).date(), config_name),
    ).fetchone()
    return float(row[0]) if row else 0.0


def record_spend(conn: psycopg.Connection, config_name: str, collection: str, usd: float) -> None:
    """Add one judged answer's spend to today's total (one statement: committed at once on an autocommit connection)."""
    conn.execute(
        """INSERT INTO online_judge_spend (day, config, collection, usd, answers) VALUES (%s, %s, %s, %s, 1)
           ON CONFLICT (day, config, collection)
           DO UPDATE SET usd = online_judge_spend.usd + excluded.usd, answers = online_judge_spend.answers + 1""",
        (datetime.now(UTC).date(), config_name, collection, to_stored_usd(usd)),
    )


class OnlineJudges:
    """The judges the configurations name, built on first use and kept for the worker's life."""

    def __init__(self, catalog: Catalog, settings: Settings, pricing: Pricing) -> None:
        self.catalog, self.settings, self.pricing = catalog, settings, pricing
        self._judges: dict[tuple[str, str, float], Judge] = {}
        for config in catalog.configs.values():  # a judge whose spend cannot be priced cannot be capped
            if config.config.online_eval.judge.enabled:
                pricing.model(judge_model(config))

    def config(self, config_version: str) -> LoadedConfig:
        """The configuration an answer came from: the current file of the same name (NotFound: since removed)."""
        return self.catalog.config(config_version.partition("@")[0])

    def url(self, judge: OnlineJudgeSettings) -> str | None:
        """The endpoint's base URL ("vllm": the service's; None when that is not set)."""
        return self.settings.vllm_url if judge.url == "vllm" else judge.url

    def judge_for(self, config: LoadedConfig, url: str) -> Judge:
        """The judge at ``url`` for a configuration (one client per endpoint, model and timeout)."""
        settings = config.config.online_eval.judge
        key = (url, judge_model(config), settings.timeout_s)
        if key not in self._judges:
            from app.judge import Judge

            api_key = self.settings.judge_api_key.get_secret_value() if self.settings.judge_api_key else None
            embedder = get_embedder(config.config.index.embedding, self.settings.model_cache_dir)
            self._judges[key] = Judge(url, key[1], embedder, api_key=api_key, timeout_s=settings.timeout_s,
                                      max_tokens=self.settings.judge_max_tokens)  # fmt: skip
        return self._judges[key]

    def judge(
        self, conn: psycopg.Connection, config_version: str, collection: str, question: str, answer: str,
        contexts: list[str],
    ) -> JudgeOutcome:  # fmt: skip
        """Judge one answer unless its configuration's judge is off, unreachable by configuration, or over its cap.

        Runs outside any transaction on an autocommit connection: the spend is committed as soon as it is known.
        """
        outcome = JudgeOutcome()
        try:
            config = self.config(config_version)
        except RagopsError:  # a configuration since removed
            outcome.outcomes["skipped:no_config"] += 1
            return outcome
        settings = config.config.online_eval.judge
        url = self.url(settings) if settings.enabled else None
        if url is None:
            outcome.outcomes["skipped:no_judge" if not settings.enabled else "skipped:no_endpoint"] += 1
            return outcome
        if spent_today(conn, config.name) >= settings.daily_cap_usd:
            outcome.outcomes["skipped:cap"] += 1
            return outcome
        filtered = filtered_contexts(config, contexts)
        if filtered is None:
            outcome.outcomes["skipped:pii_unavailable"] += 1
            return outcome
        result = self.judge_for(config, url).score(question, answer, filtered)
        outcome.scores = dict(result.scores)
        outcome.outcomes.update(f"{name}:{reason}" for name, reason in result.failures.items())
        outcome.cost_usd = self.pricing.model(judge_model(config)).cost(result.prompt_tokens, result.completion_tokens)
        record_spend(conn, config.name, collection, outcome.cost_usd)
        return outcome

    def close(self) -> None:
        """Close every judge's connections."""
        for judge in self._judges.values():
            try:
                judge.close()
            except Exception as exc:  # closing is best effort at shutdown
                log.warning("judge client not closed cleanly: %s", type(exc).__name__)
        self._judges.clear()
