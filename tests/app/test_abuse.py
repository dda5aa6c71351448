"""Abuse resistance on a real socket: anonymous traffic, bogus tokens, and one key holding every thread.

Anonymous and unknown-route requests cost no ledger row and add no metric series; a malformed
token never waits for a database connection; a key past its concurrency limit gets 429 while
other keys are served, and its slots come back whatever way its requests ended.
"""

from __future__ import annotations

import json
import secrets
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from app.main import create_app
from core.db import Database
from tests.app.conftest import make_settings
from tests.utils.accounts import QUESTION, new_key, slowed
from tests.utils.metrics import REJECTED, metric_series
from tests.utils.server import free_port, serve_in_thread, wait_for

LIMIT = 2
STREAMED = {**QUESTION, "stream": True}


@pytest.fixture(scope="module")
def abuse_app(served_database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    """An app over the samples allowing each key ``LIMIT`` requests in flight; its lifespan runs here."""
    app = create_app(make_settings(served_database, tmp_path_factory.mktemp("abuse"), key_max_concurrent=LIMIT))
    with TestClient(app):
        yield app


@pytest.fixture(scope="module")
def url(abuse_app: FastAPI) -> Iterator[str]:
    with serve_in_thread(abuse_app, lifespan=False) as base:
        yield base


@pytest.fixture
def slow(abuse_app: FastAPI) -> Iterator[None]:
    """The real generator slowed between deltas, so requests stay in flight while the test acts."""
    with slowed(abuse_app):
        yield


def ledger_count(database: Database, request_ids: list[str]) -> int:
    with database.connect() as conn:
        row = conn.execute("SELECT count(*) FROM ledger WHERE request_id = ANY(%s)", (request_ids,)).fetchone()
    assert row is not None
    return int(row[0])


def bogus_token(i: int) -> str:
    """Malformed tokens, and well-formed ones no key was ever issued with."""
    return ["not-a-key", "rgo_x_y", f"rgo_{secrets.token_hex(4)}_{secrets.token_urlsafe(24)}"][i % 3]


def test_anonymous_and_unknown_routes_add_no_ledger_rows_and_no_metric_series(
    url: str, served_database: Database
) -> None:
    key = new_key(served_database, ["query"])
    with httpx.Client(base_url=url, timeout=30) as http:
        before = metric_series(http.get("/metrics").text)
        request_ids = []
        for i in range(300):
            headers = [{}, {"Authorization": f"Bearer {bogus_token(i)}"}, {"Authorization": f"Bearer {key}"}][i % 3]
            method = ("GET", "POST", "DELETE")[i % 3]
            response = http.request(method, f"/v1/{uuid.uuid4()}", headers=headers, json={"question": "x"})
            assert response.status_code == 404, response.text
            request_ids.append(response.headers["X-Request-Id"])
        for i in range(30):  # known routes, no valid key: refused before anything is spent
            response = http.post("/v1/query", json=QUESTION, headers={"Authorization": f"Bearer {bogus_token(i)}"})
            assert response.status_code == 401, response.text
            request_ids.append(response.headers["X-Request-Id"])
        after = metric_series(http.get("/metrics").text)
    assert set(after) == set(before), set(after) ^ set(before)
    assert after[REJECTED % "not_found"] == before[REJECTED % "not_found"] + 300
    assert after[REJECTED % "unauthenticated"] == before[REJECTED % "unauthenticated"] + 30
    assert ledger_count(served_database, request_ids) == 0


def test_route_metrics_use_templates_not_raw_paths(url: str, served_database: Database) -> None:
    key = new_key(served_database, ["query", "admin"])
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as http:
        for job_id in (987_654_321, 987_654_322):
            assert http.get(f"/v1/admin/jobs/{job_id}").status_code == 404
        template = 'ragops_requests_total{route="/v1/admin/jobs/{job_id}",status="404"}'
        wait_for(lambda: metric_series(http.get("/metrics").text).get(template, 0) >= 2)  # counted after the response
        series = metric_series(http.get("/metrics").text)
    assert not any("98765432" in name for name in series)


def test_bogus_tokens_in_a_crowd_do_not_fail_a_valid_key(url: str, served_database: Database) -> None:
    key = new_key(served_database, ["query"])

    def send(i: int) -> int:
        token = key if i == 50 else bogus_token(i)
        with httpx.Client(timeout=60) as http:
            response = http.post(f"{url}/v1/query", json=QUESTION, headers={"Authorization": f"Bearer {token}"})
        return response.status_code

    with ThreadPoolExecutor(101) as pool:
        statuses = list(pool.map(send, range(101)))
    assert statuses[50] == 200
    assert statuses[:50] + statuses[51:] == [401] * 100


def test_a_key_past_its_concurrency_limit_gets_429_and_others_are_served(
    url: str, slow: None, served_database: Database, abuse_app: FastAPI
) -> None:
    greedy, other = new_key(served_database, ["query"]), new_key(served_database, ["query"])
    inflight = abuse_app.state.accountant.inflight
    with httpx.Client(base_url=url, timeout=60) as http:
        streams = [
            http.stream("POST", "/v1/query", json=STREAMED, headers={"Authorization": f"Bearer {greedy}"})
            for _ in range(LIMIT)
        ]
        lines = [stream.__enter__().iter_lines() for stream in streams]  # kept: a dropped iterator hangs up
        for line_iter in lines:  # each one generating now, holding its slot
            assert any(line.startswith("event: delta") for line in line_iter)
        refused = http.post("/v1/query", json=QUESTION, headers={"Authorization": f"Bearer {greedy}"})
        assert refused.status_code == 429, refused.text
        assert refused.headers["Retry-After"] == "1"
        assert f"the limit is {LIMIT} concurrent requests per key" in refused.json()["error"]["message"]
        served = http.post("/v1/query", json=QUESTION, headers={"Authorization": f"Bearer {other}"})
        assert served.status_code == 200, served.text
        for stream in streams:  # hang up mid-stream: the slots come back when the meters close
            stream.__exit__(None, None, None)
    key_id = _key_id(served_database, greedy)
    wait_for(lambda: inflight.count(key_id) == 0)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"question": ""}, 422),
        ({"question": "x", "config": "no-such-config"}, 404),
        (STREAMED, 200),
        (QUESTION, 200),
    ],
    ids=["invalid", "unknown-config", "streamed", "whole"],
)
def test_every_outcome_gives_the_slot_back(
    url: str, served_database: Database, abuse_app: FastAPI, body: dict[str, Any], status: int
) -> None:
    key = new_key(served_database, ["query"])
    with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
        for _ in range(3 * LIMIT):  # more than the limit, one after another: none may leak a slot
            assert http.post("/v1/query", json=body).status_code == status
    wait_for(lambda: abuse_app.state.accountant.inflight.count(_key_id(served_database, key)) == 0)


def _key_id(database: Database, key: str) -> int:
    with database.connect() as conn:
        row = conn.execute("SELECT id FROM api_keys WHERE prefix = %s", (key.split("_")[1],)).fetchone()
    assert row is not None
    return int(row[0])


class BodyCounter:
    """ASGI wrapper counting the request body bytes the application pulled from the server."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.received = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted() -> Message:
            message = await receive()
            self.received += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


def post_head_and_read(base: str, path: str, headers: dict[str, str], declared: int, sent: bytes) -> tuple[int, dict]:
    """Declare a ``declared``-byte body, send only ``sent`` of it, and read the response the server gives anyway."""
    host, port = base.removeprefix("http://").split(":")
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {declared}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection((host, int(port)), timeout=10) as sock:  # a server waiting for the body times out
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + sent)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
        while len(body) < length:
            body += sock.recv(65536)
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize(
    ("authorization", "status"),
    [(None, 401), ("Bearer not-a-key", 401), ("UNKNOWN", 401), ("QUERY_ONLY", 403)],
    ids=["missing", "malformed", "unknown", "query-scope"],
)
def test_an_upload_without_an_admin_key_is_refused_before_its_body_is_read(
    abuse_app: FastAPI, served_database: Database, authorization: str | None, status: int
) -> None:
    if authorization == "UNKNOWN":
        authorization = f"Bearer rgo_{secrets.token_hex(4)}_{secrets.token_urlsafe(24)}"
    elif authorization == "QUERY_ONLY":
        authorization = f"Bearer {new_key(served_database, ['query'])}"
    headers = {"Content-Type": "multipart/form-data; boundary=xyz"}
    if authorization:
        headers["Authorization"] = authorization
    first = b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="big.md"\r\n\r\n' + b"#" * 65536
    counter = BodyCounter(abuse_app)
    with serve_in_thread(counter, lifespan=False) as base:
        code, body = post_head_and_read(base, "/v1/admin/documents", headers, 50 * 1024 * 1024, first)
    assert code == status and body["error"]["code"] == status, body
    assert counter.received == 0  # not a byte of the 50 MB was read, so nothing was spooled or stored
    uploads = abuse_app.state.settings.uploads_dir
    assert not uploads.exists() or not any(uploads.rglob("*"))


def test_readiness_is_probed_once_per_cache_period_and_names_no_internals(
    served_database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model server that is down: /readyz says which check fails, not where it lives or what it raised."""
    down = f"http://10.0.0.1:{free_port()}/v1"  # an internal address that must not reach the body
    settings = make_settings(served_database, tmp_path, vllm_url=down, readiness_cache_s=60, readiness_timeout_s=0.5)
    app = create_app(settings)
    probes = 0
    with TestClient(app) as client:
        pipeline = app.state.pipeline
        generator = pipeline.generator(pipeline.catalog.config(None))
        check_ready = generator.check_ready

        def counted(timeout: float) -> None:
            nonlocal probes
            probes += 1
            check_ready(timeout)

        monkeypatch.setattr(generator, "check_ready", counted)
        answers = [client.get("/readyz") for _ in range(5)]
    assert probes == 1
    assert {r.status_code for r in answers} == {503}
    assert answers[0].json() == {
        "status": "not ready",
        "checks": {"database": "ok", "index": "ok", "generator": "failing"},
    }
    assert "10.0.0.1" not in answers[0].text and "error" not in answers[0].text


def test_metrics_can_move_to_a_port_of_their_own(served_database: Database, tmp_path: Path) -> None:
    port = free_port()
    app = create_app(make_settings(served_database, tmp_path, metrics_port=port))
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 404
        client.get("/healthz")
        internal = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert internal.status_code == 200 and 'ragops_rejected_requests_total{reason="not_found"} 1.0' in internal.text
    with pytest.raises(httpx.ConnectError):  # stopped with the app
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
