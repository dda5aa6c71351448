"""``ragops tune``: pseudo-queries from a collection's own chunks, a fit that finds what is best there."""

from __future__ import annotations

import random
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from core.config import load_config
from core.embedding import Embedder
from core.errors import ConfigError, NotFound
from evals import cli as eval_cli
from evals.tune import FUSION_GRID, consistent_best, pseudo_queries, tune, write_tuned_config
from ingest.pipeline import IngestPipeline
from ingest.versions import IndexVersion
from tests.conftest import REPO
from tests.ingest.test_pipeline import make_config
from tests.utils.corpus import write_corpus

SYLLABLES = "ka lo mi ne ru sa to vi de fa go hu ji ke ma no pe ri su ta".split()


def ticket_documents(count: int = 30, paragraphs: int = 4) -> dict[str, str]:
    """Tickets whose sentences share nothing but their ticket code: only that word ties a chunk to its neighbours.

    The rest of each sentence is made-up words drawn at random, so meaning (the vectors) says little,
    and the code, rare and shared by exactly one ticket's chunks, says everything.
    """
    rng = random.Random(7)

    def word() -> str:
        return "".join(rng.choice(SYLLABLES) for _ in range(3))

    docs = {}
    for n in range(count):
        code = "".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(3)) + str(rng.randint(1000, 9999))
        body = [f"Ticket {code} " + " ".join(word() for _ in range(12)) + "." for _ in range(paragraphs)]
        docs[f"tickets/t{n:02d}.md"] = "\n\n".join(body) + "\n"
    return docs


@pytest.fixture
def tickets(conn: psycopg.Connection, embedder: Embedder, tmp_path: Path) -> IndexVersion:
    root = write_corpus(tmp_path / "tickets", ticket_documents(), with_jsonl=False)
    report = IngestPipeline(conn, make_config(chunk_size=32, overlap=0), embedder, collection="tickets").run(root)
    return report.index_version


def test_pseudo_queries_are_sentences_whose_neighbours_are_other_chunks(
    conn: psycopg.Connection, tickets: IndexVersion
) -> None:
    queries = pseudo_queries(conn, tickets, "tickets", limit=50, seed=3)
    assert len(queries) == 50
    assert queries == pseudo_queries(conn, tickets, "tickets", limit=50, seed=3)  # reproducible
    for query in queries:
        assert query.exclude_chunk is not None and str(query.exclude_chunk) not in query.relevant
        assert query.relevant and 6 <= len(query.text.split()) <= 40
    assert pseudo_queries(conn, tickets, "nobody", limit=50) == []


def test_tune_finds_the_keyword_heavy_setting_where_only_words_tell_chunks_apart(
    conn: psycopg.Connection, embedder: Embedder, tickets: IndexVersion, tmp_path: Path
) -> None:
    config = load_config("default", REPO / "configs")
    assert config.config.retrieval.keyword_weight < 0.5  # the default leans on vectors
    result = tune(conn, tickets, "tickets", config, embedder, limit=120)
    assert result.after > result.before + 0.05
    assert result.chosen and result.chosen.get("keyword_weight", config.config.retrieval.keyword_weight) >= 0.5
    assert result.ranking[0]["worse_half_gain"] > 0.05  # it gains on both halves of the fit queries
    configs = tmp_path / "configs"
    configs.mkdir()
    path = write_tuned_config(config, configs, "tickets-tuned", result, "tickets")
    written = load_config("tickets-tuned", configs)
    assert path.read_text().startswith("# Written by `ragops tune --collection tickets`")
    for field, value in result.chosen.items():
        assert getattr(written.config.retrieval, field) == value
    assert written.config.index == config.config.index  # same index: no rebuild to try it
    with pytest.raises(ConfigError, match="exists"):
        write_tuned_config(config, configs, "tickets-tuned", result, "tickets")


def test_a_setting_is_only_chosen_when_it_gains_on_both_fit_halves() -> None:
    lucky = {"keyword_weight": 1.0, "fit": 0.90, "worse_half_gain": -0.02}  # best mean, lost on one half
    steady = {"keyword_weight": 0.5, "fit": 0.85, "worse_half_gain": 0.01}
    assert consistent_best([lucky, steady]) == {"keyword_weight": 0.5}
    assert consistent_best([lucky]) is None
    assert consistent_best([]) is None


def test_the_grid_covers_both_score_normalizations() -> None:
    normalizations = {row.get("fusion_normalization") for row in FUSION_GRID if row["fusion"] == "convex"}
    assert normalizations == {"bound", "minmax"}


def test_tune_refuses_a_collection_too_small_to_learn_from(
    conn: psycopg.Connection, embedder: Embedder, tmp_path: Path
) -> None:
    root = write_corpus(
        tmp_path / "tiny", {"a.md": "One short note about nothing much at all today.\n"}, with_jsonl=False
    )
    version = IngestPipeline(conn, make_config(), embedder, collection="tiny").run(root).index_version
    with pytest.raises(NotFound, match="pseudo-queries"):
        tune(conn, version, "tiny", load_config("default", REPO / "configs"), embedder)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--collection", "x", "--name", "../evil"], "--name '../evil'"),
        (["--collection", "x", "--config", "missing"], "missing"),
        (["--collection", "x", "--queries", "5"], "greater than or equal to 20"),
    ],
)
def test_tune_cli_refuses_bad_arguments_before_touching_anything(args: list[str], message: str) -> None:
    result = CliRunner().invoke(eval_cli.tune_app, args)
    assert result.exit_code != 0
    assert message in result.output
