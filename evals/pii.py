"""Detection quality of the PII filter on a labelled set: recall and precision per entity type.

``evals/datasets/pii.jsonl`` holds texts written for this project with made-up values in valid
formats (Presidio rejects famous sample numbers), each with its gold entities. A gold entity
counts as found when a detected span of the same type overlaps it; a detected span that
overlaps no gold entity of its type is a false positive. Reports carry types and counts, never
the texts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.config import PiiSettings
from core.errors import EvalInputError
from core.pii import PiiEngine

# Found by fixed formats and checksums; held to a higher recall than names and places.
PATTERN_TYPES = frozenset({"EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE", "IP_ADDRESS"})


class GoldEntity(BaseModel):
    """One labelled entity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    value: str
    start: int = Field(ge=0)
    end: int = Field(gt=0)


class PiiText(BaseModel):
    """One labelled text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    text: str
    entities: list[GoldEntity] = Field(default_factory=list)


def load_pii_set(path: Path) -> list[PiiText]:
    """Parse the set; offsets must point at the values they claim."""
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = PiiText.model_validate(json.loads(line))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise EvalInputError(f"{path}:{number}: {exc}") from None
        for entity in item.entities:
            if item.text[entity.start : entity.end] != entity.value:
                raise EvalInputError(f"{path}:{number}: offsets of {entity.type} do not match its value")
        texts.append(item)
    return texts


@dataclass
class TypeScore:
    """Counts for one entity type."""

    true_positives: int = 0
    false_negatives: int = 0
    false_positives: int = 0

    @property
    def recall(self) -> float:
        found = self.true_positives + self.false_negatives
        return self.true_positives / found if found else 1.0

    @property
    def precision(self) -> float:
        flagged = self.true_positives + self.false_positives
        return self.true_positives / flagged if flagged else 1.0


@dataclass
class PiiScore:
    """Per-type and overall detection quality."""

    per_type: dict[str, TypeScore] = field(default_factory=dict)
    texts: int = 0

    def total(self) -> TypeScore:
        """All types pooled."""
        return TypeScore(
            sum(s.true_positives for s in self.per_type.values()),
            sum(s.false_negatives for s in self.per_type.values()),
            sum(s.false_positives for s in self.per_type.values()),
        )

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: counts and rates, no text."""
        total = self.total()
        return {
            "texts": self.texts,
            "precision": round(total.precision, 4),
            "recall": round(total.recall, 4),
            "per_type": {
                t: {
                    "tp": s.true_positives,
                    "fn": s.false_negatives,
                    "fp": s.false_positives,
                    "recall": round(s.recall, 4),
                    "precision": round(s.precision, 4),
                }
                for t, s in sorted(self.per_type.items())
            },
        }


def score_detection(engine: PiiEngine, policy: PiiSettings, texts: list[PiiText]) -> PiiScore:
    """Run the engine with ``policy`` over every text and count hits, misses and false alarms."""
    score = PiiScore(texts=len(texts))
    wanted = set(policy.entities)
    for item in texts:
        spans = engine.analyze(item.text, policy)
        gold = [g for g in item.entities if g.type in wanted]
        for g in gold:
            s = score.per_type.setdefault(g.type, TypeScore())
            if any(sp.entity_type == g.type and sp.start < g.end and g.start < sp.end for sp in spans):
                s.true_positives += 1
            else:
                s.false_negatives += 1
        for sp in spans:
            if not any(sp.entity_type == g.type and sp.start < g.end and g.start < sp.end for g in gold):
                score.per_type.setdefault(sp.entity_type, TypeScore()).false_positives += 1
    return score
