"""The ``ragops`` command line, run in a subprocess like a user would, on the embedded server."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from core.config import load_config
from core.db import Database
from tests.utils.corpus import corpus_document_count, write_corpus

REPO = Path(__file__).resolve().parents[2]


def ragops(*args: str, database: Database, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAGOPS_DATABASE_URL": database.url, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
        check=False,
    )


def summary_row(stdout: str, name: str) -> str | None:
    """The value in the ingest summary's row ``name``, whatever the column width."""
    match = re.search(rf"^\W*{re.escape(name)}\s+│\s*(.*?)\s*│?\s*$", stdout, re.MULTILINE)
    return match.group(1) if match else None


def test_ingest_then_reingest_and_list(database: Database, tmp_path: Path) -> None:
    root = write_corpus(tmp_path / "docs")
    first = ragops("ingest", str(root), database=database, cwd=REPO)
    assert first.returncode == 0, first.stderr
    assert summary_row(first.stdout, "added") == str(corpus_document_count())
    assert summary_row(first.stdout, "chunks truncated") == "0"  # chunks are fitted to what the model reads
    assert "activated index version v1-" in first.stdout
    assert "Loading weights" not in first.stderr  # no progress bars when the output is not a terminal
    again = ragops("ingest", str(root), "--sync", database=database, cwd=REPO)
    assert again.returncode == 0, again.stderr
    assert summary_row(again.stdout, "texts embedded") == "0"
    assert summary_row(again.stdout, "unchanged") == str(corpus_document_count())
    listing = ragops("index", "list", database=database, cwd=REPO)
    assert listing.returncode == 0 and "ready" in listing.stdout and "200/30" in listing.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "/no/such/folder"], "error: source /no/such/folder does not exist"),
        (["ingest", ".", "--config", "nope"], "error: unknown configuration 'nope'"),
        (["index", "activate", "42"], "error: no index version 42"),
        (["index", "drop", "42"], "error: no index version 42"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_1(database: Database, args: list[str], message: str) -> None:
    result = ragops(*args, database=database, cwd=REPO)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_activating_an_index_of_another_embedding_model_needs_force(database: Database) -> None:
    """Registered with an empty chunk table: only MiniLM is installed here, and nothing reads the vectors."""
    from core.config import EmbeddingSettings, IndexSettings
    from ingest import versions

    other = IndexSettings(embedding=EmbeddingSettings(model="/models/e5-large-v2"))
    with database.connect() as conn:
        version = versions.mark_version_ready(conn, versions.ensure_index_version(conn, other, 1024, "test"))
    refused = ragops("index", "activate", str(version.id), database=database, cwd=REPO)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "was built with the embedding model '/models/e5-large-v2'" in refused.stderr
    with database.connect() as conn:
        assert versions.active_index_version(conn) is None
    forced = ragops("index", "activate", str(version.id), "--force", database=database, cwd=REPO)
    assert forced.returncode == 0, forced.stderr
    assert f"active index version for the default: {version.name}" in forced.stdout


def test_the_embedded_database_is_used_when_no_url_is_set(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGOPS_") and k != "DATABASE_URL"}
    env["RAGOPS_DATA_DIR"] = str(tmp_path / "state")
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "db", "migrate"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "applied: 0001_init.sql" in result.stdout
    assert (tmp_path / "state" / "pgdata" / "PG_VERSION").exists()
    assert not (tmp_path / "state" / "pgdata" / "postmaster.pid").exists(), "server left running"


def test_config_validate_passes_on_the_repository() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "config", "validate"], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "ok  config default@" in result.stdout and "ok  prompt default@" in result.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("retrieval:\n  top_k: 500\n", "default.yaml: retrieval.top_k: Input should be less than or equal to 50"),
        (
            "index:\n  embedding:\n    backend: tensorrt\n",
            "default.yaml: index.embedding.backend: Input should be 'auto', 'torch' or 'onnx'",
        ),
        (
            "index:\n  embedding:\n    precision: float16\n",
            "default.yaml: index.embedding.precision: Input should be 'auto', 'float32' or 'bfloat16'",
        ),
        (
            "index:\n  embedding:\n    backend: onnx\n    precision: bfloat16\n",
            "precision bfloat16 runs on the torch backend only (backend is 'onnx')",
        ),
        ("retrieval:\n  bm25_k1: -1\n", "default.yaml: retrieval.bm25_k1: Input should be greater than or equal to 0"),
        ("retrieval:\n  bm25_b: 1.5\n", "default.yaml: retrieval.bm25_b: Input should be less than or equal to 1"),
        ("retrieval:\n  fusion: borda\n", "default.yaml: retrieval.fusion: Input should be 'rrf' or 'convex'"),
        (
            "retrieval:\n  fusion_normalization: zscore\n",
            "default.yaml: retrieval.fusion_normalization: Input should be 'bound' or 'minmax'",
        ),
        (
            "index:\n  embedding:\n    query_cache_size: -1\n",
            "default.yaml: index.embedding.query_cache_size: Input should be greater than or equal to 0",
        ),
        (
            "generation:\n  extractive:\n    rare_term_share: 1.5\n",
            "default.yaml: generation.extractive.rare_term_share: Input should be less than or equal to 1",
        ),
    ],
)
def test_config_validate_names_the_first_bad_file(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "default.yaml").write_text(text)
    env = {**os.environ, "RAGOPS_CONFIGS_DIR": str(tmp_path / "configs")}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "config", "validate"], capture_output=True, text=True, cwd=REPO, env=env,
        check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert message in result.stderr


def test_serve_refuses_to_start_on_an_invalid_file(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "default.yaml").write_text("generation:\n  prompt: missing\n")
    env = {**os.environ, "RAGOPS_CONFIGS_DIR": str(tmp_path / "configs")}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"], capture_output=True, text=True, cwd=REPO, env=env, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "generation.prompt: unknown prompt 'missing'" in result.stderr


def test_query_prints_the_answer_and_citations(served_database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from app import cli

    monkeypatch.setenv("RAGOPS_DATABASE_URL", served_database.url)
    result = CliRunner().invoke(cli.app, ["query", "Which days do hybrid employees have to be in the office?"])
    assert result.exit_code == 0, result.output
    assert "Tuesday" in result.output
    assert "handbook/remote_work.md" in result.output
    assert "config default@" in result.output


def test_keys_create_list_revoke_and_usage(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from app import cli

    monkeypatch.setenv("RAGOPS_DATABASE_URL", database.url)
    runner = CliRunner()
    created = runner.invoke(
        cli.app,
        ["keys", "create", "--name", "ci-bot", "--scopes", "query,admin", "--collections", "hr,faq", "--rpm", "5"],
    )
    assert created.exit_code == 0, created.output
    secret = created.output.strip().splitlines()[-1]
    assert secret.startswith("rgo_")
    assert "…" not in runner.invoke(cli.app, ["keys", "list"], env={"COLUMNS": "80"}).output  # wraps, never cuts
    listed = runner.invoke(cli.app, ["keys", "list"], env={"COLUMNS": "160"})
    assert "ci-bot" in listed.output and secret.split("_", 2)[2] not in listed.output
    assert "faq,hr" in listed.output and "(default)" in listed.output and "5 rpm" in listed.output
    revoked = runner.invoke(cli.app, ["keys", "revoke", secret.split("_")[1]])
    assert revoked.exit_code == 0 and "revoked key" in revoked.output
    assert runner.invoke(cli.app, ["usage", "--group-by", "model"]).exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scopes", "query,root", "--collections", "*"], "unknown: ['root']"),
        (["--scopes", "query"], "name the collections"),  # granted nothing unless named
        (["--collections", "*,hr"], "'*' already means all"),
        (["--collections", "*", "--budget-usd-day", "-1"], "--budget-usd-day cannot be negative"),
        (["--collections", "*", "--budget-usd-month", "0.0000000001"], "more than 9 decimal places"),
        (["--collections", "*", "--budget-usd-day", "ten"], "is not an amount in USD"),
    ],
)
def test_keys_create_refuses_bad_grants_and_budgets(database: Database, args: list[str], message: str) -> None:
    name = "refused"
    result = ragops("keys", "create", "--name", name, *args, database=database, cwd=REPO)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    with database.connect() as conn:
        assert conn.execute("SELECT count(*) FROM api_keys WHERE name = %s", (name,)).fetchone() == (0,)


@pytest.mark.parametrize(
    ("budget", "shown"), [("0.0000002", "$0.0000002/day"), ("0", "$0.00/day"), (None, "no budget")]
)
def test_budgets_round_trip_exactly_through_the_cli_and_the_database(
    database: Database, monkeypatch: pytest.MonkeyPatch, budget: str | None, shown: str
) -> None:
    from typer.testing import CliRunner

    from app import cli

    monkeypatch.setenv("RAGOPS_DATABASE_URL", database.url)
    runner = CliRunner()
    name = f"budget-{budget}"
    args = ["keys", "create", "--name", name, "--collections", "*"]
    created = runner.invoke(cli.app, [*args, *(["--budget-usd-day", budget] if budget is not None else [])])
    assert created.exit_code == 0, created.output
    assert shown in created.output
    with database.connect() as conn:
        stored = conn.execute("SELECT budget_usd_day FROM api_keys WHERE name = %s", (name,)).fetchone()
    assert stored == (None if budget is None else Decimal(budget),)
    listed = runner.invoke(cli.app, ["keys", "list"], env={"COLUMNS": "250"})
    row = next(line for line in listed.output.splitlines() if name in line)
    assert shown in row


def test_serve_creates_and_then_reuses_a_local_demo_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.cli import DEMO_KEY_FILE, ensure_demo_key
    from core.settings import get_settings

    monkeypatch.setenv("RAGOPS_DATA_DIR", str(tmp_path / "state"))
    get_settings.cache_clear()
    first = ensure_demo_key()
    again = ensure_demo_key()
    assert first is not None and again is not None and first[0] == again[0]
    assert first[1] and not again[1]  # created once, then reused
    assert (tmp_path / "state" / DEMO_KEY_FILE).stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("RAGOPS_AUTH_ENABLED", "false")
    get_settings.cache_clear()
    assert ensure_demo_key() is None  # no key when auth is off


@pytest.mark.parametrize(
    ("args", "shows", "exit_code"),
    [
        (["I'm Corinne Abelard, key AKIAZ7Q4M2X9K3LPW8RT."], ["PERSON", "SECRET", "I'm <PERSON_1>, key <SECRET>."], 0),
        (["My card is 4487 5749 1186 2520."], ["CREDIT_CARD", "block", "refused (422)"], 0),
        (["--stage", "answer", "Mail dana.w@example.org."], ["EMAIL_ADDRESS", "Mail <EMAIL_ADDRESS>."], 0),
        (["--stage", "later", "x"], ["--stage must be question or answer"], 1),
    ],
)
def test_config_pii_shows_what_the_policy_finds(args: list[str], shows: list[str], exit_code: int) -> None:
    from typer.testing import CliRunner

    from app import cli

    result = CliRunner().invoke(cli.app, ["config", "pii", *args])
    assert result.exit_code == exit_code, result.output
    shown = result.output + str(result.exception or "")  # errors reach the user through cli.main's one line
    for text in shows:
        assert text in shown


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "ragops.internal"])
def test_serve_refuses_auth_off_on_a_non_loopback_address(host: str, tmp_path: Path) -> None:
    env = {**os.environ, "RAGOPS_AUTH_ENABLED": "false", "RAGOPS_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--host", host, "--port", "1"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: refusing to serve on {host} with authentication off (RAGOPS_AUTH_ENABLED=false): "
        "bind a loopback address (--host 127.0.0.1) or turn authentication on"
    ]
    assert not (tmp_path / "pgdata").exists()  # refused before anything started


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("example.com", False)],
)  # fmt: skip
def test_loopback_addresses(host: str, loopback: bool) -> None:
    from app.cli import is_loopback

    assert is_loopback(host) is loopback


def test_tune_reports_held_out_figures_and_writes_only_a_reviewed_config(
    served_database: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`ragops tune` over the samples: before/after on held-out pseudo-queries, a valid file or none."""
    from typer.testing import CliRunner

    from app import cli

    configs = tmp_path / "configs"
    shutil.copytree(REPO / "configs", configs)
    monkeypatch.setenv("RAGOPS_DATABASE_URL", served_database.url)
    monkeypatch.setenv("RAGOPS_CONFIGS_DIR", str(configs))
    result = CliRunner().invoke(cli.app, ["tune", "--collection", "default", "--queries", "80"])
    assert result.exit_code == 0, result.output
    assert "held-out nDCG@10 over 40 queries: default" in result.output
    written = sorted(p.name for p in configs.glob("*.yaml")) != sorted(
        p.name for p in (REPO / "configs").glob("*.yaml")
    )
    assert written == ("wrote" in result.output)
    if written:
        assert load_config("default-default", configs).config.index == load_config("default", configs).config.index
    missing = CliRunner().invoke(cli.app, ["tune", "--collection", "nobody"])
    assert missing.exit_code != 0 and "gives only 0 pseudo-queries" in missing.output
