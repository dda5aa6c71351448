"""A change to the prompt or generation settings is judged by a generator that reads it, or called "not evaluated".

Each side is evaluated from its own commit of a temporary git repository (configs/ and prompts/),
the way the eval-gate workflow evaluates main and the pull request.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from core.runtime import Runtime
from evals import cli as eval_cli
from evals.compare import NOT_EVALUATED, PASS, REGRESSION, compare, load_gate
from evals.dataset import EvalSet, load_dataset
from evals.runner import run_eval
from tests.conftest import REPO
from tests.utils.vllm_server import VllmServer

FULL = load_dataset(REPO / "evals" / "datasets" / "sample.jsonl")
# Small enough to answer twice per test, with a CPU vLLM too: two answerable, one unanswerable, one PII.
SMALL = EvalSet(FULL.name, FULL.sha256, [q for q in FULL.questions if q.id in {"q001", "q002", "q037", "q043"}])
CITE_RULE = "- Cite every statement with the number of the document it comes from, in square brackets, like [2]."
NEVER_CITE = "- Never cite sources. Do not use square brackets."
VLLM_GENERATION = "generation:\n  backend: vllm\n  model: ragops-llm\n  max_tokens: 8\n  context_tokens: 300\n"
GATE = "metrics:\n  hit_at_k: {max_drop: 0.03}\n"


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True)


def make_repo(root: Path, config_text: str | None = None) -> Path:
    """A git repository holding the default configuration, prices and prompt, committed."""
    for path in ("configs/default.yaml", "configs/pricing.yaml", "prompts/default.md"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / path, root / path)
    if config_text is not None:
        (root / "configs" / "default.yaml").write_text(config_text)
    git(root, "init", "--quiet")
    commit(root, "main")
    return root


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "configs", "prompts")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", message)


def edit(repo: Path, path: str, old: str, new: str) -> None:
    """The pull request: one edit, committed."""
    target = repo / path
    text = target.read_text()
    assert old in text, f"{old!r} is not in {path}"
    target.write_text(text.replace(old, new))
    commit(repo, f"edit {path}")


def evaluate(runtime: Runtime, repo: Path) -> dict[str, Any]:
    return run_eval(runtime, "default", SMALL, samples=REPO / "samples", configs_dir=repo / "configs",
                    prompts_dir=repo / "prompts")  # fmt: skip


@pytest.fixture(scope="module")
def extractive_main(runtime: Runtime, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """main's commit, evaluated without a model (no RAGOPS_VLLM_URL: the extractive generator answers)."""
    repo = make_repo(tmp_path_factory.mktemp("repo"))
    return repo, evaluate(runtime, repo)


@pytest.mark.parametrize(
    ("path", "old", "new", "unread"),
    [
        ("prompts/default.md", CITE_RULE, NEVER_CITE, ["prompt"]),
        ("configs/default.yaml", "temperature: 0.0", "temperature: 0.9", ["generation.temperature"]),
        ("configs/default.yaml", "max_tokens: 256", "max_tokens: 64", ["generation.max_tokens"]),
        ("configs/default.yaml", "max_sentences: 3", "max_sentences: 1", []),  # the extractive generator reads it
    ],
)
def test_a_change_the_extractive_generator_does_not_read_is_not_evaluated_never_passed(
    runtime: Runtime, extractive_main: tuple[Path, dict[str, Any]], tmp_path: Path,
    path: str, old: str, new: str, unread: list[str],
) -> None:  # fmt: skip
    main_repo, baseline = extractive_main
    repo = tmp_path / "pr"
    shutil.copytree(main_repo, repo)
    edit(repo, path, old, new)
    candidate = evaluate(runtime, repo)
    assert candidate["generator"]["name"] == "extractive" and "prompt" not in candidate["generator"]["reads"]
    (tmp_path / "gate.yaml").write_text(GATE)
    (tmp_path / "main.json").write_text(json.dumps(baseline))
    (tmp_path / "pr.json").write_text(json.dumps(candidate))
    result = CliRunner().invoke(
        eval_cli.app,
        ["compare", str(tmp_path / "main.json"), str(tmp_path / "pr.json"), "--gate", str(tmp_path / "gate.yaml"),
         "--markdown", str(tmp_path / "r.md"), "--html", str(tmp_path / "r.html")],
    )  # fmt: skip
    report, page = (tmp_path / "r.md").read_text(), (tmp_path / "r.html").read_text()
    head = report.split("| metric |")[0]  # the lines above the metric table
    assert "Answered by: baseline extractive, candidate extractive. Judge: baseline none, candidate none." in head
    if unread:
        assert result.exit_code == NOT_EVALUATED, result.output
        assert report.startswith(f"## ragops eval gate: NOT EVALUATED: {unread[0]} changed")
        assert "run the gate with a model" in head and "PASS" not in report
        assert "<h1>ragops eval gate: NOT EVALUATED" in page and "Answered by: baseline extractive" in page
        # Why: the generator never saw the change, so the answers are the same word for word.
        assert [q["answer"] for q in candidate["questions"]] == [q["answer"] for q in baseline["questions"]]
    else:
        assert result.exit_code in (PASS, REGRESSION), result.output
        assert "NOT EVALUATED" not in report


def test_with_a_real_vllm_a_prompt_change_alters_answers_and_is_compared(
    runtime: Runtime, vllm_server: VllmServer, tmp_path: Path
) -> None:
    """The tiny random-weight model reads the prompt: another prompt, other answers, a real verdict."""
    with_model = dataclasses.replace(
        runtime, settings=runtime.settings.model_copy(update={"vllm_url": vllm_server.base_url})
    )
    config = (REPO / "configs" / "default.yaml").read_text().split("generation:")[0] + VLLM_GENERATION
    repo = make_repo(tmp_path / "repo", config)
    baseline = evaluate(with_model, repo)
    edit(repo, "prompts/default.md", CITE_RULE, NEVER_CITE)
    candidate = evaluate(with_model, repo)
    assert candidate["generator"]["name"] == "vllm" and "prompt" in candidate["generator"]["reads"]
    assert candidate["versions"]["prompt"] != baseline["versions"]["prompt"]
    assert [q["answer"] for q in candidate["questions"]] != [q["answer"] for q in baseline["questions"]]
    gate = load_gate(REPO / "evals" / "gate.yaml")
    gate.metrics = {"hit_at_k": gate.metrics["hit_at_k"]}  # the 4-question set misses the other floors
    result = compare(baseline, candidate, gate)
    assert result.not_evaluated == [] and result.exit_code in (PASS, REGRESSION)
    assert result.answered_by == ("vllm (model ragops-llm)", "vllm (model ragops-llm)")
