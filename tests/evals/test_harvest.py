"""From a thumbs-down to a gated eval row: rate a wrong answer, harvest it, accept it, gate the fix.

The live side is the real API over its own database (samples ingested); the eval side is the real
harness (evals/runner.py) on the same database, as in CI.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.main import create_app
from core.config import load_config
from core.embedding import Embedder
from core.errors import EvalInputError
from core.runtime import Runtime
from evals import cli as eval_cli
from evals.compare import PASS, REGRESSION, compare, load_gate
from evals.dataset import EvalQuestion, EvalSet, load_dataset
from evals.harvest import Candidate, HarvestResult, deduplicate, normalized
from evals.runner import run_eval
from ingest.pipeline import IngestPipeline
from tests.app.conftest import SAMPLES, make_settings
from tests.conftest import REPO, clone_template
from tests.utils.accounts import new_key

SAMPLE = load_dataset(REPO / "evals" / "datasets" / "sample.jsonl")
GATE = load_gate(REPO / "evals" / "gate.yaml")
BY_ID = {q.id: q for q in SAMPLE.questions}
# The current configuration answers this one wrongly (its one chunk misses the travel policy); the fix finds it.
MISSED = BY_ID["q007"]
# The eval set before the harvest: every kind the gate measures (answerable, unanswerable, personal data).
KEPT = (BY_ID["q001"], BY_ID["q002"], BY_ID["q037"], BY_ID["q043"])


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``current``: vector top_k 1 with a cosine floor (the deliberately bad config, as in test_gate), transcripts
    on; ``fixed``: the shipped default with transcripts on; ``plain``: the shipped default (transcripts off)."""
    folder = tmp_path_factory.mktemp("harvest-configs")
    default = (REPO / "configs" / "default.yaml").read_text()
    shutil.copy(REPO / "configs" / "pricing.yaml", folder / "pricing.yaml")
    kept = default.replace("    enabled: false\n    retention_days: 30", "    enabled: true\n    retention_days: 30")
    current = kept.replace("mode: hybrid", "mode: vector").replace("min_score: null", "min_score: 0.55")
    current = current.replace("top_k: 5", "top_k: 1")
    assert "enabled: true" in kept and "top_k: 1" in current and "min_score: 0.55" in current
    (folder / "default.yaml").write_text(default)
    (folder / "plain.yaml").write_text(default)
    (folder / "fixed.yaml").write_text(kept)
    (folder / "current.yaml").write_text(current)
    return folder


@pytest.fixture(scope="module")
def live(
    pg_server: str, embedder: Embedder, configs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Runtime, TestClient]]:
    database = clone_template(pg_server, "harvest")
    with database.connect() as conn:
        IngestPipeline(conn, load_config("default", configs), embedder).run(SAMPLES)
    settings = make_settings(database, tmp_path_factory.mktemp("harvest"), configs_dir=configs, vllm_url=None)
    with TestClient(create_app(settings)) as client, database.connect() as conn:
        client.headers["Authorization"] = f"Bearer {new_key(database, ['query'])}"
        yield Runtime(settings=settings, database=database, conn=conn), client


def _thumbs_down(client: TestClient, question: str, config: str, **extra: Any) -> dict[str, Any]:
    answer = client.post("/v1/query", json={"question": question, "config": config})
    assert answer.status_code == 200, answer.text
    rated = client.post("/v1/feedback", json={"request_id": answer.json()["request_id"], "rating": -1, **extra})
    assert rated.status_code == 200, rated.text
    return dict(answer.json())


def _write_dataset(path: Path, questions: tuple[EvalQuestion, ...]) -> EvalSet:
    path.write_text("".join(json.dumps(q.model_dump(exclude_defaults=True)) + "\n" for q in questions))
    return load_dataset(path)


def test_a_thumbs_down_becomes_a_gated_eval_row(
    live: tuple[Runtime, TestClient], configs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, client = live
    dataset_path = tmp_path / "evalset.jsonl"
    old_set = _write_dataset(dataset_path, KEPT)
    old_baseline = run_eval(rt, "current", old_set, samples=SAMPLES, configs_dir=configs)
    travel = rt.conn.execute("SELECT id FROM documents WHERE source = %s", (MISSED.sources[0],)).fetchone()
    assert travel is not None

    # Live: the current configuration answers wrongly; the user says so and names the right document.
    wrong = _thumbs_down(client, MISSED.question, "current", reason="wrong", sources=[travel[0]])
    assert MISSED.sources[0] not in {c["source"] for c in wrong["citations"]}
    _thumbs_down(client, KEPT[0].question.upper() + "  ", "current", reason="incomplete")  # already in the set
    _thumbs_down(client, "How do I book a rental car for a customer visit?", "plain", reason="wrong")  # no transcript

    monkeypatch.setenv("RAGOPS_DATABASE_URL", rt.database.url)
    review = tmp_path / "review.jsonl"
    harvested = CliRunner().invoke(
        eval_cli.app,
        ["harvest", "--collection", "default", "--since", "1h", "--out", str(review), "--dataset", str(dataset_path)],
    )
    assert harvested.exit_code == 0, harvested.output
    assert "3 negative rating(s)" in harvested.output and "1 of them kept no question" in harvested.output
    assert f"duplicate of {KEPT[0].id}" in harvested.output
    entries = [json.loads(line) for line in review.read_text().splitlines()]
    assert len(entries) == 1 and entries[0]["accept"] is False
    row = entries[0]["row"]
    assert normalized(row["question"]) == normalized(MISSED.question) and row["sources"] == MISSED.sources
    assert entries[0]["evidence"]["reason"] == "wrong" and entries[0]["evidence"]["versions"]["config"].startswith(
        "current@"
    )

    # Accepting needs a person: a row without its reference answer is refused, and nothing is appended.
    entries[0]["accept"] = True
    review.write_text(json.dumps(entries[0]) + "\n")
    refused = CliRunner().invoke(eval_cli.app, ["harvest", "--accept", str(review), "--dataset", str(dataset_path)])
    assert refused.exit_code == 2 and "write the reference answer" in refused.output
    assert load_dataset(dataset_path).sha256 == old_set.sha256
    entries[0]["row"]["reference"] = MISSED.reference
    review.write_text(json.dumps(entries[0]) + "\n")
    accepted = CliRunner().invoke(eval_cli.app, ["harvest", "--accept", str(review), "--dataset", str(dataset_path)])
    assert accepted.exit_code == 0, accepted.output
    new_set = load_dataset(dataset_path)
    assert len(new_set.questions) == len(KEPT) + 1 and new_set.sha256 != old_set.sha256
    assert new_set.sha256[:12] in accepted.output and "ragops eval baseline" in accepted.output

    # The gate refuses the old baseline: it must be regenerated on purpose.
    current = run_eval(rt, "current", new_set, samples=SAMPLES, configs_dir=configs)
    with pytest.raises(EvalInputError, match="another dataset"):
        compare(old_baseline, current, GATE)
    # The harvested row fails on the current configuration and the fix passes the gate.
    by_id = {q["id"]: q for q in current["questions"]}
    assert by_id[row["id"]]["metrics"]["hit_at_k"] == 0.0
    fixed = run_eval(rt, "fixed", new_set, samples=SAMPLES, configs_dir=configs)
    assert {q["id"]: q for q in fixed["questions"]}[row["id"]]["metrics"]["hit_at_k"] == 1.0
    assert compare(current, current, GATE).exit_code == REGRESSION  # below the hit_at_k floor
    assert compare(current, fixed, GATE).exit_code == PASS


def test_harvest_rejects_bad_input(tmp_path: Path) -> None:
    review = tmp_path / "review.jsonl"
    review.write_text("{oops\n")
    dataset = tmp_path / "set.jsonl"
    _write_dataset(dataset, KEPT)
    runner = CliRunner()
    for args, message in [
        (["harvest", "--accept", str(review), "--dataset", str(dataset)], "invalid JSON"),
        (["harvest", "--accept", str(tmp_path / "none.jsonl"), "--dataset", str(dataset)], "does not exist"),
        (["harvest", "--since", "7d"], "--collection"),
        (["harvest", "--collection", "default", "--since", "whenever"], "duration"),
    ]:
        result = runner.invoke(eval_cli.app, args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    entry = {"accept": True, "row": KEPT[0].model_dump()}
    review.write_text(json.dumps(entry) + "\n")
    result = runner.invoke(eval_cli.app, ["harvest", "--accept", str(review), "--dataset", str(dataset)])
    assert result.exit_code == 2 and "already in" in result.output
    review.write_text(json.dumps({**entry, "accept": False}) + "\n")
    result = runner.invoke(eval_cli.app, ["harvest", "--accept", str(review), "--dataset", str(dataset)])
    assert result.exit_code == 2 and "nothing appended" in result.output
    assert load_dataset(dataset).questions == list(KEPT)


def test_near_duplicates_by_embedding_are_dropped(embedder: Embedder) -> None:
    def candidate(question: str) -> Candidate:
        return Candidate(question=question, sources=["handbook/pto.md"], evidence={"request_id": question[:8]})

    rephrased = "I have been at Kestrel Freight for three years. How many PTO days do I get each year?"
    different = "Who signs off on a purchase order above the team's budget?"
    dataset = EvalSet(name="t", sha256="0", questions=list(KEPT))
    result = HarvestResult()
    kept = deduplicate([candidate(rephrased), candidate(different), candidate(different + " ")], dataset, embedder,
                       result)  # fmt: skip
    assert [c.question for c in kept] == [different]
    assert {(d["duplicate_of"], d["how"].split()[0]) for d in result.duplicates} == {
        (KEPT[0].id, "cosine"),
        (candidate(different).row_id, "same"),
    }
