"""The project's evaluation sets: ``evals/datasets/*.jsonl``, one question per line."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import EvalInputError

Kind = Literal["answerable", "unanswerable", "pii"]


class EvalQuestion(BaseModel):
    """One question with its reference answer and the documents that hold it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=100)
    question: str = Field(min_length=1)
    reference: str = Field(min_length=1)
    sources: list[str] = Field(default_factory=list)
    kind: Kind = "answerable"
    pii: list[str] = Field(default_factory=list, description="Raw personal values in the question (never reported).")
    key_fact: str | None = Field(
        default=None,
        min_length=1,
        max_length=80,
        description="A short string a correct answer contains (a number, a date, a name): ragas StringPresence.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> EvalQuestion:
        if self.kind == "unanswerable" and self.sources:
            raise ValueError("an unanswerable question has no sources")
        if self.kind != "unanswerable" and not self.sources:
            raise ValueError("an answerable question needs at least one source")
        if self.kind == "pii" and not self.pii:
            raise ValueError("a pii question lists its personal values in 'pii'")
        if self.kind == "unanswerable" and self.key_fact:
            raise ValueError("an unanswerable question has no key_fact")
        if self.key_fact and self.key_fact not in self.reference:
            raise ValueError("key_fact must appear in the reference answer")
        return self

    def redacted(self, text: str) -> str:
        """``text`` with this question's personal values replaced, for reports."""
        for value in sorted(self.pii, key=len, reverse=True):
            text = text.replace(value, "<PII>")
        return text


@dataclass(frozen=True)
class EvalSet:
    """A loaded dataset and its identity (so a baseline from another dataset is refused)."""

    name: str
    sha256: str
    questions: list[EvalQuestion]


def load_dataset(path: Path) -> EvalSet:
    """Parse and validate every line; the first bad one raises :class:`EvalInputError` naming it."""
    if not path.is_file():
        raise EvalInputError(f"dataset {path} does not exist")
    raw = path.read_bytes()
    questions: list[EvalQuestion] = []
    seen: set[str] = set()
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            question = EvalQuestion.model_validate(json.loads(line))
        except json.JSONDecodeError as exc:
            raise EvalInputError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "line"
            raise EvalInputError(f"{path}:{number}: {where}: {first['msg']}") from None
        if question.id in seen:
            raise EvalInputError(f"{path}:{number}: duplicate id {question.id!r}")
        seen.add(question.id)
        questions.append(question)
    if not questions:
        raise EvalInputError(f"dataset {path} has no questions")
    return EvalSet(name=path.name, sha256=hashlib.sha256(raw).hexdigest(), questions=questions)
