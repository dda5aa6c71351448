"""Drift monitoring at the app layer: recording answers, pinning references, content gaps, summaries.

Recording is one write the answering path leaves behind (:func:`observation_to_record`): the
vector retrieval already computed, the retrieval scores and the answer's numbers, never text, and
only where the configuration's ``drift`` section enables it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg

from app.after_answer import AfterAnswer
from app.answers import Answer, Prepared, Question
from app.feedback import filtered_questions
from app.quality import cited, refused, support_share
from app.retrieval import RetrievalQuery, active_version, search
from core.config import DriftSettings, LoadedConfig, parse_duration
from core.drift import monitor, store
from core.drift.stats import kmeans
from core.embedding import get_embedder
from core.errors import BadRequest

log = logging.getLogger(__name__)

MIN_REFERENCE = 20  # a reference with fewer questions is refused: every window would be judged against noise
GAP_CLUSTERS_MAX = 12
GAP_EXAMPLES = 3  # example questions shown per content-gap cluster
GAP_EXAMPLE_CHARS = 300
GAP_CANDIDATES = 50  # stored questions looked up per cluster for its examples


def observation_to_record(request_id: str, prepared: Prepared, answer: Answer) -> AfterAnswer | None:
    """Recording the answer for drift monitoring, when its configuration monitors its collection.

    Everything recorded is already in memory (no model runs, no read): the question's vector and
    the retrieval scores, and the answer's length, refusal and support share. Written with the
    ledger row, after the response.
    """
    collection = prepared.question.collection or ""
    if not prepared.config.config.drift.monitors(collection):
        return None
    observation = store.Observation(
        request_id=request_id,
        collection=collection,
        config=prepared.config.name,
        embedding=prepared.query_vector,
        scores=prepared.hit_scores,
        answer_tokens=answer.usage.completion_tokens,
        refused=refused(answer.text),
        support_share=live_support_share(prepared, answer),
    )
    return AfterAnswer("drift", lambda conn: store.record_observation(conn, observation))


def block_to_record(config: LoadedConfig, question: Question) -> AfterAnswer | None:
    """Counting a question refused for blocked personal data, when its configuration monitors its collection.

    Only the collection and configuration names are written: the question itself is never kept.
    """
    collection = question.collection or ""
    if not config.config.drift.monitors(collection):
        return None
    return AfterAnswer("drift", lambda conn: store.record_block(conn, collection, config.name))


def live_support_share(prepared: Prepared, answer: Answer) -> float | None:
    """The answer's support share, as online evaluation measures it, on the same text online evaluation reads.

    That text is the answer as the PII filter left it, judged against the cited chunks as the model
    read them; None where the configuration does not filter answers (so the two series agree), for
    a refusal, or with nothing cited.
    """
    transcript = prepared.pii.filtered_transcript()
    if transcript is None:
        return None
    text = transcript["answer"]
    return support_share(text, cited(text, prepared.context), prepared.config.config.online_eval.support_threshold)


@dataclass(frozen=True)
class Pinned:
    """A stored reference."""

    id: int
    questions: int
    signals: list[str]


def pin_window(
    conn: psycopg.Connection, collection: str, config: LoadedConfig, window: str, *, now: datetime | None = None
) -> Pinned:
    """Pin the last ``window`` (e.g. ``7d``) of live traffic as the reference of (collection, config)."""
    try:
        seconds = parse_duration(window)
    except ValueError as exc:
        raise BadRequest(str(exc), field="window") from None
    end = now or datetime.now(UTC)
    start = end - timedelta(seconds=seconds)
    vectors, values = monitor.reference_from_window(conn, collection, config.name, start, end)
    if len(vectors) < MIN_REFERENCE:
        raise BadRequest(
            f"only {len(vectors)} recorded answers of {config.name!r} in {collection!r} over the last {window}; "
            f"a reference needs at least {MIN_REFERENCE} (is drift.enabled on, and traffic flowing?)"
        )
    ref_id = store.create_reference(
        conn, collection, config.name, "window", vectors, values, window=(start, end), note=f"last {window}"
    )
    return Pinned(ref_id, len(vectors), sorted(["question_embedding", *(k for k, v in values.items() if len(v))]))


def read_questions(path: Path) -> list[str]:
    """Questions of a JSONL file (the eval set's format: one object with a "question" per line)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BadRequest(f"cannot read {path}: {exc.strerror}") from None
    questions = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise BadRequest(f"{path}:{number}: not JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get("question"), str):
            raise BadRequest(f'{path}:{number}: expected an object with a "question" string')
        questions.append(row["question"])
    return questions


def pin_questions(
    conn: psycopg.Connection, collection: str, config: LoadedConfig, questions: Sequence[str], note: str
) -> Pinned:
    """Pin a question set (e.g. the eval set) as the reference: their vectors and retrieval scores, no text.

    Retrieval runs against the collection's active index with the configuration's settings, the way
    the answering path would; answer-side signals have no reference from questions alone.
    """
    if len(questions) < MIN_REFERENCE:
        raise BadRequest(f"{len(questions)} questions; a reference needs at least {MIN_REFERENCE}")
    embedder = get_embedder(config.config.index.embedding)
    vectors = embedder.embed_batch(list(questions))
    settings = config.config.retrieval
    index = active_version(conn, collection)
    tops, margins, empty = [], [], []
    for text, vector in zip(questions, vectors, strict=True):
        query_vector = None if settings.mode == "keyword" else vector
        scores = [h.score for h in search(conn, index, settings, RetrievalQuery(text, settings.top_k, collection, None),
                                          query_vector)]  # fmt: skip
        empty.append(not scores)
        if scores:
            tops.append(scores[0])
        if len(scores) > 1:
            margins.append(scores[0] - scores[1])
    values = {
        "top_score": np.array(tops),
        "score_margin": np.array(margins),
        "empty_retrieval": np.array(empty, dtype=np.float64),
    }
    ref_id = store.create_reference(conn, collection, config.name, "questions", vectors, values, note=note)
    return Pinned(ref_id, len(questions), ["question_embedding", "top_score", "score_margin", "empty_retrieval"])


def questions_note(path: Path, questions: Sequence[str]) -> str:
    """How a question-set reference names its source: file name and a hash of its questions (no text)."""
    digest = hashlib.sha256("\n".join(questions).encode()).hexdigest()[:12]
    return f"{path.name} sha256:{digest} ({len(questions)} questions)"


@dataclass(frozen=True)
class GapCluster:
    """Questions that retrieved poorly and sit close together: a topic the documents do not answer."""

    cluster: int
    questions: int
    mean_top_score: float
    examples: list[str]  # PII-filtered questions from the transcript store; empty while it is off


def content_gaps(
    conn: psycopg.Connection,
    collection: str,
    config: str,
    settings: DriftSettings,
    *,
    days: int = 7,
    examples: bool = False,
) -> list[GapCluster]:
    """Poorly retrieved questions of the last ``days``, clustered on their vectors, biggest cluster first.

    ``examples``: the configuration keeps transcripts; each cluster then shows up to
    ``GAP_EXAMPLES`` of its questions as the transcript store holds them (PII-filtered, the ones
    nearest its centre first). Otherwise counts only: drift tables hold no text.
    """
    since = datetime.now(UTC) - timedelta(days=days)
    vectors, scores, request_ids = store.low_score_vectors(conn, collection, config, since, settings.gap_score)
    if len(vectors) == 0:
        return []
    k = max(1, min(GAP_CLUSTERS_MAX, round(math.sqrt(len(vectors) / 2))))
    labels = kmeans(vectors, k)
    nearest = {int(j): _by_closeness(vectors, np.flatnonzero(labels == j)) for j in np.unique(labels)}
    texts: dict[str, str] = {}
    if examples:  # only the questions nearest each centre are looked up: the store may hold weeks of them
        texts = filtered_questions(conn, [request_ids[i] for m in nearest.values() for i in m[:GAP_CANDIDATES]])
    clusters = []
    for j, m in nearest.items():
        found = [texts[request_ids[i]] for i in m[:GAP_CANDIDATES] if request_ids[i] in texts]
        clusters.append(GapCluster(j, len(m), round(float(scores[m].mean()), 4),
                                   [text[:GAP_EXAMPLE_CHARS] for text in found[:GAP_EXAMPLES]]))  # fmt: skip
    return sorted(clusters, key=lambda c: -c.questions)


def _by_closeness(vectors: np.ndarray, members: np.ndarray) -> np.ndarray:
    """A cluster's members, the one nearest its centre (cosine) first."""
    x = vectors[members] / np.maximum(np.linalg.norm(vectors[members], axis=1, keepdims=True), 1e-12)
    return members[np.argsort(-(x @ x.mean(axis=0)), kind="stable")]
