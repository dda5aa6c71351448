"""The PII engine on real Presidio with the bundled spaCy model."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import ValidationError

from core.config import PRESIDIO_ENTITIES, PiiSettings, RagConfig
from core.errors import PiiUnavailable
from core.pii import PiiEngine, PiiSpan, get_pii_engine, mask, policy_spans, resolve_overlaps
from tests.conftest import REPO


@pytest.fixture(scope="session")
def engine() -> PiiEngine:
    return get_pii_engine()


def test_the_known_entity_list_matches_presidio(engine: PiiEngine) -> None:
    """Config validation uses a fixed list; it must be what Presidio actually recognizes in English."""
    from presidio_analyzer import RecognizerRegistry

    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"])
    supported = set(registry.get_supported_entities(languages=["en"]))
    assert supported | {"ORGANIZATION"} >= PRESIDIO_ENTITIES
    assert {"PERSON", "EMAIL_ADDRESS", "US_SSN", "IBAN_CODE"} <= PRESIDIO_ENTITIES


def test_the_spacy_pipeline_is_trimmed_and_computes_through_numpy(engine: PiiEngine) -> None:
    """What the latency budget rests on (bench/pii.py): only tok2vec + NER run, products via OpenBLAS."""
    spacy_nlp = engine._nlp.nlp["en"]  # type: ignore[attr-defined]
    assert spacy_nlp.pipe_names == ["tok2vec", "ner", "ragops_tidy_entities", "ragops_lower_lemma"]
    nodes = [node for _, pipe in spacy_nlp.pipeline if hasattr(pipe, "model") for node in pipe.model.walk()]
    assert nodes and all(node.ops.use_blis is False for node in nodes)
    doc = spacy_nlp("Dana Whitfield flew to Chicago.")
    assert [(e.text, e.label_) for e in doc.ents] == [("Dana Whitfield", "PERSON"), ("Chicago", "GPE")]
    assert [t.lemma_ for t in doc][:2] == ["dana", "whitfield"]


@pytest.mark.parametrize(
    ("text", "persons"),
    [
        # spaCy's small model labels these names ORG; shaped like names, they are reported as PERSON.
        ("Who covers the Scotland region now that Ewan MacLeod left?", ["Ewan MacLeod"]),
        ("The warehouse in Antwerp is looking for a replacement for Pieter de Vries.", ["Pieter de Vries"]),
        # Organizations, teams and the allow list stay out, possessive or not.
        ("Questions about payslips go to People Operations.", []),
        ("Kestrel Freight's fiscal year starts on 1 July.", []),
        ("We moved our parcels from Northwind Logistics to a new carrier.", []),
    ],
)
def test_name_shaped_organizations_are_persons(engine: PiiEngine, text: str, persons: list[str]) -> None:
    policy = PiiSettings(entities={"PERSON": "pseudonymize"}, allow_list=["Kestrel Freight"])
    assert [text[s.start : s.end] for s in engine.analyze(text, policy)] == persons


def test_only_configured_types_are_reported(engine: PiiEngine) -> None:
    text = "Mail ana@example.org or call 312-555-0147."
    only_email = PiiSettings(entities={"EMAIL_ADDRESS": "redact"})
    assert [s.entity_type for s in engine.analyze(text, only_email)] == ["EMAIL_ADDRESS"]


def test_custom_recognizer_and_allow_list(engine: PiiEngine) -> None:
    policy = PiiSettings(
        entities={"EMPLOYEE_ID": "redact", "PERSON": "redact"},
        recognizers=[{"entity": "EMPLOYEE_ID", "patterns": [r"\bKF-\d{6}\b"], "score": 0.8}],
        allow_list=["Kestrel Track"],
    )
    scrubbed = engine.scrub("Badge KF-204871 belongs to Dana Whitfield, who runs Kestrel Track.", policy)
    assert "KF-204871" not in scrubbed.text and "<EMPLOYEE_ID>" in scrubbed.text
    assert "Dana Whitfield" not in scrubbed.text and "Kestrel Track" in scrubbed.text
    assert scrubbed.counts == {"EMPLOYEE_ID": 1, "PERSON": 1}


def test_scrub_masks_and_moves_offsets(engine: PiiEngine) -> None:
    original = "Call 312-555-0147 or mail ana@example.org today."
    policy = PiiSettings(entities={"PHONE_NUMBER": "mask", "EMAIL_ADDRESS": "redact"})
    scrubbed = engine.scrub(original, policy)
    assert scrubbed.text == "Call ********0147 or mail <EMAIL_ADDRESS> today."
    today = original.index("today")
    assert scrubbed.text[scrubbed.moved(today) :] == "today."
    assert mask("abc") == "***"


def test_pattern_matches_beat_overlapping_names() -> None:
    text = "Badge KF-771236 in Rotterdam"
    spans = [
        PiiSpan("PERSON", 6, 15, 0.85),  # spaCy calls the badge number a name
        PiiSpan("EMPLOYEE_ID", 6, 15, 0.85),
        PiiSpan("LOCATION", 19, 28, 0.85),
        PiiSpan("PHONE_NUMBER", 6, 15, 0.4),
    ]
    assert resolve_overlaps(spans, text) == [PiiSpan("EMPLOYEE_ID", 6, 15, 0.85), PiiSpan("LOCATION", 19, 28, 0.85)]


@pytest.mark.parametrize(
    ("failure", "message"),
    [(RuntimeError("spaCy broke"), "failed (RuntimeError)"), ("sleep", "did not answer within 0.05 s")],
)
def test_analyzer_failures_fail_closed(
    engine: PiiEngine, monkeypatch: pytest.MonkeyPatch, failure: object, message: str
) -> None:
    """The analyzer is made to raise or hang (a fault injected into the real engine)."""
    import time

    policy = PiiSettings(timeout_s=0.05)
    analyzer = engine.analyzer(policy)

    def broken(*args: object, **kwargs: object) -> list[object]:
        if failure == "sleep":
            time.sleep(0.5)
            return []
        raise failure  # type: ignore[misc]

    monkeypatch.setattr(analyzer, "analyze", broken)
    with pytest.raises(PiiUnavailable, match=re.escape(message)) as caught:
        engine.analyze("Mail ana@example.org", policy)
    assert "ana@example.org" not in str(caught.value)


@pytest.mark.parametrize(
    ("pii", "message"),
    [
        ({"entities": {"SHOE_SIZE": "redact"}}, "unknown entity type 'SHOE_SIZE'"),
        ({"entities": {"PERSON": "shred"}}, "Input should be 'redact', 'mask', 'pseudonymize' or 'block'"),
        ({"recognizers": [{"entity": "X_ID", "patterns": ["(unclosed"]}]}, "does not compile"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_policies_are_refused(pii: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RagConfig.model_validate({"pii": pii})


def test_ingest_scrub_is_part_of_the_index_identity() -> None:
    plain = RagConfig.model_validate({})
    scrubbed = RagConfig.model_validate({"index": {"scrub_pii": True}})
    stricter = RagConfig.model_validate({"index": {"scrub_pii": True}, "pii": {"entities": {"US_SSN": "redact"}}})
    hashes = {c.index.version_hash() for c in (plain, scrubbed, stricter)}
    assert len(hashes) == 3
    assert "scrub_pii" not in plain.index.identity()  # unchanged for existing index versions
    with pytest.raises(ValidationError, match=r"needs pii\.enabled"):
        RagConfig.model_validate({"index": {"scrub_pii": True}, "pii": {"enabled": False}})


def test_stored_raw_spans_give_what_presidio_filters_directly(engine: PiiEngine) -> None:
    """Analysis at score 0, then threshold and allow-list: the same spans as Presidio applying them itself.

    This is what lets a policy's threshold or allow-list change without analyzing stored text again.
    """
    items = [json.loads(line) for line in (REPO / "evals/datasets/pii.jsonl").open(encoding="utf-8")]
    names = [e["value"] for item in items for e in item["entities"] if e["type"] == "PERSON"][:5]
    policy = PiiSettings(score_threshold=0.6, allow_list=names)
    analyzer = engine.analyzer(policy)
    differing = []
    for item in items:
        text = item["text"]
        direct = analyzer.analyze(
            text, language="en", entities=list(policy.entities), score_threshold=0.6, allow_list=names
        )
        expected = resolve_overlaps((PiiSpan(r.entity_type, r.start, r.end, float(r.score)) for r in direct), text)
        if policy_spans(engine.analyze_raw(text, policy), text, policy) != expected:
            differing.append(item["id"])
    assert names and differing == []


def test_the_analysis_key_ignores_what_is_done_with_the_spans() -> None:
    base = PiiSettings()
    acted = PiiSettings(
        entities={**base.entities, "PERSON": "redact"}, score_threshold=0.7, allow_list=["Varnholm"], timeout_s=9
    )
    assert acted.analysis() == base.analysis() and acted.fingerprint() != base.fingerprint()
    fewer = PiiSettings(entities={"PERSON": "redact"})
    assert fewer.analysis() != base.analysis()  # another set of types is another analysis
