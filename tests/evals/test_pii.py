"""Detection quality of the PII filter on the project's labelled set (real Presidio and spaCy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import PiiSettings, load_config
from core.errors import EvalInputError
from core.pii import get_pii_engine
from evals.pii import PATTERN_TYPES, load_pii_set, score_detection

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def policy() -> PiiSettings:
    """The default configuration's policy, with LOCATION on so that every labelled type is scored."""
    pii = load_config("default", REPO / "configs").config.pii
    return pii.model_copy(update={"entities": {**pii.entities, "LOCATION": "redact"}})


def test_detection_quality_on_the_labelled_set(policy: PiiSettings) -> None:
    texts = load_pii_set(REPO / "evals" / "datasets" / "pii.jsonl")
    assert len(texts) >= 100 and sum(not t.entities for t in texts) >= 20
    score = score_detection(get_pii_engine(), policy, texts)
    per_type = score.per_type
    custom = {"EMPLOYEE_ID", "SECRET"}  # the default configuration's own recognizers
    assert PATTERN_TYPES | custom | {"PERSON", "LOCATION"} <= set(per_type)
    for entity_type in PATTERN_TYPES | custom:
        assert per_type[entity_type].recall >= 0.95, (entity_type, per_type[entity_type])
    assert per_type["PERSON"].recall >= 0.80
    assert score.total().precision >= 0.90


def test_mislabelled_offsets_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pii.jsonl"
    path.write_text(
        '{"id": "a", "text": "Mail ana@example.org", "entities": [{"type": "EMAIL_ADDRESS", '
        '"value": "ana@example.org", "start": 0, "end": 4}]}\n'
    )
    with pytest.raises(EvalInputError, match=r"pii\.jsonl:1: offsets of EMAIL_ADDRESS"):
        load_pii_set(path)


def test_the_held_out_set_is_separate_and_well_formed() -> None:
    """At least 60 texts, every labelled type present, no text shared with the development set."""
    held_out = load_pii_set(REPO / "evals" / "datasets" / "pii_heldout.jsonl")
    development = load_pii_set(REPO / "evals" / "datasets" / "pii.jsonl")
    assert len(held_out) >= 60 and sum(not t.entities for t in held_out) >= 10
    assert {t.text for t in held_out}.isdisjoint(t.text for t in development)
    assert {e.type for t in development for e in t.entities} <= {e.type for t in held_out for e in t.entities}
