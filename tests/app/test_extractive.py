"""The extractive generator on hand-made passages with the real embedder."""

from __future__ import annotations

import dataclasses

import numpy as np
import psycopg
import pytest

from app.generators.base import NOT_FOUND_ANSWER, GenerationRequest, Passage, RareTerms
from app.generators.extractive import ExtractiveGenerator, lexemes, passage_candidates, word_weights
from app.search_sql import ChunkHit
from core.config import ExtractiveSettings
from core.embedding import Embedder
from ingest.sentences import sentence_spans
from tests.utils.generation import generate

PASSAGES = [
    "Kestrel Freight was founded in 2009 in Port Aldane. Kestrel Freight employs 640 people in four offices.",
    "Kestrel Freight offers two medical plans. Kestrel Freight pays 90% of the premium for employees.",
    "The Millbrook office of Kestrel Freight opens at 08:00. Kestrel Freight visitors sign in at the front desk.",
]


def request(question: str, passages: list[str] = PASSAGES) -> GenerationRequest:
    hits = [ChunkHit(i, i, f"doc{i}.md", "", "", text, 0, 1.0) for i, text in enumerate(passages)]
    return GenerationRequest(question, [], [Passage(i + 1, h) for i, h in enumerate(hits)], "extractive", 64)


def test_a_word_in_every_sentence_weighs_less_than_a_rare_one() -> None:
    sentences = [{"kestrel", "founded"}, {"kestrel", "plan"}, {"kestrel", "office"}]
    weights = word_weights({"kestrel", "plan", "revenue"}, sentences)
    assert weights["kestrel"] < weights["plan"] < weights["revenue"]
    assert min(weights.values()) > 0


@pytest.mark.parametrize(
    ("question", "answered"),
    [
        ("How much of the medical premium does Kestrel Freight pay?", True),
        ("When does the Millbrook office open?", True),
        ("What is the Wi-Fi password of Kestrel Freight visitors?", False),  # plain overlap answered it,
    ],
)
def test_answers_from_the_passages_and_refuses_what_they_do_not_say(
    embedder: Embedder, question: str, answered: bool
) -> None:
    generator = ExtractiveGenerator(embedder, ExtractiveSettings())
    text, _ = generate(generator, request(question))
    assert (text != NOT_FOUND_ANSWER) is answered, text


PTO_CHUNK = """Allowance by tenure

Your yearly PTO allowance depends on how long you have worked at Kestrel Freight:

- **Year 1** (your first 12 months): 15 days
- **Years 2 through 4**: 18 days
- **Year 5 onward**: 22 days

The new allowance starts on the first pay period after your work anniversary.

Accrual

New hires may take up to 3 days of PTO before they have accrued it (a negative balance).

Up to 5 unused PTO days carry over into the next calendar year."""

OFFICES_CHUNK = """Overview
Office | Address | Desks
Port Aldane | 412 Harbor Row | 260
Millbrook | 18 Foundry Lane | 180
Every office is open to every employee."""


def test_list_items_are_read_with_their_lead_in_and_headings_are_not_quoted() -> None:
    candidates = passage_candidates(PTO_CHUNK, 1, "Paid Time Off (PTO) Policy > Annual PTO allowance")
    quotes = [c.quote for c in candidates]
    assert "Allowance by tenure" not in quotes and "Accrual" not in quotes
    assert not any(q.endswith(":") for q in quotes)  # the lead-in is context, not an answer
    year_one = next(c for c in candidates if c.quote == "Year 1 (your first 12 months): 15 days")
    assert year_one.scored.startswith("Your yearly PTO allowance depends on")
    prose = next(c for c in candidates if c.quote.startswith("New hires may take"))
    assert prose.scored == prose.quote


def test_table_rows_are_read_with_their_header_row() -> None:
    candidates = passage_candidates(OFFICES_CHUNK, 2)
    quotes = [c.quote for c in candidates]
    assert "Office: Millbrook; Address: 18 Foundry Lane; Desks: 180" in quotes
    assert not any(q.startswith("Office | Address") or q.startswith("Office: Office") for q in quotes)
    assert "Every office is open to every employee." in quotes


def test_a_short_list_item_is_quoted_with_its_lead_in() -> None:
    text = (
        "A failed delivery is retried up to 8 times. The delays after each failed attempt"
        " are:\n1. 1 minute\n2. 5 minutes"
    )
    quotes = [c.quote for c in passage_candidates(text, 1)]
    assert quotes == [
        "A failed delivery is retried up to 8 times.",
        "The delays after each failed attempt are: 1 minute",
        "The delays after each failed attempt are: 5 minutes",
    ]


def test_a_bullet_under_its_heading_answers_the_question_it_belongs_to(embedder: Embedder) -> None:
    """The README's first example: the first-year bullet is quoted whole, without its list marker or emphasis."""
    section = "Paid Time Off (PTO) Policy > Annual PTO allowance"
    hit = ChunkHit(1, 1, "handbook/pto.md", "PTO", section, PTO_CHUNK, 0, 1.0)
    req = GenerationRequest("How many PTO days do new employees get?", [], [Passage(1, hit)], "extractive", 64)
    text, _ = generate(ExtractiveGenerator(embedder, ExtractiveSettings()), req)
    assert "Year 1 (your first 12 months): 15 days [1]" in text, text
    assert "Allowance by tenure" not in text and "depends on how long" not in text, text


def pto_request(embedder: Embedder, stored: np.ndarray | None) -> GenerationRequest:
    section = "Paid Time Off (PTO) Policy > Annual PTO allowance"
    hit = ChunkHit(1, 1, "handbook/pto.md", "PTO", section, PTO_CHUNK, 0, 1.0, sentence_vectors=stored)
    return GenerationRequest("How many PTO days do new employees get?", [], [Passage(1, hit)], "extractive", 64)


def pooled(embedder: Embedder, text: str, section: str = "") -> np.ndarray:
    """The sentence vectors ingest stores for a chunk whose embedded text is ``text`` alone."""
    return embedder.embed_pooled([text], [sentence_spans(text, section)])[1][0]


@pytest.mark.parametrize("rescore", [0, 3, 8])
def test_stored_sentence_vectors_answer_without_embedding_the_sentences(embedder: Embedder, rescore: int) -> None:
    """With every candidate's vector stored, only ``rescore`` candidates are embedded (0: none, only the question)."""
    generator = ExtractiveGenerator(embedder, ExtractiveSettings(rescore=rescore))
    request = pto_request(embedder, pooled(embedder, PTO_CHUNK))
    embedder.embed_query(request.question)  # as retrieval did
    texts = embedder.texts_embedded
    text, _ = generate(generator, request)
    assert embedder.texts_embedded - texts == min(rescore, len(passage_candidates(PTO_CHUNK, 1)))
    assert generator.vectors_stored == len(passage_candidates(PTO_CHUNK, 1)) and generator.vectors_embedded == 0
    # Pooled vectors alone rank the bullet below the accrual sentences; the rescored nearest ones find it.
    assert ("Year 1 (your first 12 months): 15 days [1]" in text) is (rescore > 0), (rescore, text)


def test_stored_vectors_that_do_not_match_the_candidates_are_not_used(embedder: Embedder) -> None:
    """A chunk whose filtered text splits into other candidates than at ingest is scored as if nothing were stored."""
    generator = ExtractiveGenerator(embedder, ExtractiveSettings())
    expected, _ = generate(generator, pto_request(embedder, None))
    count = len(passage_candidates(PTO_CHUNK, 1))
    assert generator.vectors_embedded == count
    mismatched = pooled(embedder, PTO_CHUNK)[:-1]
    text, _ = generate(generator, pto_request(embedder, mismatched))
    assert text == expected and generator.vectors_embedded == 2 * count and generator.vectors_stored == 0


def test_the_benchmark_switch_embeds_every_candidate_as_before(embedder: Embedder) -> None:
    generator = ExtractiveGenerator(embedder, ExtractiveSettings())
    generator.reembed_candidates = True
    assert not generator.reads_sentence_vectors
    request = pto_request(embedder, pooled(embedder, PTO_CHUNK))
    texts = embedder.texts_embedded
    text, _ = generate(generator, request)
    assert embedder.texts_embedded - texts == 1 + len(passage_candidates(PTO_CHUNK, 1))
    assert generator.vectors_stored == 0 and "15 days" in text


@pytest.mark.parametrize(
    "sentence",
    [
        "Kestrel Freight's on-call engineers retained 5.3 releases; the Wi-Fi offices were opened in 2024.",
        "Employees' allowances accrue per pay period, and HOLIDAYS don't carry over: see the runbooks!",
    ],
)
def test_sentences_are_read_with_the_index_stemmer(conn: psycopg.Connection, sentence: str) -> None:
    """The rare-word check compares the question's lexemes from PostgreSQL with the sentence's read here."""
    row = conn.execute("SELECT array_agg(lexeme) FROM unnest(to_tsvector('english', %s))", (sentence,)).fetchone()
    assert row is not None
    assert set(row[0]) <= (lexemes(sentence, "english") or set())
    assert lexemes(sentence, "no_such_config") is None


def test_the_simple_configuration_reads_words_unstemmed() -> None:
    assert lexemes("On-call HOLIDAYS, v5.3", "simple") == {"on-call", "on", "call", "holidays", "v5", "3"}


# A subtitle about the company in general scores well against any question naming the company.
HISTORY = ["A short history of Kestrel Freight, written for new employees.", *PASSAGES]


@pytest.mark.parametrize(
    ("question", "rare", "answered"),
    [
        # The company's name is in every passage: the best sentences match it, not the question.
        ("What is Kestrel Freight's stock ticker symbol?", {"stock", "ticker", "symbol"}, False),
        ("Who is Kestrel Freight's chief technology officer?", {"chief", "technolog"}, False),
        ("How much of the medical premium does Kestrel Freight pay?", {"premium", "medic"}, True),
        ("When does the Millbrook office open?", set(), True),  # nothing rare: the score alone decides
    ],
)
def test_an_answer_must_hold_one_of_the_questions_rare_words(
    embedder: Embedder, question: str, rare: set[str], answered: bool
) -> None:
    generator = ExtractiveGenerator(embedder, ExtractiveSettings())
    assert generator.rare_term_share == 0.2
    plain, _ = generate(generator, request(question, HISTORY))
    assert plain != NOT_FOUND_ANSWER  # without the rare words, every question here is answered
    checked = dataclasses.replace(request(question, HISTORY), rare_terms=RareTerms(frozenset(rare), "english"))
    text, _ = generate(generator, checked)
    assert (text != NOT_FOUND_ANSWER) is answered, text


def test_a_rare_word_in_the_heading_above_the_sentence_counts(embedder: Embedder) -> None:
    generator = ExtractiveGenerator(embedder, ExtractiveSettings())
    base = request("What is Kestrel Freight's stock ticker symbol?", HISTORY)
    hits = [dataclasses.replace(p.hit, section="Investors > Stock") for p in base.passages]
    passages = [Passage(p.n, hit) for p, hit in zip(base.passages, hits, strict=True)]
    asked = dataclasses.replace(base, passages=passages, rare_terms=RareTerms(frozenset({"stock"}), "english"))
    text, _ = generate(generator, asked)
    assert text != NOT_FOUND_ANSWER
