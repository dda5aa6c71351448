"""Staged rollouts over HTTP: shadow never shown, automatic rollback, sticky canary, abort under load, the ledger.

Real PostgreSQL, embeddings, Presidio and the extractive generator throughout. The rollout's
offline gate run is recorded directly with ``store.record_gate`` (the gate itself, a full eval run,
is exercised by tests/evals/test_rollout_gate.py); the rollout worker is driven by ``run_once``
instead of its thread, so each test decides when the queue drains.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from app.main import create_app
from app.rollouts import service, store
from app.rollouts.shadow import ShadowWorker
from core.db import Database
from core.settings import Settings
from tests.app.conftest import authed, make_settings
from tests.conftest import REPO
from tests.utils.accounts import PRICED, new_key

QUESTIONS = [json.loads(line)["question"] for line in (REPO / "evals/datasets/sample.jsonl").read_text().splitlines()]
ANSWERABLE = QUESTIONS[:24]
GUARDS = {"shadow_sample_rate": 1.0, "canary_share": 0.5, "canary_sample_rate": 1.0, "min_samples": 8,
          "max_samples": 40, "guards": {"topk_overlap": 0.25, "citations": 1.0, "refused": 0.15}}  # fmt: skip


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """default (with test guards), broken (keyword-only, top_k 1, same index), and prices that make answers cost."""
    folder = tmp_path_factory.mktemp("rollout-configs")
    default = yaml.safe_load((REPO / "configs/default.yaml").read_text())
    default["rollout"] = {**default["rollout"], **GUARDS}
    (folder / "default.yaml").write_text(yaml.safe_dump(default))
    broken = {**default, "retrieval": {**default["retrieval"], "mode": "keyword", "top_k": 1}}
    (folder / "broken.yaml").write_text(yaml.safe_dump(broken))
    unfiltered = {**default, "pii": {**default["pii"], "enabled": False}}
    (folder / "unfiltered.yaml").write_text(yaml.safe_dump(unfiltered))
    (folder / "pricing.yaml").write_text(PRICED)
    shutil.copy(REPO / "configs/default.yaml", folder / "same.yaml")  # identical to default but its name
    return folder


@pytest.fixture(scope="module")
def settings(private_database: Database, configs: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(private_database, tmp_path_factory.mktemp("rollout-app"), configs_dir=configs,
                         vllm_url=None, worker_in_process=False, key_max_concurrent=0)  # fmt: skip


@pytest.fixture(scope="module")
def admin_key(private_database: Database) -> str:
    return new_key(private_database, ["admin", "query"])


@pytest.fixture
def api(settings: Settings, admin_key: str, private_database: Database) -> Iterator[TestClient]:
    with authed(TestClient(create_app(settings)), admin_key) as client:
        yield client
    with private_database.connect() as conn:  # no test leaves a rollout running for the next
        for rollout in store.active_rollouts(conn).values():
            service.abort_rollout(conn, rollout.id, "test cleanup")


def worker(client: TestClient) -> ShadowWorker:
    app: Any = client.app
    return ShadowWorker(app.state.pipeline, app.state.accountant)


def gate(database: Database, config: str | None = "broken", passed: bool = True) -> int:
    with database.connect() as conn:
        return store.record_gate(conn, {"config": config, "prompt": None, "index_version": None}, passed,
                                 "PASS" if passed else "FAIL: quality regressed", "0" * 64, {}).id  # fmt: skip


def start(client: TestClient, database: Database, **body: Any) -> dict[str, Any]:
    body = {"config": "broken", "gate_id": gate(database, body.get("config", "broken")), **body}
    response = client.post("/v1/admin/rollouts", json=body)
    assert response.status_code == 201, response.text
    rollout: dict[str, Any] = response.json()
    client.app.state.pipeline.rollouts.forget()  # type: ignore[attr-defined]
    return rollout


def ask(client: TestClient, question: str) -> dict[str, Any]:
    response = client.post("/v1/query", json={"question": question})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def seen(body: dict[str, Any]) -> tuple[Any, ...]:
    """What a user sees of an answer, apart from ids, timings and the rollout tag."""
    versions = {k: v for k, v in body["versions"].items() if k not in ("rollout", "rollout_side")}
    return body["answer"], json.dumps(body["citations"], sort_keys=True), json.dumps(versions, sort_keys=True)


def test_users_never_receive_a_shadow_answer(api: TestClient, private_database: Database) -> None:
    rollout = start(api, private_database)
    with_shadow = [ask(api, q) for q in ANSWERABLE]
    assert all(b["versions"]["rollout"] == rollout["id"] and b["versions"]["rollout_side"] == "live"
               for b in with_shadow)  # fmt: skip
    with private_database.connect() as conn:
        queued = conn.execute("SELECT count(*) FROM rollout_queue").fetchone()
    assert queued is not None and queued[0] == len(ANSWERABLE)  # sample rate 1: every question queued
    while worker(api).run_once():
        pass
    api.post(f"/v1/admin/rollouts/{rollout['id']}/abort")
    api.app.state.pipeline.rollouts.forget()  # type: ignore[attr-defined]
    without = [ask(api, q) for q in ANSWERABLE]
    assert [seen(b) for b in with_shadow] == [seen(b) for b in without]
    assert all(b["versions"]["rollout"] is None for b in without)
    with private_database.connect() as conn:
        assert conn.execute("SELECT count(*) FROM rollout_queue").fetchone() == (0,)


def test_queued_questions_are_pii_filtered_and_deleted_after_use(api: TestClient, private_database: Database) -> None:
    start(api, private_database)
    ask(api, "My email is dana.whitfield@example.org: how many PTO days do I get?")
    with private_database.connect() as conn:
        texts = [r[0] for r in conn.execute("SELECT question FROM rollout_queue").fetchall()]
    assert len(texts) == 1 and "dana.whitfield@example.org" not in texts[0] and "<EMAIL_ADDRESS>" in texts[0]
    worker(api).run_once()
    with private_database.connect() as conn:
        assert conn.execute("SELECT count(*) FROM rollout_queue").fetchone() == (0,)
        dump = json.dumps(conn.execute("SELECT live, candidate FROM rollout_samples").fetchall())
    assert "PTO" not in dump and "example.org" not in dump


def test_broken_candidate_is_rolled_back_during_shadow(api: TestClient, private_database: Database) -> None:
    rollout = start(api, private_database)
    shadow = worker(api)
    for question in ANSWERABLE:
        ask(api, question)
        shadow.run_once()
        state = api.get(f"/v1/admin/rollouts/{rollout['id']}").json()
        if state["status"] != "shadow":
            break
    assert state["status"] == "rolled_back", state
    assert state["reason"].startswith("shadow: ") and "worse by" in state["reason"]
    assert state["samples"]["shadow"] >= GUARDS["min_samples"]
    assert state["decision"]["verdict"] == "rollback"


def canary(api: TestClient, database: Database) -> dict[str, Any]:
    rollout = start(api, database)
    with database.connect() as conn, conn.transaction():
        store.set_status(conn, rollout["id"], "canary")
    api.app.state.pipeline.rollouts.forget()  # type: ignore[attr-defined]
    return rollout


def sides(client: TestClient, keys: list[str]) -> dict[str, set[str | None]]:
    result: dict[str, set[str | None]] = {}
    for key in keys:
        for question in ANSWERABLE[:3]:
            body = client.post("/v1/query", json={"question": question}, headers={"Authorization": f"Bearer {key}"})
            assert body.status_code == 200, body.text
            result.setdefault(key, set()).add(body.json()["versions"]["rollout_side"])
    return result


def test_canary_is_sticky_per_key_and_survives_a_restart(
    api: TestClient, settings: Settings, private_database: Database
) -> None:
    rollout = canary(api, private_database)
    keys = [new_key(private_database, ["query"]) for _ in range(10)]
    before = sides(api, keys)
    assert all(len(s) == 1 for s in before.values()), before  # one key, one side
    assert {next(iter(s)) for s in before.values()} == {"live", "candidate"}, before
    with TestClient(create_app(settings)) as restarted:  # a new process: the state comes from PostgreSQL
        after = sides(restarted, keys)
    assert after == before
    with private_database.connect() as conn:
        rows = conn.execute(
            "SELECT rollout_side, config_version FROM ledger WHERE rollout_id = %s AND route = '/v1/query'",
            (rollout["id"],),
        ).fetchall()
    assert {side for side, _ in rows} == {"live", "candidate"}
    assert all(config.startswith("broken@") == (side == "candidate") for side, config in rows)


def test_negative_canary_feedback_rolls_the_candidate_back(api: TestClient, private_database: Database) -> None:
    """Users' ratings of canary-side answers count: more negative than the guard's share rolls back."""
    rollout = canary(api, private_database)
    with private_database.connect() as conn:
        conn.execute(
            """UPDATE rollouts SET guards = guards || '{"max_negative_feedback_share": 0.5}' WHERE id = %s""",
            (rollout["id"],),
        )
    rated = 0
    for key in [new_key(private_database, ["query"]) for _ in range(8)]:
        headers = {"Authorization": f"Bearer {key}"}
        body = api.post("/v1/query", json={"question": ANSWERABLE[0]}, headers=headers).json()
        if body["versions"]["rollout_side"] == "candidate":
            rating = api.post("/v1/feedback", json={"request_id": body["request_id"], "rating": -1}, headers=headers)
            assert rating.status_code == 200, rating.text
            rated += 1
    assert rated, "no key landed on the candidate side"
    with private_database.connect() as conn:
        assert store.feedback_counts(conn, rollout["id"]) == (rated, rated)
        ended = service.apply_decision(conn, rollout["id"])
    assert ended.status == "rolled_back" and ended.reason is not None and "canary ratings negative" in ended.reason


def test_abort_restores_live_atomically_while_queries_run(api: TestClient, private_database: Database) -> None:
    rollout = canary(api, private_database)
    keys = [new_key(private_database, ["query"]) for _ in range(6)]
    statuses: list[int] = []
    after_abort: list[str | None] = []
    aborted = threading.Event()
    stop = threading.Event()

    def load(key: str) -> None:
        n = 0
        while not stop.is_set():
            began_after_abort = aborted.is_set()
            response = api.post("/v1/query", json={"question": ANSWERABLE[n % 5]},
                                headers={"Authorization": f"Bearer {key}"})  # fmt: skip
            statuses.append(response.status_code)
            if began_after_abort and response.status_code == 200:
                after_abort.append(response.json()["versions"]["rollout_side"])
            n += 1

    threads = [threading.Thread(target=load, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    time.sleep(3)
    assert api.post(f"/v1/admin/rollouts/{rollout['id']}/abort").json()["status"] == "aborted"
    time.sleep(1.5)  # routers re-read active rollouts at least once a second
    aborted.set()
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join()
    assert statuses and set(statuses) == {200}
    assert after_abort and set(after_abort) == {None}  # every answer after the abort: live, outside any rollout


def test_ledger_separates_shadow_cost_from_users(api: TestClient, private_database: Database) -> None:
    rollout = start(api, private_database)
    user = new_key(private_database, ["query"], rpm=1000)
    for question in ANSWERABLE[:6]:
        response = api.post("/v1/query", json={"question": question}, headers={"Authorization": f"Bearer {user}"})
        assert response.status_code == 200
    while worker(api).run_once():
        pass
    with private_database.connect() as conn:
        shadow = conn.execute(
            "SELECT count(*), sum(cost_usd), count(key_id) FROM ledger "
            "WHERE rollout_id = %s AND rollout_side = 'shadow'",
            (rollout["id"],),
        ).fetchone()
        users = conn.execute(
            "SELECT count(*), sum(cost_usd) FROM ledger l JOIN api_keys k ON k.id = l.key_id "
            "WHERE l.rollout_id = %s AND k.prefix = %s",
            (rollout["id"], user.split("_")[1]),
        ).fetchone()
        requests = conn.execute(
            "SELECT sum(w.requests) FROM rate_windows w JOIN api_keys k ON k.id = w.key_id WHERE k.prefix = %s",
            (user.split("_")[1],),
        ).fetchone()
    assert shadow is not None and shadow[0] == 6 and shadow[1] > 0 and shadow[2] == 0  # no key billed
    assert users is not None and users[0] == 6 and users[1] > 0
    assert requests == (6,)  # the shadow answers took nothing from the key's rate limit
    usage = api.get("/v1/usage", params={"group_by": "payer"}).json()["rows"]
    payers = {row["group"]: row for row in usage}
    assert float(payers["operator (rollout shadow)"]["cost_usd"]) >= float(shadow[1])


def test_admin_routes_keep_to_the_keys_collections(api: TestClient, private_database: Database) -> None:
    rollout = start(api, private_database)
    other = new_key(private_database, ["admin"], collections=["elsewhere"])
    headers = {"Authorization": f"Bearer {other}"}
    assert api.get(f"/v1/admin/rollouts/{rollout['id']}", headers=headers).status_code == 404
    assert api.post(f"/v1/admin/rollouts/{rollout['id']}/abort", headers=headers).status_code == 404
    assert api.get("/v1/admin/rollouts", headers=headers).json()["rollouts"] == []
    refused = api.post(
        "/v1/admin/rollouts",
        headers=headers,
        json={"collection": "default", "config": "broken", "gate_id": gate(private_database)},
    )
    assert refused.status_code == 403  # fmt: skip
    query_only = new_key(private_database, ["query"])
    assert api.get("/v1/admin/rollouts", headers={"Authorization": f"Bearer {query_only}"}).status_code == 403


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"config": "nope"}, 404, "unknown configuration"),
        ({"config": "broken", "index_version": 999}, 404, "no index version 999"),
        ({"config": "broken", "prompt": "nope"}, 404, "unknown prompt"),
        ({"config": "broken", "gate_id": 99999}, 404, "no gate run"),
        ({"config": "default"}, 422, "the candidate is the live version"),
        ({"config": "broken", "live_config": "unfiltered"}, 422, "shadow cannot run"),
        ({"config": "broken", "junk": 1}, 422, "junk"),
        ({"config": "broken", "gate_id": "x"}, 422, "gate_id"),
        ({"config": "broken", "collection": "no-such-collection"}, 404, "no collection"),
        ({"config": "broken", "collection": "a\x00b"}, 422, "collection"),
        ({"config": "bro ken"}, 422, "config"),
    ],
)
def test_bad_input_is_refused(
    api: TestClient, private_database: Database, body: dict[str, Any], status: int, message: str
) -> None:
    body = {"gate_id": gate(private_database, None), **body}
    response = api.post("/v1/admin/rollouts", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    with private_database.connect() as conn:
        assert store.active_rollouts(conn) == {}


def test_failed_gate_and_second_rollout_are_conflicts(api: TestClient, private_database: Database) -> None:
    failed = api.post("/v1/admin/rollouts", json={"config": "broken", "gate_id": gate(private_database, passed=False)})
    assert failed.status_code == 409 and "did not pass" in failed.json()["error"]["message"]
    other = api.post("/v1/admin/rollouts", json={"config": "broken", "gate_id": gate(private_database, "same")})
    assert other.status_code == 409 and "judged another candidate" in other.json()["error"]["message"]
    first = start(api, private_database)
    second = api.post("/v1/admin/rollouts", json={"config": "broken", "gate_id": gate(private_database)})
    assert second.status_code == 409 and f"rollout {first['id']}" in second.json()["error"]["message"]
    assert api.post(f"/v1/admin/rollouts/{first['id']}/abort").status_code == 200
    assert api.post(f"/v1/admin/rollouts/{first['id']}/abort").status_code == 409
    assert api.post("/v1/admin/rollouts/424242/promote").status_code == 404
