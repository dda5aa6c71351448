"""Stored PII spans and the names a collection learns from them, on a real database.

Learning is tested with spans written by hand: what the small NER model tags varies with the
model, and the rule under test is what happens given the tags.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from core.config import PiiSettings
from core.embedding import Embedder
from core.pii import PiiSpan
from ingest import pii_spans
from ingest.pipeline import IngestPipeline
from tests.ingest.test_pipeline import make_config

# "Zorbex" is a product that the model called a person twice in six mentions; Marisol is a person,
# tagged every time she is mentioned, in as many documents.
DOCS = {
    f"note{i}.md": f"# Note {i}\n\nZorbex ships the weekly report. Ask Marisol about the Zorbex export.\n"
    for i in range(3)
}
POLICY = PiiSettings(analyze_at_ingest=False)


def tagged(text: str, words: dict[str, int]) -> list[PiiSpan]:
    """PERSON spans over the first ``n`` mentions of each word."""
    spans = []
    for word, n in words.items():
        spans += [PiiSpan("PERSON", m.start(), m.end(), 0.85) for m in list(re.finditer(word, text))[:n]]
    return spans


@pytest.fixture
def ingested(conn: psycopg.Connection, embedder: Embedder, tmp_path: Path) -> IngestPipeline:
    for name, text in DOCS.items():
        (tmp_path / name).write_text(text)
    config = make_config()
    config = config.model_copy(update={"config": config.config.model_copy(update={"pii": POLICY})})
    pipeline = IngestPipeline(conn, config, embedder)
    report = pipeline.run(tmp_path)
    assert report.pii_analyzed == 0 and report.pii_learned == 0  # analysis at ingest is off here
    return pipeline


def test_spans_round_trip_by_text_and_analysis(conn: psycopg.Connection) -> None:
    spans = [PiiSpan("PERSON", 4, 11, 0.85), PiiSpan("US_SSN", 20, 31, 0.3)]
    pii_spans.store(conn, "a1", {"Ask Marisol about 609-52-1378": spans})
    pii_spans.store(conn, "a1", {"Ask Marisol about 609-52-1378": []})  # the first analysis stays
    assert pii_spans.load(conn, "a1", ["Ask Marisol about 609-52-1378", "other"]) == {
        "Ask Marisol about 609-52-1378": spans
    }
    assert pii_spans.load(conn, "another analysis", ["Ask Marisol about 609-52-1378"]) == {}
    stored = conn.execute("SELECT spans::text FROM pii_spans").fetchone()
    assert stored is not None and "Marisol" not in stored[0]  # offsets and types only


@pytest.mark.parametrize(
    ("policy", "learned"),
    [(POLICY, ["Zorbex"]), (POLICY.model_copy(update={"never_allow": ["Zorbex"]}), [])],
    ids=["learned", "vetoed"],
)
def test_a_collection_learns_its_own_names_not_its_people(
    conn: psycopg.Connection, ingested: IngestPipeline, policy: PiiSettings, learned: list[str]
) -> None:
    version = ingested.index_version()
    texts = [row[0] for row in conn.execute(f"SELECT text FROM {version.table.as_string(conn)}")]
    pii_spans.store(
        conn,
        policy.analysis(),
        {t: tagged(t, {"Zorbex": 1 if i < 2 else 0, "Marisol": 9}) for i, t in enumerate(texts)},
    )
    terms = pii_spans.learn_terms(conn, version, "default", policy)
    assert [t.term for t in terms] == learned
    if learned:
        assert (terms[0].occurrences, terms[0].documents, terms[0].tagged_person) == (6, 3, 2)
    pii_spans.store_terms(conn, "default", policy.analysis(), terms)
    assert pii_spans.load_terms(conn, "default", policy.analysis()) == terms
