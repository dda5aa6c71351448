"""LLM-judged answer metrics: ragas Faithfulness and AnswerRelevancy through any OpenAI-compatible endpoint.

Judge scores move between runs (the same data scores 0.57 one day and 0.67 the next), so they are
recorded per question and per repeat, reported beside the deterministic metrics, and never the
primary gate. A judge that fails (invalid JSON, a timeout, an endpoint that is down) marks that
score unavailable with a counted reason; it never stops the run. The eval harness (evals/runner.py)
and online evaluation (app/online_judge.py) both judge with this class; it counts the tokens the
judge reports so that its calls can be priced.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from ragas.embeddings.base import BaseRagasEmbedding

from core.embedding import Embedder

JUDGE_METRICS = ("faithfulness", "answer_relevancy")


class LocalEmbeddings(BaseRagasEmbedding):
    """The configuration's own embedder (MiniLM from its wheel) as ragas embeddings: no network."""

    def __init__(self, embedder: Embedder) -> None:
        super().__init__()
        self.embedder = embedder

    def embed_text(self, text: str, **kwargs: Any) -> list[float]:
        """One vector."""
        return [float(x) for x in self.embedder.embed_batch([text])[0]]

    async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
        """One vector (the embedder is synchronous and local)."""
        return self.embed_text(text)

    def embed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
        """One batch."""
        return [[float(x) for x in v] for v in self.embedder.embed_batch(texts)]

    async def aembed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
        """One batch."""
        return self.embed_texts(texts)


def failure_reason(exc: BaseException) -> str:
    """A short, countable name for why a judge call gave no score (never the judge's text)."""
    import openai

    if isinstance(exc, openai.APITimeoutError | asyncio.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "unreachable"
    if isinstance(exc, openai.APIStatusError):
        return f"http_{exc.status_code}"
    name = type(exc).__name__
    if name in {"InstructorRetryException", "ValidationError", "JSONDecodeError"}:
        return "bad_json"
    if name == "IncompleteOutputException":
        return "truncated"
    return f"error_{name}"


def public_url(url: str) -> str:
    """``scheme://host[:port]/path`` without credentials or query, for the report."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass
class JudgeScores:
    """One judged answer: the scores obtained and, per metric that failed, why."""

    scores: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int = 0  # what the judge's calls for this answer reported using (for its price)
    completion_tokens: int = 0


class Judge:
    """Scores answers with ragas' LLM metrics; requests JSON output (instructor's JSON mode)."""

    def __init__(
        self,
        url: str,
        model: str,
        embedder: Embedder,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_tokens: int = 1024,
    ) -> None:
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient
        from ragas.llms import llm_factory
        from ragas.metrics.collections import AnswerRelevancy, Faithfulness

        self.url = url
        self.model = model
        # No client retries: a failed call is counted, not silently repeated at the cost of the gate's time.
        self.tokens: Counter[str] = Counter()  # usage reported by every judge response so far
        self.client = AsyncOpenAI(
            base_url=url, api_key=api_key or "unused", timeout=timeout_s, max_retries=0,
            http_client=DefaultAsyncHttpxClient(event_hooks={"response": [self._count_usage]}),
        )  # fmt: skip
        # instructor: one attempt per call (no re-asking a model that answered badly).
        llm = llm_factory(model, client=self.client, max_tokens=max_tokens, temperature=0.0, max_retries=1)
        self.faithfulness = Faithfulness(llm=llm)
        self.answer_relevancy = AnswerRelevancy(llm=llm, embeddings=LocalEmbeddings(embedder))
        self.loop = asyncio.new_event_loop()  # one loop for the client's connection pool
        self.scored: Counter[str] = Counter()
        self.failed: dict[str, Counter[str]] = {name: Counter() for name in JUDGE_METRICS}

    async def _count_usage(self, response: httpx.Response) -> None:
        """Add a response's reported token usage (also of answers ragas then rejects: they were paid for)."""
        await response.aread()
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            usage = response.json().get("usage") or {}
            self.tokens["prompt"] += int(usage.get("prompt_tokens") or 0)
            self.tokens["completion"] += int(usage.get("completion_tokens") or 0)

    def score(self, question: str, answer: str, contexts: list[str]) -> JudgeScores:
        """Both metrics for one answer, with the tokens they used; each failure is recorded by reason, never raised."""
        before = Counter(self.tokens)
        result = JudgeScores()
        calls = {
            "faithfulness": lambda: self.faithfulness.ascore(
                user_input=question, response=answer, retrieved_contexts=contexts or [""]
            ),
            "answer_relevancy": lambda: self.answer_relevancy.ascore(user_input=question, response=answer),
        }
        for name, call in calls.items():
            try:
                value = float(self.loop.run_until_complete(call()).value)
            except Exception as exc:  # any judge failure is data about the judge, not a crash of the eval
                reason = failure_reason(exc)
            else:
                if not math.isnan(value):
                    result.scores[name] = value
                    self.scored[name] += 1
                    continue
                reason = "no_statements"  # ragas found nothing to judge in the answer
            result.failures[name] = reason
            self.failed[name][reason] += 1
        result.prompt_tokens = self.tokens["prompt"] - before["prompt"]
        result.completion_tokens = self.tokens["completion"] - before["completion"]
        return result

    def summary(self) -> dict[str, Any]:
        """What the report records about the judge: where, which model, and how each metric fared."""
        return {
            "url": public_url(self.url),
            "model": self.model,
            "metrics": {
                name: {"scored": self.scored[name], "failed": dict(sorted(self.failed[name].items()))}
                for name in JUDGE_METRICS
            },
        }

    def close(self) -> None:
        """Close the client's connections, then the event loop."""
        self.loop.run_until_complete(self.client.close())
        self.loop.close()
