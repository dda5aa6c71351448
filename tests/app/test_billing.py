"""Billing integrity: hang-ups at any point, holds in flight, and holds a dead process left behind.

Everything runs against a real uvicorn server on loopback (a client can only hang up on a real
socket), the real extractive generator and the real PostgreSQL ledger.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from core.db import Database
from tests.conftest import REPO
from tests.utils.accounts import QUESTION, new_key, slowed
from tests.utils.ledger import ledger_row
from tests.utils.server import serve_in_thread, wait_for

STREAMED = {**QUESTION, "stream": True}
# Every answering route, streamed: a hang-up on any of them is settled the same way.
STREAMED_ROUTES = {
    "/v1/query": STREAMED,
    "/v1/chat": {"messages": [{"role": "user", "content": QUESTION["question"]}], "stream": True},
    "/v1/chat/completions": {
        "model": "default",
        "messages": [{"role": "user", "content": QUESTION["question"]}],
        "stream": True,
    },
}


@pytest.fixture(scope="module")
def url(priced_app: Any, priced: Any) -> Iterator[str]:
    """The priced app (prompts cost money, completions nothing) on a real socket; its lifespan runs in `priced`."""
    with serve_in_thread(priced_app, lifespan=False) as base:
        yield base


@pytest.fixture
def slow(priced_app: Any) -> Iterator[None]:
    """The real generator slowed between deltas, so that a client can hang up mid-stream."""
    with slowed(priced_app):
        yield


def key_prefix(key: str) -> str:
    return key.split("_")[1]


def holds(database: Database, key: str) -> tuple[Decimal, int]:
    """The key's reserved dollars (all periods) and its hold rows."""
    with database.connect() as conn:
        row = conn.execute(
            """SELECT coalesce(sum(s.reserved_usd), 0),
                      (SELECT count(*) FROM budget_holds h JOIN api_keys k ON k.id = h.key_id WHERE k.prefix = %s)
               FROM key_spend s JOIN api_keys k ON k.id = s.key_id WHERE k.prefix = %s""",
            (key_prefix(key), key_prefix(key)),
        ).fetchone()
    assert row is not None
    return row[0], int(row[1])


def ledger_rows(database: Database, key: str) -> list[dict[str, Any]]:
    with database.connect() as conn:
        cur = conn.execute(
            "SELECT l.status, l.error_kind, l.prompt_tokens, l.completion_tokens, l.cost_usd FROM ledger l "
            "JOIN api_keys k ON k.id = l.key_id WHERE k.prefix = %s",
            (key_prefix(key),),
        )
        names = [c.name for c in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def send_raw(base: str, key: str, route: str, payload: dict[str, Any]) -> socket.socket:
    """POST ``payload`` to ``route`` on a raw socket (so the test decides when the client hangs up)."""
    host, port = base.removeprefix("http://").split(":")
    body = json.dumps(payload).encode()
    head = (
        f"POST {route} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(head + body)
    return sock


def hang_up_before_the_body(base: str, key: str, route: str = "/v1/query") -> None:
    """Send a streamed request and close the socket without reading a byte of the response."""
    with send_raw(base, key, route, STREAMED_ROUTES[route]) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def test_a_hang_up_mid_stream_bills_the_prompt_and_every_token_produced(
    url: str, slow: None, priced: Any, served_database: Database
) -> None:
    full = priced.post("/v1/query", json=QUESTION).json()["usage"]
    key = new_key(served_database, ["query"], budget_usd_day=1000.0)
    with httpx.Client(timeout=30) as http:
        headers = {"Authorization": f"Bearer {key}"}
        with http.stream("POST", f"{url}/v1/query", json=STREAMED, headers=headers) as response:
            request_id = response.headers["X-Request-Id"]
            for line in response.iter_lines():
                if line.startswith("event: delta"):
                    break  # hang up after the first token
    row = ledger_row(served_database, request_id, wait_s=10)
    assert row is not None
    assert row["status"] == 499 and row["error_kind"] == "client_disconnected"
    # The prompt went to the model: all of it is billed, as the whole answer's was.
    assert row["prompt_tokens"] == full["prompt_tokens"] > 0
    assert 1 <= row["completion_tokens"] < full["completion_tokens"]
    assert float(row["cost_usd"]) == pytest.approx(full["cost_usd"])  # this pricing charges prompts only
    wait_for(lambda: holds(served_database, key) == (0, 0))


@pytest.mark.parametrize("route", sorted(STREAMED_ROUTES))
def test_a_hang_up_before_the_body_has_a_ledger_row_and_no_hold(
    url: str, served_database: Database, route: str
) -> None:
    key = new_key(served_database, ["query"], budget_usd_day=1000.0)
    hang_up_before_the_body(url, key, route)
    wait_for(lambda: len(ledger_rows(served_database, key)) == 1)
    [row] = ledger_rows(served_database, key)
    assert row["status"] == 499 and row["error_kind"] == "client_disconnected", row
    wait_for(lambda: holds(served_database, key) == (0, 0))


@pytest.fixture
def slow_retrieval(priced_app: Any) -> Iterator[list[str]]:
    """Retrieval held 0.5 s, so a client can hang up before generation; yields the questions generated.

    A fake in timing only: the real pipeline retrieves and generates, the real generator is wrapped
    to note each question it is asked.
    """
    pipeline = priced_app.state.pipeline
    prepare, stream = pipeline.prepare, pipeline.stream
    generated: list[str] = []

    def slow_prepare(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)
        return prepare(*args, **kwargs)

    def noted_stream(prepared: Any, **kwargs: Any) -> Any:
        generated.append(prepared.question.text)
        return stream(prepared, **kwargs)

    pipeline.prepare, pipeline.stream = slow_prepare, noted_stream
    try:
        yield generated
    finally:
        pipeline.prepare, pipeline.stream = prepare, stream


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_hang_up_during_retrieval_generates_nothing_and_bills_no_completion(
    url: str, served_database: Database, slow_retrieval: list[str], stream: bool
) -> None:
    key = new_key(served_database, ["query"], budget_usd_day=1000.0)
    with send_raw(url, key, "/v1/query", {**QUESTION, "stream": stream}):
        time.sleep(0.1)  # the request is read and retrieving; then the socket closes
    wait_for(lambda: len(ledger_rows(served_database, key)) == 1)
    [row] = ledger_rows(served_database, key)
    assert row["status"] == 499 and row["error_kind"] == "client_disconnected", row
    assert row["completion_tokens"] == 0
    assert slow_retrieval == []  # the generator was never asked
    wait_for(lambda: holds(served_database, key) == (0, 0))


def test_50_early_hang_ups_leave_nothing_reserved(url: str, served_database: Database) -> None:
    key = new_key(served_database, ["query"], budget_usd_day=1000.0, budget_usd_month=5000.0)
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda _: hang_up_before_the_body(url, key), range(50)))
    wait_for(lambda: len(ledger_rows(served_database, key)) == 50, timeout_s=120)
    rows = ledger_rows(served_database, key)
    # Whether a hang-up lands before the stream starts or during it, each is one row and settled.
    assert all(r["status"] in (200, 499) for r in rows), rows
    wait_for(lambda: holds(served_database, key) == (0, 0))
    # And the key can still spend its budget: nothing was frozen.
    with httpx.Client(timeout=30) as http:
        answered = http.post(f"{url}/v1/query", json=QUESTION, headers={"Authorization": f"Bearer {key}"})
    assert answered.status_code == 200, answered.text


def test_tokens_per_minute_counts_requests_still_running(
    url: str, slow: None, priced: Any, served_database: Database
) -> None:
    # One request's hold (prompt + max_tokens) fills this limit by itself.
    key = new_key(served_database, ["query"], tpm=50)
    headers = {"Authorization": f"Bearer {key}"}
    if datetime.now(UTC).second > 45:  # both requests must fall in one minute's window
        time.sleep(61 - datetime.now(UTC).second)
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{url}/v1/query", json=STREAMED, headers=headers) as first:
            lines = first.iter_lines()
            assert any(line.startswith("event: delta") for line in lines)  # generating now, not finished
            second = http.post(f"{url}/v1/query", json=QUESTION, headers=headers)
            assert second.status_code == 429, second.text
            assert "tokens per minute" in second.json()["error"]["message"]
            rest = list(lines)
        assert any(line.startswith("event: done") for line in rest)


def test_the_tokens_per_minute_hold_is_replaced_by_the_tokens_used(url: str, served_database: Database) -> None:
    key = new_key(served_database, ["query"], tpm=1_000_000)
    with httpx.Client(timeout=30) as http:
        response = http.post(f"{url}/v1/query", json=QUESTION, headers={"Authorization": f"Bearer {key}"})
    usage = response.json()["usage"]

    def window_tokens() -> int:
        with served_database.connect() as conn:
            row = conn.execute(
                "SELECT coalesce(sum(tokens), 0) FROM rate_windows w JOIN api_keys k ON k.id = w.key_id "
                "WHERE k.prefix = %s",
                (key_prefix(key),),
            ).fetchone()
        return int(row[0]) if row else -1

    wait_for(lambda: window_tokens() == usage["prompt_tokens"] + usage["completion_tokens"])


KILLED_MID_REQUEST = """
import os, signal, sys
from datetime import datetime, UTC
from decimal import Decimal
from app.accounting import reserve_budget
from app.keys import ApiKey
from core.db import Database
database = Database(url=sys.argv[1])
conn = database.connect()
row = conn.execute("SELECT id FROM api_keys WHERE prefix = %s", (sys.argv[2],)).fetchone()
key = ApiKey(id=row[0], name="held", prefix=sys.argv[2], scopes=("query",), collections=("*",), configs=("*",),
             budget_usd_day=Decimal(sys.argv[3]),
             budget_usd_month=None, rpm=None, tpm=None, created_at=datetime.now(UTC), revoked_at=None)
reserve_budget(conn, key, float(sys.argv[3]), "killed-" + sys.argv[2])
os.kill(os.getpid(), signal.SIGKILL)  # dies holding the whole budget, never settling
"""


def test_a_hold_left_by_a_killed_process_is_released_by_the_sweeper(
    url: str, served_database: Database, priced: Any
) -> None:
    cost = priced.post("/v1/query", json=QUESTION).json()["usage"]["cost_usd"]
    budget = round(cost * 3, 9)
    key = new_key(served_database, ["query"], budget_usd_day=budget)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MID_REQUEST, served_database.url, key_prefix(key), str(budget)],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    assert holds(served_database, key) == (Decimal(str(budget)), 1)
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=30) as http:
        frozen = http.post(f"{url}/v1/query", json=QUESTION, headers=headers)
        assert frozen.status_code == 429  # the hold is recent: it may belong to a request still running
        with served_database.connect() as conn:  # time passes beyond the bound (15 minutes by default)
            conn.execute(
                "UPDATE budget_holds SET created_at = now() - interval '1 hour' WHERE request_id LIKE 'killed-%'"
            )
        released = http.post(f"{url}/v1/query", json=QUESTION, headers=headers)
    assert released.status_code == 200, released.text
    wait_for(lambda: holds(served_database, key) == (0, 0))
