"""The extractive generator on hand-made passages with the real embedder."""

from __future__ import annotations

import pytest

from app.generators.base import NOT_FOUND_ANSWER, GenerationRequest, Passage
from app.generators.extractive import ExtractiveGenerator, word_weights
from app.search_sql import ChunkHit
from core.config import ExtractiveSettings
from core.embedding import Embedder
from tests.utils.generation import generate

PASSAGES = [
    "Kestrel Freight was founded in 2009 in Port Aldane. Kestrel Freight employs 640 people in four offices.",
    "Kestrel Freight offers two medical plans. Kestrel Freight pays 90% of the premium for employees.",
    "The Millbrook office of Kestrel Freight opens at 08:00. Kestrel Freight visitors sign in at the front desk.",
]


def request(question: str) -> GenerationRequest:
    hits = [ChunkHit(i, i, f"doc{i}.md", "", "", text, 0, 1.0) for i, text in enumerate(PASSAGES)]
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
