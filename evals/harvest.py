"""``ragops eval harvest``: eval-set rows proposed from live traffic, reviewed by a person, then appended.

Sources of candidates: negative ratings (``POST /v1/feedback``) whose answer has a transcript (the
question is the PII-filtered one the transcript store kept; without transcripts a rating has no
question, so it is only counted), with the documents the user marked right as the gold sources.
Other producers (e.g. online evaluation's low-support answers) hand :class:`Candidate` rows to
:func:`harvest` through ``extra``.

Candidates already in the eval set (same normalized text, or a near-duplicate by embedding cosine)
or proposed twice are dropped. What is left goes to a review file, one JSON object a line:
``{"accept": false, "row": {...eval row...}, "evidence": {...}}``. A person writes each ``reference``,
sets ``accept`` to true and runs ``ragops eval harvest --accept FILE``: accepted rows are checked as
eval rows and appended. The dataset's sha256 then changes, so the gate refuses the old baseline until
it is regenerated, deliberately, in a reviewed change.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg.rows import dict_row
from pydantic import ValidationError

from core.embedding import Embedder
from core.errors import EvalInputError
from evals.dataset import EvalQuestion, EvalSet, load_dataset

NEAR_DUPLICATE_COSINE = 0.92  # MiniLM: rephrasings of one question score above, different questions below
_WORDS = re.compile(r"[^\w<>]+")


@dataclass(frozen=True)
class Candidate:
    """A proposed eval row: a (filtered) question, its gold sources as the eval set names them, and why."""

    question: str
    sources: list[str]
    evidence: dict[str, Any]
    kind: str = "answerable"

    @property
    def row_id(self) -> str:
        """A stable id: the same question proposed twice gets the same id."""
        return "h-" + hashlib.sha256(normalized(self.question).encode()).hexdigest()[:10]


@dataclass
class HarvestResult:
    """What a harvest proposed and what it left out (with counts, never text)."""

    proposed: list[Candidate] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)  # {request_id, duplicate_of, how}
    negative_ratings: int = 0
    without_transcript: int = 0  # negative ratings whose question was not kept (transcripts off or expired)
    unknown_sources: int = 0  # marked-right documents since deleted


def normalized(text: str) -> str:
    """Case, accents, punctuation and spacing folded: the text-equality test for duplicates."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().casefold()
    return " ".join(_WORDS.sub(" ", folded).split())


def negative_feedback(conn: psycopg.Connection, collection: str, since: datetime) -> list[dict[str, Any]]:
    """Negative ratings of a collection since ``since``, with the transcript (if kept) and the gold documents."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT f.request_id, f.scale, f.rating, f.reason, f.text AS comment, f.updated_at,
                      l.config_version, l.prompt_version, l.index_version, l.model,
                      t.question, t.answer, t.citations,
                      coalesce((SELECT array_agg(d.source ORDER BY d.source) FROM documents d
                                WHERE d.id = ANY(f.sources) AND d.collection = f.collection), '{}') AS gold,
                      cardinality(f.sources) AS marked
               FROM feedback f
               JOIN ledger l ON l.request_id = f.request_id
               LEFT JOIN transcripts t ON t.request_id = f.request_id
               WHERE f.collection = %s AND f.negative AND f.updated_at >= %s
               ORDER BY f.updated_at, f.id""",
            (collection, since),
        ).fetchall()


def feedback_candidates(rows: Iterable[dict[str, Any]], result: HarvestResult) -> list[Candidate]:
    """Candidates from negative ratings that kept a question; the others are counted in ``result``."""
    candidates = []
    for row in rows:
        result.negative_ratings += 1
        if row["question"] is None:
            result.without_transcript += 1
            continue
        gold = list(row["gold"])
        result.unknown_sources += row["marked"] - len(gold)
        kind = "unanswerable" if not gold and row["reason"] == "not_in_documents" else "answerable"
        evidence = {
            "request_id": row["request_id"], "rating": row["rating"], "scale": row["scale"], "reason": row["reason"],
            "comment": row["comment"], "rated_at": row["updated_at"].isoformat(), "answer": row["answer"],
            "cited": [{k: c.get(k) for k in ("n", "document_id", "source", "score")} for c in row["citations"]],
            "versions": {"config": row["config_version"], "prompt": row["prompt_version"],
                         "index": row["index_version"], "model": row["model"]},
        }  # fmt: skip
        candidates.append(Candidate(question=row["question"], sources=gold, evidence=evidence, kind=kind))
    return candidates


def deduplicate(
    candidates: Sequence[Candidate], dataset: EvalSet, embedder: Embedder | None, result: HarvestResult
) -> list[Candidate]:
    """Candidates not already in ``dataset`` nor proposed before them: same normalized text, or cosine above
    :data:`NEAR_DUPLICATE_COSINE` when an embedder is given."""
    known = {normalized(q.question): q.id for q in dataset.questions}
    kept: list[Candidate] = []
    for candidate in candidates:
        text = normalized(candidate.question)
        match = known.get(text) or next((c.row_id for c in kept if normalized(c.question) == text), None)
        if match is not None:
            result.duplicates.append({**_who(candidate), "duplicate_of": match, "how": "same text"})
        else:
            kept.append(candidate)
    if embedder is None or not kept:
        return kept
    existing = [q.question for q in dataset.questions]
    vectors = _unit(embedder.embed_batch(existing + [c.question for c in kept]))
    ids = [q.id for q in dataset.questions]
    final: list[Candidate] = []
    chosen: list[int] = []  # rows of ``vectors`` already kept
    for i, candidate in enumerate(kept):
        v = vectors[len(existing) + i]
        best, best_id = -1.0, ""
        if existing:
            sims = vectors[: len(existing)] @ v
            j = int(np.argmax(sims))
            best, best_id = float(sims[j]), ids[j]
        for row in chosen:
            sim = float(vectors[row] @ v)
            if sim > best:
                best, best_id = sim, final[chosen.index(row)].row_id
        if best >= NEAR_DUPLICATE_COSINE:
            result.duplicates.append({**_who(candidate), "duplicate_of": best_id, "how": f"cosine {best:.3f}"})
            continue
        chosen.append(len(existing) + i)
        final.append(candidate)
    return final


def _who(candidate: Candidate) -> dict[str, Any]:
    return {"request_id": candidate.evidence.get("request_id"), "id": candidate.row_id}


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-12))


def harvest(
    conn: psycopg.Connection,
    collection: str,
    since: datetime,
    dataset: EvalSet,
    *,
    embedder: Embedder | None = None,
    extra: Iterable[Candidate] = (),
) -> HarvestResult:
    """Propose eval rows from a collection's negative feedback since ``since`` (plus ``extra`` candidates)."""
    result = HarvestResult()
    candidates = feedback_candidates(negative_feedback(conn, collection, since), result) + list(extra)
    result.proposed = deduplicate(candidates, dataset, embedder, result)
    return result


def review_lines(result: HarvestResult) -> list[str]:
    """The review file: one entry per proposed row, not accepted until a person says so."""
    lines = []
    for c in result.proposed:
        row = {"id": c.row_id, "question": c.question, "reference": "", "sources": c.sources, "kind": c.kind}
        entry = {"accept": False, "row": row, "evidence": c.evidence}
        lines.append(json.dumps(entry, ensure_ascii=False, default=str))
    return lines


def accepted_rows(review: Path) -> tuple[list[EvalQuestion], int]:
    """The rows marked ``"accept": true``, each checked as an eval row; and how many were not accepted."""
    if not review.is_file():
        raise EvalInputError(f"review file {review} does not exist")
    rows: list[EvalQuestion] = []
    skipped = 0
    for number, line in enumerate(review.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalInputError(f"{review}:{number}: invalid JSON ({exc.msg})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("row"), dict):
            raise EvalInputError(f'{review}:{number}: expected {{"accept": ..., "row": {{...}}}}')
        if entry.get("accept") is not True:
            skipped += 1
            continue
        try:
            rows.append(EvalQuestion.model_validate(entry["row"]))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "row"
            hint = " (write the reference answer before accepting)" if where == "reference" else ""
            raise EvalInputError(f"{review}:{number}: {where}: {first['msg']}{hint}") from None
    return rows, skipped


def accept(review: Path, dataset_path: Path) -> tuple[EvalSet, EvalSet, int]:
    """Append the accepted rows of ``review`` to the dataset; (before, after, rows not accepted).

    Nothing is written unless every accepted row is valid and its id new to the dataset.
    """
    before = load_dataset(dataset_path)
    rows, skipped = accepted_rows(review)
    if not rows:
        raise EvalInputError(f'{review}: no row is marked "accept": true; nothing appended')
    taken = {q.id for q in before.questions}
    for row in rows:
        if row.id in taken:
            raise EvalInputError(f"{review}: id {row.id!r} is already in {dataset_path.name}; nothing appended")
        taken.add(row.id)
    raw = dataset_path.read_bytes()
    lines = [json.dumps(r.model_dump(exclude_defaults=True), ensure_ascii=False) for r in rows]
    separator = b"" if raw.endswith(b"\n") or not raw else b"\n"
    dataset_path.write_bytes(raw + separator + ("\n".join(lines) + "\n").encode())
    return before, load_dataset(dataset_path), skipped
