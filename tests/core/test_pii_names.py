"""What the PII engine reads as a person in document text: real Presidio, the bundled spaCy model.

Each case is a false positive the small model made on the bundled samples (or on an extractive
answer quoting them), paired with a real name in the same position, which must still be found.
"""

from __future__ import annotations

import pytest

from core.config import load_config
from core.pii import PiiEngine, get_pii_engine
from tests.conftest import REPO

POLICY = load_config("default", REPO / "configs").config.pii
NAME = "Marisol Quintero-Hale"

# (text with a word the model called a person, that word; the same text with a name in its place)
CASES = {
    "street after a house number": (
        "Office: Millbrook; Address: 18 Foundry Lane; Desks: 180",
        "Foundry Lane",
        f"Office: Millbrook; Contact: {NAME}; Desks: 180",
    ),
    "unit of an address": (
        "Easton Quay | 77 Pier Street, Suite 900 | Sales | 90",
        "Suite",
        f"Easton Quay | 77 Pier Street, {NAME} | Sales | 90",
    ),
    "table cell under a column of things": (
        "Plans\nPlan | Monthly price | Support channels\nStarter | $149 | Email\nGrowth | $899 | Email and chat",
        "Email",
        f"Plans\nPlan | Monthly price | Account manager\nStarter | $149 | {NAME}\nGrowth | $899 | {NAME}",
    ),
    "value after a label of a thing": (
        "Plan: Growth; User seats: 25; Support channels: Email and chat",
        "Email",
        f"Plan: Growth; User seats: 25; Account manager: {NAME}",
    ),
    "code in backticks": (
        "Events now include an `exception_code` field, such as `ADDRESS_ISSUE` or `CUSTOMS_HOLD`.",
        "CUSTOMS_HOLD",
        f"Events now include an `exception_code` field, such as `ADDRESS_ISSUE`, written by {NAME}.",
    ),
    "tool after 'in'": (
        "Flags are managed in Toggler by the release team.",
        "Toggler",
        f"Flags are managed by {NAME} and the release team.",
    ),
    "a place after 'the'": (
        "Guests may not enter the Eyrie during an active incident.",
        "Eyrie",
        f"Guests may not visit {NAME} during an active incident.",
    ),
    "a team": (
        "Teams that must stay staffed, such as on-call engineers and Customer Support, take it later.",
        "Customer Support",
        f"Teams that must stay staffed, such as on-call engineers and {NAME}, take it later.",
    ),
    "an acronym": (
        "Incident commander (IC): coordinates the response. The IC does not debug.",
        "IC",
        f"Incident commander ({NAME}): coordinates the response. {NAME} does not debug.",
    ),
    "a shouted heading": (
        "KESTREL FREIGHT - EXPENSES AND PER DIEM POLICY\nVersion 3.2, last updated 1 March.",
        "KESTREL FREIGHT",
        f"KESTREL FREIGHT - EXPENSES AND PER DIEM POLICY\nVersion 3.2, last updated by {NAME}.",
    ),
    "a heading above a sentence": (
        "the Control Tower dashboard.\nVarnholm\nVarnholm was our first office outside the United States.",
        "Varnholm",
        f"the Control Tower dashboard.\nVarnholm\n{NAME} opened our first office outside the United States.",
    ),
    "a common noun starting a sentence": (
        "The April drill completed a full restore. Drill results are recorded in the reliability review.",
        "Drill",
        f"The April drill completed a full restore. {NAME} recorded it in the reliability review.",
    ),
    "a heading after a sign-off word": (
        "24/7 phone and chat, with a named customer success manager\nDiscounts\nAnnual billing: 15% off.",
        "Discounts",
        f"24/7 phone and chat, with a named customer success manager\n{NAME}\nAnnual billing: 15% off.",
    ),
}


@pytest.fixture(scope="module")
def engine() -> PiiEngine:
    return get_pii_engine()


def persons(engine: PiiEngine, text: str) -> list[str]:
    return [text[s.start : s.end] for s in engine.analyze(text, POLICY) if s.entity_type == "PERSON"]


@pytest.mark.parametrize("case", list(CASES))
def test_words_of_documents_are_not_persons_and_names_in_their_place_are(engine: PiiEngine, case: str) -> None:
    text, word, with_name = CASES[case]
    found = persons(engine, text)
    assert not any(word in f or f in word for f in found), found
    assert NAME in persons(engine, with_name)


def test_the_learned_and_listed_names_still_apply_to_each_line() -> None:
    """A span across a line break is cut into its lines; each meets the allow list on its own."""
    text = "Varnholm\nVarnholm was our first office outside the United States."
    assert persons(get_pii_engine(), text) == []
    assert persons(get_pii_engine(), text.replace("Varnholm\nVarnholm", f"Varnholm\n{NAME}")) == [NAME]


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("My name is Ana and I live at 1187 Linden Terrace, Port Aldane. What is my budget?",
         "1187 Linden Terrace, Port Aldane"),
        ("Please ship it to 42 Orchard Row, Apt 3B, Easton Quay.", "42 Orchard Row, Apt 3B, Easton Quay"),
        ("Hi, my home address is 7 Mill Street", "7 Mill Street"),
        ("Address: 18 Foundry Lane, Millbrook", None),  # a document's office address is no one's home
        ("We moved to 3 shifts in 2020.", None),
    ],
)  # fmt: skip
def test_an_address_given_as_ones_own_is_found_and_an_office_address_is_not(
    engine: PiiEngine, text: str, address: str | None
) -> None:
    """Street words after a house number are no person (see above); the address itself is HOME_ADDRESS after a cue."""
    found = [text[s.start : s.end] for s in engine.analyze(text, POLICY) if s.entity_type == "HOME_ADDRESS"]
    assert found == ([address] if address else [])
