"""Full reindex jobs asked to activate go through the installed activation checks first.

The checks are discovered through the ``ragops.activation_checks`` entry point group; these tests
install them by replacing the discovery (the eval gate that registers itself there runs a whole
eval, tested in tests/evals/test_rollout_gate.py), so each verdict is known in advance.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from core.db import Database
from core.runtime import Runtime
from core.settings import Settings
from ingest import jobs, versions, worker
from ingest.worker import Worker
from tests.utils.corpus import write_corpus
from tests.utils.jobs import job_settings


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "docs")


@pytest.fixture
def settings(database: Database, tmp_path: Path, docs: Path) -> Settings:
    return job_settings(database, tmp_path, [docs], activation_checks=True)


def run(conn: psycopg.Connection, settings: Settings, database: Database, **request: object) -> jobs.Job:
    job = jobs.enqueue_reindex(conn, settings, **request)  # type: ignore[arg-type]
    done = Worker(database, settings).run_once()
    assert done is not None and done.id == job.id
    return done


def test_a_build_that_fails_its_check_is_kept_but_not_activated(
    database: Database, settings: Settings, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, str]] = []

    def refuse(rt: Runtime, config: str, collection: str) -> tuple[bool, str]:
        seen.append((config, collection))
        assert rt.conn is not None and rt.settings is settings
        return False, "eval gate on configuration 'small': FAIL: quality regressed"

    with database.connect() as conn:
        first = run(conn, settings, database, source=str(docs))
        assert first.activated
        live = versions.active_index_version(conn, "default")
        monkeypatch.setattr(worker, "activation_checks", lambda: [("gate", refuse)])
        job = run(conn, settings, database, mode="full", config="small", activate=True)
        assert seen == [("small", "default")]
        assert job.status == "succeeded" and not job.activated
        assert job.error == "not activated: eval gate on configuration 'small': FAIL: quality regressed"
        assert job.result is not None and job.result["activation_gate"]["passed"] is False
        assert versions.active_index_version(conn, "default") == live  # still answering from the old version
        built = versions.get_index_version(conn, job.index_version_id or 0)
        assert built.status == "ready"  # kept: it can be activated by hand, or gated again


def test_a_passing_check_activates_and_no_check_says_ungated(
    database: Database, settings: Settings, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with database.connect() as conn:
        run(conn, settings, database, source=str(docs))
        monkeypatch.setattr(worker, "activation_checks", lambda: [("gate", lambda rt, c, col: (True, "PASS"))])
        passed = run(conn, settings, database, mode="full", config="small", activate=True)
        assert passed.activated and passed.error is None
        assert passed.result is not None and passed.result["activation_gate"] == {
            "gated": True, "passed": True, "reason": "PASS"}  # fmt: skip
        monkeypatch.setattr(worker, "activation_checks", list)
        ungated = run(conn, settings, database, mode="full", activate=True)
        assert ungated.activated and ungated.result is not None
        assert ungated.result["activation_gate"]["reason"].startswith("activation was not gated")
        off = run(conn, settings.model_copy(update={"activation_checks": False}), database, mode="full", activate=True)
        assert off.result is not None and "RAGOPS_ACTIVATION_CHECKS=false" in off.result["activation_gate"]["reason"]
        incremental = run(conn, settings, database)  # not a full build asked to activate: no gate at all
        assert incremental.result is not None and "activation_gate" not in incremental.result
