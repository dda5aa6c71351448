"""The README cannot drift: every curl, Python and CLI example in it runs, in order, against a live server.

The examples are taken from the README's ``bash`` and ``python`` blocks as written; only the address
(``localhost:8000`` -> the test server's port) changes. They run in a scratch copy of the checkout
(samples, docs, configs, prompts, evals), so the commands that write files (``eval baseline``,
``tune``, uploads) cannot touch the repository, with ``.ragops/demo-api-key`` holding a global admin key
as ``ragops serve`` would. curl runs as a real process over HTTP against uvicorn; CLI commands run
in-process on the same database and data folder. Examples that presume earlier work (``index
activate 2``, ``--collection support``) find it made by the fixture: a second and third index
version and a ``support`` collection, as a user following the README would have.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import evals.cli
from app import cli
from app.keys import create_key
from app.main import create_app
from core.config import load_config
from core.db import Database
from core.embedding import Embedder
from core.settings import get_settings
from ingest import versions
from ingest.pipeline import IngestPipeline
from tests.app.conftest import make_settings
from tests.conftest import REPO
from tests.utils.pdf import text_pdf
from tests.utils.server import serve_in_thread

README = (REPO / "README.md").read_text()

# Examples not run, each with its reason. Matched against the start of the command; every entry
# must still match an example (a stale exclusion fails the test).
EXCLUDED = {
    "./dev.sh serve": "sets up the machine and serves until stopped: this test is that server",
    "./dev.sh test": "runs the whole suite, this test included",
    ".venv/bin/ragops serve": "serves until stopped (the tracing example): this test is that server",
    ".venv/bin/ragops rollout": "gates and rolls out a 'candidate' configuration the repository does not ship "
    "(an eval run per gate); tests/app/test_rollouts.py and tests/evals/test_rollout_gate.py run these paths",
    ".venv/bin/ragops worker": "runs jobs until Ctrl-C; here the API's in-process worker runs them",
    ".venv/bin/ragops eval run --beir": "needs the labelled datasets outside the repository (../shared/datasets)",
    "cp deploy/env.example .env": "Docker deployment on a GPU host",
    "docker compose": "Docker deployment on a GPU host",
}

# Examples whose documented outcome is not success, or depends on the one before it.
EXPECTED: dict[str, tuple[set[int], str]] = {
    "curl -s -X POST localhost:8000/v1/admin/jobs/1/cancel": (
        {200, 409},
        "job 1 may already have finished by then (409 'already succeeded')",
    ),
    ".venv/bin/ragops jobs cancel 3": ({1}, "job 3 (the upload) was watched to its end just before"),
    ".venv/bin/ragops index drop 1": ({0}, "version 1 answers no collection after the two activations above"),
    "curl -s -X DELETE localhost:8000/v1/admin/indexes/1": ({404}, "`ragops index drop 1` above dropped it"),
    ".venv/bin/ragops eval harvest --accept": (
        {2},
        "a person marks the rows to keep first: unreviewed, nothing is added",
    ),
    ".venv/bin/ragops drift pin --collection default --window": (
        {1},
        "drift recording is off in the shipped configuration, so there is no live traffic to pin yet",
    ),
}


@dataclass(frozen=True)
class Example:
    """One command (or Python block) from the README, with the line it starts on."""

    kind: str  # curl, cli, shell, python, excluded
    text: str
    line: int


def readme_examples(readme: str = README) -> list[Example]:
    """Every command of the README's bash blocks and every python block, in order."""
    examples = []
    for match in re.finditer(r"^```(bash|python)\n(.*?)^```", readme, re.S | re.M):
        first_line = readme[: match.start(2)].count("\n") + 1
        if match.group(1) == "python":
            examples.append(Example("python", match.group(2), first_line))
            continue
        for text, offset in split_commands(match.group(2)):
            examples.append(Example(classify(text), text, first_line + offset))
    return examples


def split_commands(block: str) -> Iterator[tuple[str, int]]:
    """Shell commands of a block: continuation lines and quotes spanning lines joined, comment lines dropped."""
    pending: list[str] = []
    start = 0
    for n, line in enumerate(block.splitlines()):
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not pending:
            start = n
        pending.append(line)
        text = "\n".join(pending)
        if line.rstrip().endswith("\\") or not complete(text):
            continue
        yield text, start
        pending = []


def complete(text: str) -> bool:
    """Whether every quote is closed (an apostrophe in a trailing comment does not count)."""
    try:
        shlex.split(text, comments=True)
    except ValueError:
        return False
    return True


def classify(text: str) -> str:
    if any(text.startswith(prefix) for prefix in EXCLUDED):
        return "excluded"
    if text.startswith("curl "):
        return "curl"
    if text.startswith((".venv/bin/ragops ", "ragops ")):
        return "cli"
    return "shell"


def expected(example: Example) -> tuple[set[int], str] | None:
    return next((v for prefix, v in EXPECTED.items() if example.text.startswith(prefix)), None)


def test_every_readme_example_is_run_or_excluded_for_a_reason() -> None:
    """The exclusion list stays tiny and current; the README keeps its curl, CLI and Python examples."""
    examples = readme_examples()
    kinds = [e.kind for e in examples]
    assert kinds.count("curl") >= 20 and kinds.count("cli") >= 15 and kinds.count("python") >= 1, kinds
    excluded = [e.text for e in examples if e.kind == "excluded"]
    assert len(EXCLUDED) <= 8 and len(excluded) <= 16, excluded
    for prefix in [*EXCLUDED, *EXPECTED]:
        assert any(e.text.startswith(prefix) for e in examples), f"stale entry: {prefix}"
    # Shell assignments are kept for the commands after them: the key, an answer's id to rate, and the
    # tracing section's OTEL_* exports (environment for `ragops serve`; harmless to the curl commands).
    shell = {e.text.split()[0] for e in examples if e.kind == "shell"}
    assert shell == {"KEY=$(cat", "REQUEST_ID=$(curl", "export"}, "a command nobody runs"


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch copy of what the README's commands read and write, with files to upload."""
    root = tmp_path_factory.mktemp("checkout")
    for name in ("samples", "docs", "configs", "prompts", "evals"):
        shutil.copytree(REPO / name, root / name)
    (root / "notes.md").write_text("# Team notes\n\nThe quarterly planning day is the first Monday of March.\n")
    (root / "faq.pdf").write_bytes(text_pdf("Visitors sign in at the front desk of the Port Aldane office."))
    return root


@pytest.fixture(scope="module")
def state(private_database: Database, embedder: Embedder, checkout: Path) -> str:
    """What the README's examples presume was done before them; returns a global admin key.

    A ``support`` collection (the samples again), index version 2 (a full build of ``default``) and
    version 3 (a full build of ``support``), neither active yet.
    """
    config = load_config("default", checkout / "configs")
    with private_database.connect() as conn:
        IngestPipeline(conn, config, embedder, collection="support").run(checkout / "samples")
        for collection in ("default", "support"):
            fresh = versions.ensure_index_version(
                conn, config.config.index, embedder.dimension, config.version, fresh=True
            )
            pipeline = IngestPipeline(conn, config, embedder, collection=collection)
            pipeline.run(checkout / "samples", version=fresh, activate=False)
        assert sorted(v.id for v, *_ in versions.list_index_versions(conn)) == [1, 2, 3]
        key = create_key(conn, "readme", ["query", "admin"], collections=["*"], configs=["*"])[1]
    (checkout / ".ragops").mkdir()
    (checkout / ".ragops" / "demo-api-key").write_text(key + "\n")
    return key


@dataclass
class Runner:
    """Runs examples: curl against ``url`` from ``cwd``, CLI commands in-process on the same database."""

    url: str
    cwd: Path
    prelude: str = ""

    def run(self, example: Example) -> tuple[int, str]:
        """(HTTP status or exit code, output) of one example."""
        if example.kind == "shell":  # KEY=$(cat .ragops/demo-api-key): kept for the curl commands after it
            line = self.served(example.text)
            self.prelude += line + "\n"
            done = self.bash(line + '\ntest -n "$KEY"')
            return done.returncode, done.stderr
        if example.kind == "curl":
            command = self.served(example.text)
            done = self.bash(command.replace("curl ", "curl -w '\\n%{http_code}' ", 1))
            body, _, status = done.stdout.rpartition("\n")
            return (int(status) if done.returncode == 0 and status.isdigit() else -done.returncode), body
        if example.kind == "cli":
            words = shlex.split(example.text.replace("\\\n", " "), comments=True)
            result = CliRunner().invoke(cli.app, words[1:])
            return result.exit_code, result.output
        return self.python(example.text)

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    def served(self, text: str) -> str:
        """``text`` addressed to the test's server instead of the README's localhost:8000."""
        return text.replace("localhost:8000", self.host).replace("127.0.0.1:8000", self.host)

    def bash(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", self.prelude + command],
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def python(self, code: str) -> tuple[int, str]:
        namespace: dict[str, Any] = {}
        exec(code.replace("http://127.0.0.1:8000", self.url), namespace)  # the README's own example
        check_python_example(namespace)
        return 0, ""


def check_python_example(namespace: dict[str, Any]) -> None:
    """The OpenAI example lists the configurations as models and answers from the named collection."""
    assert "default" in namespace["models"], namespace["models"]
    answer = namespace["reply"].choices[0].message.content
    assert "Tuesday" in answer, answer
    assert namespace["reply"].model_extra["citations"]


@pytest.mark.timeout(2400)  # two eval runs of 48 questions and two tune searches among some 40 examples
def test_readme_examples_run_against_a_live_server(
    private_database: Database, state: str, checkout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each example, in README order, succeeds (2xx, exit 0) or ends as EXPECTED says, with the reason."""
    data = checkout / ".ragops"
    for name, value in {
        "RAGOPS_DATABASE_URL": private_database.url, "RAGOPS_DATA_DIR": str(data),
        "RAGOPS_CONFIGS_DIR": str(checkout / "configs"), "RAGOPS_PROMPTS_DIR": str(checkout / "prompts"),
        "RAGOPS_SOURCE_ROOTS": json.dumps([str(checkout), str(data / "uploads")]), "COLUMNS": "200",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(checkout)
    monkeypatch.setattr(evals.cli, "REPO", checkout)  # `eval baseline` writes the checkout's baseline, not ours
    get_settings.cache_clear()
    settings = make_settings(
        private_database, data, configs_dir=checkout / "configs", prompts_dir=checkout / "prompts",
        vllm_url=None, worker_in_process=True, source_roots=[checkout, data / "uploads"],
    )  # fmt: skip
    failures = []
    ran = 0
    with serve_in_thread(create_app(settings)) as url:
        runner = Runner(url, checkout)
        for example in readme_examples():
            if example.kind == "excluded":
                continue
            outcome, output = runner.run(example)
            print(f"README line {example.line}: {outcome}", flush=True)  # shown when the test fails or times out
            ran += 1
            allowed, _ = expected(example) or ({0} if example.kind != "curl" else set(range(200, 300)), "")
            if outcome not in allowed:
                failures.append(f"README line {example.line}: {example.text}\n-> {outcome}: {output[-600:]}")
            if example.kind == "curl" and 200 <= outcome < 300 and not example.text.startswith("curl -N"):
                json.loads(output)  # every JSON answer parses
            check_answer(example, output)
    assert not failures, "\n\n".join(failures)
    assert ran >= 40


def check_answer(example: Example, output: str) -> None:
    """The question examples answer what they ask (an answer, not a refusal, for the chat follow-up too)."""
    if example.kind != "curl":
        return
    if "/v1/chat" in example.text:
        assert "12 weeks" in json.loads(output)["answer"], output
    if '"How many PTO days do new employees get?"' in example.text:
        assert json.loads(output)["citations"][0]["source"] == "handbook/pto.md", output


@pytest.mark.parametrize("command", sorted(set(re.findall(r"`(?:\.venv/bin/)?ragops ([a-z]+(?: [a-z]+)?)", README))))
def test_readme_inline_commands_exist(command: str) -> None:
    """Commands named in the prose (``ragops collections list``, ``ragops query ...``) exist."""
    words = command.split()
    result = CliRunner().invoke(cli.app, [*words, "--help"])
    if result.exit_code != 0 and len(words) == 2:  # "ingest samples": the second word is an argument
        result = CliRunner().invoke(cli.app, [words[0], "--help"])
    assert result.exit_code == 0, result.output
