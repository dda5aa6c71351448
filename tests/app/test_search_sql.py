"""BM25 keyword search: its scores, its pruning, and the statistics it reads, over real PostgreSQL."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from app import search_sql
from app.search_sql import Bm25
from core.embedding import Embedder
from ingest import documents, versions
from ingest.pipeline import IngestPipeline, IngestReport
from ingest.versions import IndexVersion
from tests.ingest.test_pipeline import make_config
from tests.utils.corpus import write_corpus

TEAM_DOCS = {
    "a.md": "# Printers\n\nThe printer on floor two jams. Printer toner is ordered by facilities on Mondays.\n",
    "b.md": "# Coffee\n\nThe coffee machine is descaled on Fridays. Coffee beans come from a local roaster.\n",
    "c.md": "# Printers and coffee\n\nNeither the printer nor the coffee machine may be moved without facilities.\n",
    "d.txt": "Facilities handles keys, badges, parking permits and the loading dock schedule.\n",
    "e.txt": "Badges that are lost must be reported within one day; parking permits renew yearly.\n",
}
QUESTIONS = [
    "printer toner",
    "who descales the coffee machine",
    "lost badges and parking",
    "facilities",
    '"coffee machine" -printer',
    "keys badges parking permits loading dock schedule facilities printer coffee",
]


def tokens(conn: psycopg.Connection, version: IndexVersion, collection: str) -> dict[int, list[tuple[str, bool]]]:
    """Each chunk's tokens as the index holds them: (lexeme, in the title or headings) per position."""
    rows = conn.execute(
        sql.SQL(
            "SELECT c.id, u.lexeme, w FROM {} c, unnest(c.tsv) u, unnest(u.weights) w WHERE c.collection = %s"
        ).format(version.table),
        (collection,),
    ).fetchall()
    result: dict[int, list[tuple[str, bool]]] = {}
    for chunk_id, lexeme, weight in rows:
        result.setdefault(chunk_id, []).append((lexeme, weight == "A"))
    return result


def plain_bm25(
    chunks: dict[int, list[tuple[str, bool]]], query: list[str], k1: float, b: float, title_weight: float
) -> dict[int, float]:
    """BM25 written out the obvious way (Lucene idf and form), for comparison."""
    n = len(chunks)
    avgdl = sum(len(t) for t in chunks.values()) / n
    df = Counter(lexeme for t in chunks.values() for lexeme in {x for x, _ in t})
    scores: dict[int, float] = {}
    for chunk_id, chunk_tokens in chunks.items():
        score = 0.0
        for term in query:
            tf = sum(title_weight if in_title else 1.0 for lexeme, in_title in chunk_tokens if lexeme == term)
            if df[term] == 0 or tf == 0:
                continue
            idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
            score += idf * tf / (tf + k1 * (1 - b + b * len(chunk_tokens) / avgdl))
        if score > 0:
            scores[chunk_id] = score
    return scores


def positive_lexemes(conn: psycopg.Connection, question: str) -> list[str]:
    row = conn.execute("SELECT querytree(websearch_to_tsquery('english', %s))::text", (question,)).fetchone()
    assert row is not None
    text = str(row[0])
    parts = [p.split("'")[1] for p in text.split(" ") if p.startswith("'")]
    return sorted(set(parts))


def stored_statistics(conn: psycopg.Connection, version: IndexVersion) -> tuple[set[tuple], ...]:
    """The statistics and postings the triggers keep (sql/0008_bm25.sql, sql/0020_bm25_postings.sql)."""
    terms = conn.execute(
        "SELECT collection, lexeme, df FROM bm25_terms WHERE index_version_id = %s AND df > 0", (version.id,)
    ).fetchall()
    collections = conn.execute(
        "SELECT collection, chunks, tokens FROM bm25_collections WHERE index_version_id = %s AND chunks > 0",
        (version.id,),
    ).fetchall()
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"chunks_v{version.id}_postings",)).fetchone()
    if not exists or not exists[0]:
        return set(terms), set(collections), set()
    postings = conn.execute(
        sql.SQL("SELECT collection, lexeme, chunk_id, tf, title_tf, dl FROM {}").format(version.postings)
    ).fetchall()
    return set(terms), set(collections), set(postings)


def recounted_statistics(conn: psycopg.Connection, version: IndexVersion) -> tuple[set[tuple], ...]:
    """The statistics and postings counted afresh from the chunk table."""
    terms = conn.execute(
        sql.SQL("SELECT c.collection, u.lexeme, count(*)::int FROM {} c, unnest(c.tsv) u GROUP BY 1, 2").format(
            version.table
        )
    ).fetchall()
    collections = conn.execute(
        sql.SQL(
            "SELECT c.collection, count(*), sum((SELECT sum(cardinality(positions)) FROM unnest(c.tsv)))::bigint "
            "FROM {} c GROUP BY 1"
        ).format(version.table)
    ).fetchall()
    postings = conn.execute(
        sql.SQL(
            "SELECT c.collection, u.lexeme, c.id, cardinality(u.positions),"
            " (SELECT count(*) FROM unnest(u.weights) w WHERE w = 'A')::int,"
            " (SELECT sum(cardinality(positions)) FROM unnest(c.tsv))::int FROM {} c, unnest(c.tsv) u"
        ).format(version.table)
    ).fetchall()
    return set(terms), set(collections), set(postings)


def ingest(
    conn: psycopg.Connection, embedder: Embedder, root: Path, collection: str, chunk_size: int = 200, sync: bool = False
) -> IngestReport:
    config = make_config(chunk_size=chunk_size, overlap=0 if chunk_size < 30 else 30)
    return IngestPipeline(conn, config, embedder, collection=collection).run(root, sync=sync)


@pytest.fixture
def team(conn: psycopg.Connection, embedder: Embedder, tmp_path: Path) -> IndexVersion:
    """Two collections: the team documents in 'team', the shared small corpus in 'other'."""
    ingest(conn, embedder, write_corpus(tmp_path / "team", TEAM_DOCS, with_jsonl=False), "team")
    report = ingest(conn, embedder, write_corpus(tmp_path / "other"), "other")
    return report.index_version


@pytest.mark.parametrize(
    ("k1", "b", "title_weight"), [(0.9, 0.4, 1.0), (1.5, 0.75, 1.0), (1.2, 1.0, 3.0), (0.0, 0.0, 1.0)]
)
def test_bm25_scores_equal_a_plain_bm25_over_the_same_tokens(
    conn: psycopg.Connection, team: IndexVersion, k1: float, b: float, title_weight: float
) -> None:
    """Statistics are per collection: the 'other' collection's words change no score in 'team'."""
    chunks = tokens(conn, team, "team")
    for question in QUESTIONS:
        expected = plain_bm25(chunks, positive_lexemes(conn, question), k1, b, title_weight)
        hits = search_sql.search_keyword(
            conn, team, question, 50, collection="team", bm25=Bm25(k1=k1, b=b, title_weight=title_weight)
        )
        assert {h.chunk_id: h.score for h in hits} == pytest.approx(expected, rel=1e-9), question
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


@pytest.mark.parametrize(
    "question", [*QUESTIONS, '"coffee machine" -printer', "-printer -coffee", "it's O'Brien's \\ café", ""]
)
def test_query_lexemes_are_the_positive_lexemes(conn: psycopg.Connection, question: str) -> None:
    """The one reading of a question's words (benchmarks use it too) agrees with the querytree oracle."""
    assert search_sql.query_lexemes(conn, question, tsconfig="english") == positive_lexemes(conn, question)


def test_negated_terms_are_dropped_not_matched(conn: psycopg.Connection, team: IndexVersion) -> None:
    """A question is a bag of its positive words: ``-word`` neither counts nor makes every chunk a match."""
    negated = search_sql.search_keyword(conn, team, '"coffee machine" -printer', 50, collection="team")
    plain = search_sql.search_keyword(conn, team, "coffee machine", 50, collection="team")
    assert negated and negated == plain
    assert search_sql.search_keyword(conn, team, "-printer -coffee", 50, collection="team") == []


@pytest.mark.parametrize("round_postings", [1, 2, 3, 10])
def test_pruning_returns_the_exhaustive_top_k(
    conn: psycopg.Connection, team: IndexVersion, round_postings: int
) -> None:
    """MaxScore pruning is exact: a tiny first round gives the same ranking as scoring every match."""
    for question in QUESTIONS:
        for top_k in (1, 2, 3):
            exhaustive = search_sql.search_keyword(conn, team, question, 50, collection="team")[:top_k]
            pruned = search_sql.search_keyword(
                conn, team, question, top_k, collection="team", bm25=Bm25(round_postings=round_postings)
            )
            assert [(h.chunk_id, round(h.score, 9)) for h in pruned] == [
                (h.chunk_id, round(h.score, 9)) for h in exhaustive
            ], (question, top_k)


def test_statistics_stay_exact_after_adds_edits_and_deletes(
    conn: psycopg.Connection, embedder: Embedder, team: IndexVersion, tmp_path: Path
) -> None:
    assert stored_statistics(conn, team) == recounted_statistics(conn, team)
    root = write_corpus(
        tmp_path / "team", {**TEAM_DOCS, "a.md": "# Printers\n\nThe printer was replaced.\n"}, with_jsonl=False
    )
    (root / "f.txt").write_text("Quarterly fire drills are announced by facilities a week ahead.\n")
    (root / "e.txt").unlink()
    report = ingest(conn, embedder, root, "team", sync=True)
    assert (report.added, report.updated, report.deleted) == (1, 1, 1)
    assert stored_statistics(conn, team) == recounted_statistics(conn, team)
    doomed = [d.id for d in documents.list_documents(conn, "team", team.id) if d.source == "b.md"]
    assert documents.delete_documents(conn, doomed) == 1
    assert stored_statistics(conn, team) == recounted_statistics(conn, team)
    assert not [h for h in search_sql.search_keyword(conn, team, "roaster", 5, collection="team")]
    gone = conn.execute("SELECT count(*) FROM bm25_terms WHERE lexeme = 'roaster' OR df <= 0").fetchone()
    assert gone == (0,)  # a deleted document's words leave the statistics too
    gone = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE lexeme = 'roaster'").format(team.postings)).fetchone()
    assert gone == (0,)  # and the postings
    with conn.transaction():  # an update rewrites the tsv: the statistics follow it
        conn.execute(sql.SQL("UPDATE {} SET title = 'Roaster' WHERE collection = 'team'").format(team.table))
    assert stored_statistics(conn, team) == recounted_statistics(conn, team)
    with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():  # rolled back: nothing changes
        conn.execute(sql.SQL("DELETE FROM {} WHERE collection = 'other'").format(team.table))
        conn.execute("UPDATE bm25_collections SET chunks = -1 WHERE index_version_id = %s", (team.id,))
    assert stored_statistics(conn, team) == recounted_statistics(conn, team)


def test_each_index_version_keeps_its_own_statistics_through_activation_and_rollback(
    conn: psycopg.Connection, embedder: Embedder, tmp_path: Path
) -> None:
    root = write_corpus(tmp_path / "team", TEAM_DOCS, with_jsonl=False)
    old = ingest(conn, embedder, root, "team").index_version
    new = ingest(conn, embedder, root, "team", chunk_size=16).index_version
    assert new.id != old.id
    for version in (old, new):
        assert stored_statistics(conn, version) == recounted_statistics(conn, version)
    versions.activate_index_version(conn, new.id)
    new_chunks = len(tokens(conn, new, "team"))
    assert new_chunks > len(tokens(conn, old, "team"))
    active = versions.active_index_version(conn, "team")
    assert active is not None and active.id == new.id
    assert search_sql.term_statistics(conn, active, "printer", collection="team").chunks == new_chunks
    versions.activate_index_version(conn, old.id)  # roll back
    active = versions.active_index_version(conn, "team")
    assert active is not None and active.id == old.id
    assert search_sql.search_keyword(conn, active, "printer toner", 1, collection="team")[0].source == "a.md"
    versions.drop_index_version(conn, new.id)
    assert stored_statistics(conn, new) == (set(), set(), set())  # the postings table went with the version
    assert stored_statistics(conn, old) == recounted_statistics(conn, old)


def test_lexemes_with_quotes_and_backslashes_are_matched_literally(
    conn: psycopg.Connection, embedder: Embedder, tmp_path: Path
) -> None:
    """Lexemes are bound as values, never parsed: a question's quotes and backslashes match nothing else."""
    docs = {"q.txt": "O'Brien's café sells it's-a-me pastries.\n", "r.txt": "Plain bread and coffee.\n"}
    version = ingest(conn, embedder, write_corpus(tmp_path / "odd", docs, with_jsonl=False), "odd").index_version
    hits = search_sql.search_keyword(conn, version, "it's O'Brien's \\ café", 5, collection="odd")
    assert [h.source for h in hits] == ["q.txt"]


def test_postings_of_a_version_from_before_them_are_built_from_its_chunks(
    conn: psycopg.Connection, team: IndexVersion
) -> None:
    """What migration 0020 runs for each existing version: the postings, built from the chunks already there."""
    expected = recounted_statistics(conn, team)
    with conn.transaction():
        conn.execute(sql.SQL("DROP TABLE {}").format(team.postings))
        conn.execute("SELECT ragops_bm25_postings_install(%s)", (team.id,))
    assert stored_statistics(conn, team) == expected
    before = search_sql.search_keyword(conn, team, "printer toner", 3, collection="team")
    assert before and before[0].source == "a.md"


def test_statistics_name_the_question_lexemes_no_chunk_holds_and_the_rare_ones(
    conn: psycopg.Connection, team: IndexVersion
) -> None:
    stats = search_sql.term_statistics(conn, team, "Which roaster supplies the espresso beans?", collection="team")
    assert stats.absent == ("espresso", "suppli")  # in the question, in no chunk
    assert {t.lexeme for t in stats.terms} == {"roaster", "bean"}
    assert stats.rare(0.3) == {"espresso", "suppli", "roaster", "bean"}  # 1 of 5 chunks each
    assert stats.rare(0.0) == {"espresso", "suppli"}
    facilities = search_sql.term_statistics(conn, team, "facilities", collection="team")
    assert facilities.absent == () and facilities.rare(0.5) == frozenset()  # in 3 of 5 chunks
