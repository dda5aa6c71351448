"""The quotable units of a chunk and where they lie in its text (what ingest pools sentence vectors over)."""

from __future__ import annotations

import re

import pytest

from ingest.sentences import passage_candidates, sentence_spans

CHUNK = """Allowance by tenure

Your yearly PTO allowance depends on how long you have worked at **Kestrel Freight**:

- **Year 1** (your first 12 months): 15 days
- Years 2 through 4: 18 days

Office | Owner | Desks
---|---|---
Port Aldane | Maria Jensen | 260

Ask Maria Jensen about desks. Tom Berg approves PTO. `Overtime` is paid monthly."""


def test_every_candidate_spans_its_own_line_and_then_its_context() -> None:
    """The first span holds the quote (emphasis aside); list items add their lead-in, table rows their header."""
    candidates = passage_candidates(CHUNK, 1)
    assert [c.quote for c in candidates] == [
        "Year 1 (your first 12 months): 15 days",
        "Years 2 through 4: 18 days",
        "Office: Port Aldane; Owner: Maria Jensen; Desks: 260",
        "Ask Maria Jensen about desks.",
        "Tom Berg approves PTO.",
        "Overtime is paid monthly.",
    ]
    read = [[re.sub(r"\*\*|`", "", CHUNK[a:b]) for a, b in c.spans] for c in candidates]
    assert read[0] == ["- Year 1 (your first 12 months): 15 days", candidates[0].scored.split(" Year 1")[0]]
    assert read[2] == ["Port Aldane | Maria Jensen | 260", "Office | Owner | Desks", "Allowance by tenure"]
    assert read[3:] == [["Ask Maria Jensen about desks."], ["Tom Berg approves PTO."], ["Overtime is paid monthly."]]


def test_spans_move_with_the_offset_of_the_passage_in_the_embedded_text() -> None:
    head = "PTO policy > Allowance\n"
    shifted = sentence_spans(CHUNK, "", len(head))
    assert [[(a - len(head), b - len(head)) for a, b in spans] for spans in shifted] == [
        list(c.spans) for c in passage_candidates(CHUNK, 1)
    ]


@pytest.mark.parametrize("placeholder", ["<PERSON_1>", "<PERSON>", "<EMAIL_ADDRESS>"])
def test_a_pii_placeholder_leaves_the_candidates_as_they_were(placeholder: str) -> None:
    """Answers split the PII-filtered chunk and take the stored vectors by ordinal: the units must not move.

    The placeholders are written in here the way the PII filter writes them (tests/app/test_pii_documents.py
    runs the real filter); a sentence starting with one is still a sentence of its own.
    """
    filtered = CHUNK.replace("Maria Jensen", placeholder).replace("Tom Berg", placeholder)
    before, after = passage_candidates(CHUNK, 1), passage_candidates(filtered, 1)
    assert len(after) == len(before)
    assert after[-2].quote == f"{placeholder} approves PTO."


def test_a_short_line_with_a_sentence_end_stays_prose_after_a_name_becomes_one_placeholder() -> None:
    """Eleven words raw, ten filtered: without the sentence-end rule the filtered line read as a heading."""
    raw = "Payroll escalations go to Marisol Quintero-Hale (SSN 609-52-1378). Write to marisol.q@example.net"
    filtered = "Payroll escalations go to <PERSON_1> (SSN <US_SSN>). Write to <EMAIL_ADDRESS>"
    assert len(filtered.split()) == 10
    assert [c.quote for c in passage_candidates(filtered, 1)] == [
        "Payroll escalations go to <PERSON_1> (SSN <US_SSN>).",
        "Write to <EMAIL_ADDRESS>",
    ]
    assert len(passage_candidates(raw, 1)) == 2
