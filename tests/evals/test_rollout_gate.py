"""The rollout's offline stage on the real eval: a worse candidate fails the gate and cannot start; the CLI."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from app.rollouts import service, store
from core.errors import Conflict
from core.runtime import Runtime
from evals import rollout_cli
from evals.rollout import activation_check, record, run_gate
from tests.conftest import REPO


@pytest.fixture(scope="module")
def candidate_runtime(runtime: Runtime, tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    """The session's eval runtime, reading a configs folder with a deliberately worse candidate (top_k 1, floor)."""
    folder = tmp_path_factory.mktemp("rollout-gate-configs")
    for name in ("default.yaml", "pricing.yaml"):
        shutil.copy(REPO / "configs" / name, folder / name)
    default = (folder / "default.yaml").read_text()
    worse = default.replace("mode: hybrid", "mode: vector").replace("min_score: null", "min_score: 0.55")
    (folder / "worse.yaml").write_text(worse.replace("top_k: 5", "top_k: 1"))
    settings = runtime.settings.model_copy(update={"configs_dir": folder})
    return Runtime(settings=settings, database=runtime.database, conn=runtime.conn)


def test_a_worse_candidate_fails_the_gate_and_its_rollout_does_not_start(candidate_runtime: Runtime) -> None:
    rt = candidate_runtime
    run = run_gate(rt, "worse", baseline_config="default")
    assert not run.passed and run.verdict.startswith("FAIL") and len(run.sha256) == 64
    gate = record(rt, run, {"config": "worse", "prompt": None, "index_version": None})
    assert store.get_gate(rt.conn, gate.id) == gate and gate.report_sha256 == run.sha256
    with pytest.raises(Conflict, match="did not pass"):  # what start_rollout checks before anything is stored
        service.check_gate(rt.conn, gate.id, store.Versions("worse", "default", 1))
    passed, why = activation_check(rt, "worse", "default")  # the reindex job's check says the same, and why
    assert not passed and "FAIL: quality regressed" in why and "'worse'" in why


def test_the_cli_refuses_unknown_rollouts(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGOPS_DATABASE_URL", runtime.database.url)
    runner = CliRunner()
    for command in (["abort", "424242"], ["promote", "424242"], ["status", "424242"]):
        result = runner.invoke(rollout_cli.app, command)
        assert result.exit_code == 2, result.output
        assert "no rollout 424242" in result.output
    listed = runner.invoke(rollout_cli.app, ["status"])
    assert listed.exit_code == 0 and listed.output.strip() == ""
    junk = runner.invoke(rollout_cli.app, ["abort", "x"])
    assert junk.exit_code == 2 and "Usage" in junk.output  # not a number: typer's usage error
