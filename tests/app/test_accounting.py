"""API keys, the ledger, budgets under concurrency, rate limits, usage and metrics."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from app.accounting import LedgerEntry
from app.after_answer import AfterAnswer
from app.keys import VerifiedKeys, create_key, revoke_key
from app.main import create_app
from core.db import Database
from core.drift import store
from core.errors import AuthError
from tests.app.conftest import authed, make_settings
from tests.utils.accounts import QUESTION, new_key
from tests.utils.ledger import ledger_row
from tests.utils.metrics import REJECTED, metric_series
from tests.utils.server import serve_in_thread


@pytest.mark.parametrize(
    ("header", "path", "status", "message"),
    [
        (None, "/v1/query", 401, "missing API key"),
        ("Bearer", "/v1/query", 401, "missing API key"),
        ("Basic dXNlcjpwYXNz", "/v1/query", 401, "missing API key"),
        ("Bearer rgo_deadbeef_notthesecret", "/v1/query", 401, "invalid API key"),
        ("Bearer not-a-key", "/v1/query", 401, "invalid API key"),
        ("QUERY_ONLY", "/v1/usage", 403, "lacks the 'admin' scope"),
        ("REVOKED", "/v1/query", 401, "API key revoked"),
    ],
)
def test_auth_matrix(
    priced_app: Any, served_database: Database, header: str | None, path: str, status: int, message: str
) -> None:
    headers = {}
    if header == "QUERY_ONLY":
        headers["Authorization"] = f"Bearer {new_key(served_database, ['query'])}"
    elif header == "REVOKED":
        key = new_key(served_database, ["query"])
        with served_database.connect() as conn:
            revoke_key(conn, key.split("_")[1])
        headers["Authorization"] = f"Bearer {key}"
    elif header:
        headers["Authorization"] = header
    with TestClient(priced_app) as client:
        before = metric_series(client.get("/metrics").text)[REJECTED % "unauthenticated"]
        response = client.request("GET" if path == "/v1/usage" else "POST", path, json=QUESTION, headers=headers)
        after = metric_series(client.get("/metrics").text)[REJECTED % "unauthenticated"]
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    row = ledger_row(served_database, response.headers["X-Request-Id"])
    if status == 401:  # anonymous: counted, never ledgered
        assert row is None and after == before + 1
    else:  # a real key without the scope: its request is ledgered like any other failure
        assert row is not None and row["status"] == status and row["error_kind"] == "ScopeError"
        assert after == before


@pytest.mark.parametrize(
    "token",
    [
        "rgo_deadbeef_notthesecret",
        "not-a-key",
        "rgo_DEADBEEF_" + "a" * 32,
        "rgo_deadbeef_" + "a" * 31 + "!",
        "rgo_deadbeef_" + "a" * 33,
        "xyz_deadbeef_" + "a" * 32,
        "rgo_deadbeef_" + "a" * 100_000,
    ],
    ids=["short", "no-prefix", "upper-hex", "bad-char", "long", "wrong-prefix", "huge"],
)
def test_a_malformed_token_is_refused_without_a_database_connection(token: str) -> None:
    def no_connection() -> Any:
        raise AssertionError("a malformed token took a database connection")

    for ttl in (0.0, 2.0):
        with pytest.raises(AuthError, match="invalid API key"):
            VerifiedKeys(ttl_s=ttl).verify(no_connection, token)


def test_keys_are_stored_only_as_salted_hashes(served_database: Database) -> None:
    key = new_key(served_database, ["query"])
    secret = key.split("_", 2)[2]
    with served_database.connect() as conn:
        rows = conn.execute("SELECT salt, secret_hash, prefix FROM api_keys").fetchall()
    assert all(secret.encode() not in bytes(salt) + bytes(digest) for salt, digest, _ in rows)
    assert len({bytes(salt) for salt, _, _ in rows}) == len(rows)  # one salt per key


def test_success_is_one_ledger_row_with_tokens_cost_and_versions(priced: TestClient, served_database: Database) -> None:
    response = priced.post("/v1/query", json=QUESTION)
    assert response.status_code == 200
    body = response.json()
    row = ledger_row(served_database, body["request_id"])
    assert row is not None
    assert row["status"] == 200 and row["route"] == "/v1/query" and row["key_name"] == "tests"
    assert row["error_kind"] is None  # a complete answer is not a client that left
    assert row["prompt_tokens"] == body["usage"]["prompt_tokens"] > 0
    assert row["completion_tokens"] == body["usage"]["completion_tokens"]
    assert row["model"] == "extractive" and row["config_version"] == body["versions"]["config"]
    assert (
        float(row["cost_usd"])
        == pytest.approx(body["usage"]["cost_usd"])
        == pytest.approx(body["usage"]["prompt_tokens"] * 1000 / 1e6)
    )
    assert {"auth", "embed", "retrieve", "generate", "total"} <= set(row["latency_ms"])
    assert "PTO" not in str(row) and "first year" not in str(row)  # no question text in the ledger


def test_a_failing_after_answer_write_loses_neither_the_ledger_row_nor_the_other_writes(
    priced: TestClient, served_database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    accountant = priced.app.state.accountant  # type: ignore[attr-defined]
    request_id = f"after-{uuid.uuid4().hex}"
    marker = f"zq{uuid.uuid4().hex[:8]}"

    def broken(conn: psycopg.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (%s)", (marker,))

    def kept(conn: psycopg.Connection) -> None:
        store.record_observation(conn, store.Observation(request_id, "default", "default", None, [0.5]))

    writes = [AfterAnswer("broken", broken), AfterAnswer("drift", kept)]
    with caplog.at_level(logging.ERROR, logger="app.after_answer"):
        accountant.record(LedgerEntry(request_id=request_id, route="/v1/query", status=200), after=writes)
    assert ledger_row(served_database, request_id) is not None
    with served_database.connect() as conn:
        row = conn.execute("SELECT hits FROM drift_observations WHERE request_id = %s", (request_id,)).fetchone()
        conn.execute("DELETE FROM drift_observations WHERE request_id = %s", (request_id,))
    assert row == (1,)
    assert f"broken write failed for request {request_id}: UndefinedTable" in caplog.text
    assert marker not in caplog.text  # by type name: never the statement or its values


def test_a_4xx_is_recorded(priced: TestClient, served_database: Database) -> None:
    response = priced.post("/v1/query", json={"question": "x", "top_k": 99})
    assert response.status_code == 422
    row = ledger_row(served_database, response.headers["X-Request-Id"])
    assert row is not None and row["status"] == 422 and row["error_kind"] == "RequestValidationError"


def test_a_generator_failure_is_recorded(
    served_database: Database, priced_configs: Path, api_key: str, tmp_path: Path
) -> None:
    """vLLM is 'down': nothing listens on the port."""
    settings = make_settings(served_database, tmp_path, configs_dir=priced_configs, vllm_url="http://127.0.0.1:9/v1")
    with authed(TestClient(create_app(settings)), api_key) as client:
        response = client.post("/v1/query", json=QUESTION)
    assert response.status_code == 503
    row = ledger_row(served_database, response.headers["X-Request-Id"])
    assert row is not None and row["status"] == 503 and row["error_kind"] == "GeneratorUnavailable"
    assert row["completion_tokens"] == 0 and float(row["cost_usd"]) == 0


def test_budget_holds_under_20_concurrent_requests(
    priced_app: Any, priced: TestClient, served_database: Database
) -> None:
    cost = priced.post("/v1/query", json=QUESTION).json()["usage"]["cost_usd"]
    assert cost > 0
    key = new_key(served_database, ["query"], budget_usd_day=round(cost * 5.5, 9))
    headers = {"Authorization": f"Bearer {key}"}
    with serve_in_thread(priced_app, lifespan=False) as url:

        def one(_: int) -> httpx.Response:
            with httpx.Client(timeout=60) as http:
                return http.post(f"{url}/v1/query", json=QUESTION, headers=headers)

        with ThreadPoolExecutor(20) as pool:
            responses = list(pool.map(one, range(20)))
    statuses = [r.status_code for r in responses]
    unexpected = [r.text for r in responses if r.status_code not in (200, 429)]
    assert statuses.count(200) == 5 and statuses.count(429) == 15, (statuses, unexpected)
    with served_database.connect() as conn:
        spent, reserved = conn.execute(
            "SELECT spent_usd, reserved_usd FROM key_spend s JOIN api_keys k ON k.id = s.key_id "
            "WHERE k.prefix = %s AND period = 'day'",
            (key.split("_")[1],),
        ).fetchone()  # type: ignore[misc]
    assert reserved == 0
    assert spent <= Decimal(str(round(cost * 5.5, 9)))
    assert float(spent) == pytest.approx(cost * 5, rel=1e-6)


def test_over_budget_is_a_429_with_budget_spend_and_reset(priced: TestClient, served_database: Database) -> None:
    key = new_key(served_database, ["query"], budget_usd_day=0.000001)
    response = priced.post("/v1/query", json=QUESTION, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 429
    message = response.json()["error"]["message"]
    assert "daily budget of $0.000001 " in message and "resets at" in message and "spent or reserved" in message
    assert int(response.headers["Retry-After"]) > 0


@pytest.mark.parametrize("budget", ["0", "0.0000002"])
def test_budgets_below_a_micro_dollar_and_of_zero_are_enforced_as_stored(
    client: TestClient, served_database: Database, budget: str
) -> None:
    """With the repository's prices an extractive answer costs a fraction of a micro-dollar (its embedding)."""
    key = new_key(served_database, ["query"], budget_usd_day=Decimal(budget))
    headers = {"Authorization": f"Bearer {key}"}
    statuses, message = [], ""
    for _ in range(30):
        response = client.post("/v1/query", json=QUESTION, headers=headers)
        statuses.append(response.status_code)
        if response.status_code != 200:
            message = response.json()["error"]["message"]
            break
    shown = "$0.00" if budget == "0" else "$0.0000002"
    assert statuses[-1] == 429 and f"daily budget of {shown} for key" in message, (statuses, message)
    # $0 refuses the first priced request; $0.0000002 (once stored as 0) pays for some, then refuses.
    assert (statuses.count(200) > 0) == (budget != "0")
    with served_database.connect() as conn:
        spent = conn.execute(
            "SELECT coalesce(sum(spent_usd + reserved_usd), 0) FROM key_spend s JOIN api_keys k ON k.id = s.key_id "
            "WHERE k.prefix = %s AND period = 'day'",
            (key.split("_")[1],),
        ).fetchone()
    assert spent is not None and 0 <= spent[0] <= Decimal(budget)


def test_rate_limit_is_a_429_with_retry_after(priced: TestClient, served_database: Database) -> None:
    for _ in range(2):  # the minute may turn inside one burst: a second burst, on a fresh key, cannot straddle two
        key = new_key(served_database, ["query"], rpm=2)
        headers = {"Authorization": f"Bearer {key}"}
        statuses = [priced.post("/v1/query", json=QUESTION, headers=headers).status_code for _ in range(3)]
        if statuses == [200, 200, 429]:
            break
    assert statuses == [200, 200, 429]  # exactly rpm requests pass, the next one is refused
    response = priced.post("/v1/query", json=QUESTION, headers=headers)
    assert response.status_code == 429 and 1 <= int(response.headers["Retry-After"]) <= 60
    assert "requests per minute" in response.json()["error"]["message"]


def test_usage_totals_equal_the_ledger(priced: TestClient, served_database: Database) -> None:
    for _ in range(2):
        priced.post("/v1/query", json=QUESTION)
    for group_by in ("key", "day", "config", "model"):
        response = priced.get("/v1/usage", params={"group_by": group_by})
        body = response.json()
        with served_database.connect() as conn:  # the usage request's own row is written after it answered
            count, cost = conn.execute(
                "SELECT count(*), coalesce(sum(cost_usd), 0) FROM ledger "
                "WHERE created_at >= %s AND created_at < %s AND request_id <> %s",
                (body["start"], body["end"], response.headers["X-Request-Id"]),
            ).fetchone()  # type: ignore[misc]
        assert body["total_requests"] == count > 0
        assert body["total_cost_usd"] == pytest.approx(float(cost))


@pytest.mark.parametrize(
    ("start", "status"),
    [
        ("2026-11-01", 200), ("2026-11-01T00:00:00Z", 200),
        ("2026-11-01T16:00:00+16:00", 200),  # an offset PostgreSQL refuses: read as the same instant in UTC
        ("1700000000", 422), ("1.7e9", 422), ("-5", 422),
    ],
)  # fmt: skip
def test_usage_takes_dates_and_date_times_but_not_timestamps(priced: TestClient, start: str, status: int) -> None:
    """The README's ``?from=2026-11-01&to=2026-12-01`` is a date range; a bare number is refused, not read as epoch."""
    response = priced.get("/v1/usage", params={"from": start, "to": "2026-12-01"})
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json()["start"].startswith("2026-11-01T00:00:00")


def test_usage_rejects_a_bad_group(priced: TestClient) -> None:
    response = priced.get("/v1/usage", params={"group_by": "colour"})
    assert response.status_code == 422 and "group_by" in response.json()["error"]["message"]


def test_metrics_move_as_requests_are_made(priced: TestClient) -> None:
    def value(text: str, name: str) -> float:
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    before = priced.get("/metrics").text
    priced.post("/v1/query", json=QUESTION)
    after = priced.get("/metrics").text
    assert (
        value(after, 'ragops_requests_total{route="/v1/query",status="200"}')
        == value(before, 'ragops_requests_total{route="/v1/query",status="200"}') + 1
    )
    assert value(after, 'ragops_tokens_total{kind="prompt"') > value(before, 'ragops_tokens_total{kind="prompt"')
    assert value(after, "ragops_cost_usd_total") > value(before, "ragops_cost_usd_total")
    assert value(after, 'ragops_stage_seconds_count{stage="retrieve"}') > value(
        before, 'ragops_stage_seconds_count{stage="retrieve"}'
    )


def test_a_monthly_refusal_leaves_no_daily_reservation(priced: TestClient, served_database: Database) -> None:
    key = new_key(served_database, ["query"], budget_usd_day=100.0, budget_usd_month=0.000001)
    response = priced.post("/v1/query", json=QUESTION, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 429 and "monthly budget" in response.json()["error"]["message"]
    with served_database.connect() as conn:
        rows = conn.execute(
            "SELECT period, reserved_usd, spent_usd FROM key_spend s JOIN api_keys k ON k.id = s.key_id "
            "WHERE k.prefix = %s",
            (key.split("_")[1],),
        ).fetchall()
    assert all(reserved == 0 and spent == 0 for _, reserved, spent in rows), rows


def test_verified_keys_are_reused_briefly_and_revocation_lands_within_the_ttl(database: Database) -> None:
    with database.connect() as conn:
        secret = create_key(conn, "cached", ["query"], collections=["*"], configs=["*"])[1]
    cache = VerifiedKeys(ttl_s=0.3)
    lookups = 0

    @contextlib.contextmanager
    def counting_connection() -> Iterator[psycopg.Connection]:
        nonlocal lookups
        lookups += 1
        with database.connect() as conn:
            yield conn

    assert cache.verify(counting_connection, secret).name == "cached"
    assert cache.verify(counting_connection, secret).name == "cached"
    assert lookups == 1  # the second request needed no database round trip
    with database.connect() as conn:
        revoke_key(conn, secret.split("_")[1])
    time.sleep(0.35)
    with pytest.raises(AuthError, match="revoked"):
        cache.verify(counting_connection, secret)
    with pytest.raises(AuthError):  # failures are not cached: still refused, and looked up again
        cache.verify(counting_connection, secret)
    assert lookups == 3
    with pytest.raises(AuthError):
        VerifiedKeys(ttl_s=0.3).verify(counting_connection, secret[:-1] + "x")
