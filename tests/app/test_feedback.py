"""Feedback on answers and the opt-in transcript store, through the real API over a real database.

Real Presidio filters the free text and the transcripts; the leak scans read every table.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from psycopg.rows import dict_row
from typer.testing import CliRunner

from app.feedback import CHORES, parse_since
from app.main import create_app
from core.config import parse_config
from core.db import Database
from core.errors import BadRequest
from ingest.worker import Worker
from tests.app.conftest import make_settings
from tests.conftest import REPO
from tests.utils.accounts import new_key
from tests.utils.ledger import ledger_row, table_dump
from tests.utils.sse import parse_sse

# Made-up values in valid formats (Presidio rejects well-known sample numbers).
NAME, EMAIL, SSN = "Marisol Quintero", "marisol.quintero@example.net", "609-52-1378"
KEPT_QUESTION = f"I'm {NAME}. How much paid parental leave does a birthing parent receive?"
OFF_QUESTION = "Which days do hybrid employees have to be in the office for the anchor meetings?"


@pytest.fixture(scope="module")
def feedback_configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """default (transcripts off, as shipped) and ``kept``: the same with the transcript store on for 7 days."""
    folder = tmp_path_factory.mktemp("feedback-configs")
    for name in ("default.yaml", "pricing.yaml"):
        shutil.copy(REPO / "configs" / name, folder / name)
    kept = (REPO / "configs" / "default.yaml").read_text()
    kept = kept.replace("    enabled: false\n    retention_days: 30", "    enabled: true\n    retention_days: 7")
    assert "enabled: true\n    retention_days: 7" in kept
    (folder / "kept.yaml").write_text(kept)
    return folder


@pytest.fixture(scope="module")
def app_client(
    private_database: Database, feedback_configs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    settings = make_settings(private_database, tmp_path_factory.mktemp("fb"), configs_dir=feedback_configs,
                             vllm_url=None)  # fmt: skip
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def keys(private_database: Database) -> dict[str, str]:
    return {
        "alice": new_key(private_database, ["query"]),
        "bob": new_key(private_database, ["query"]),
        "admin": new_key(private_database, ["admin"], collections=["default"]),
        "hr_admin": new_key(private_database, ["query", "admin"], collections=["hr"]),
    }


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def ask(client: TestClient, key: str, question: str, config: str = "default") -> str:
    response = client.post("/v1/query", json={"question": question, "config": config}, headers=_auth(key))
    assert response.status_code == 200, response.text
    request_id = response.json()["request_id"]
    assert response.headers["X-Request-Id"] == request_id
    return str(request_id)


def rate(client: TestClient, key: str, **body: Any) -> Any:
    """POST /v1/feedback; the body as Python's JSON writes it (lone surrogates escaped, as a client may send them)."""
    headers = {**_auth(key), "Content-Type": "application/json"}
    return client.post("/v1/feedback", content=json.dumps(body), headers=headers)


def feedback_rows(database: Database) -> list[tuple[Any, ...]]:
    with database.connect() as conn:
        return conn.execute("SELECT * FROM feedback ORDER BY id").fetchall()


def test_every_answer_shape_carries_the_request_id_feedback_takes(
    app_client: TestClient, keys: dict[str, str], private_database: Database
) -> None:
    h = _auth(keys["alice"])
    chat = [{"role": "user", "content": "How much paid parental leave does a birthing parent receive?"}]
    ids = []
    response = app_client.post("/v1/chat", json={"messages": chat}, headers=h)
    ids.append((response.json()["request_id"], response.headers["X-Request-Id"]))
    streamed = app_client.post("/v1/chat", json={"messages": chat, "stream": True}, headers=h)
    done = [json.loads(data) for event, data in parse_sse(streamed.text) if event == "done"]
    ids.append((done[0]["request_id"], streamed.headers["X-Request-Id"]))
    openai = app_client.post("/v1/chat/completions", json={"model": "default", "messages": chat}, headers=h).json()
    assert openai["id"] == f"chatcmpl-{openai['request_id']}"
    ids.append((openai["request_id"], openai["id"].removeprefix("chatcmpl-")))
    chunks = app_client.post("/v1/chat/completions", json={"model": "default", "messages": chat, "stream": True},
                             headers=h)  # fmt: skip
    final = [json.loads(data) for _, data in parse_sse(chunks.text) if data != "[DONE]" and "request_id" in data]
    ids.append((final[0]["request_id"], chunks.headers["X-Request-Id"]))
    for body_id, header_id in ids:
        assert body_id == header_id
        row = ledger_row(private_database, body_id, wait_s=2)
        assert row is not None and row["collection"] == "default"
        assert rate(app_client, keys["alice"], request_id=body_id, rating=1).status_code == 200
    # The OpenAI completion id is accepted as it is, too.
    assert rate(app_client, keys["alice"], request_id=openai["id"], rating=-1, reason="wrong").status_code == 200


def test_rating_twice_updates_the_one_rating(
    app_client: TestClient, keys: dict[str, str], private_database: Database
) -> None:
    request_id = ask(app_client, keys["alice"], "How many PTO days do new employees get in their first year?")
    first = rate(app_client, keys["alice"], request_id=request_id, rating=-1, reason="incomplete")
    assert first.status_code == 200 and first.json()["created"] is True and first.json()["negative"] is True
    second = rate(app_client, keys["alice"], request_id=request_id, rating=4, scale="stars")
    body = second.json()
    assert second.status_code == 200 and body["created"] is False
    assert (body["scale"], body["rating"], body["reason"], body["negative"]) == ("stars", 4, None, False)
    assert body["id"] == first.json()["id"] and body["updated_at"] > first.json()["updated_at"]
    with private_database.connect() as conn:
        rows = conn.execute(
            """SELECT f.rating, l.config_version, l.prompt_version, l.index_version, l.model
               FROM feedback f JOIN ledger l USING (request_id) WHERE request_id = %s""",
            (request_id,),
        ).fetchall()
    assert len(rows) == 1 and rows[0][0] == 4
    assert rows[0][1].startswith("default@") and all(rows[0][1:])  # the versions, through the ledger row


def test_only_the_asking_key_or_its_collections_admin_may_rate(
    app_client: TestClient, keys: dict[str, str], private_database: Database
) -> None:
    request_id = ask(app_client, keys["alice"], "What is the expense limit for a client dinner?")
    before = feedback_rows(private_database)
    other = rate(app_client, keys["bob"], request_id=request_id, rating=-1)
    elsewhere = rate(app_client, keys["hr_admin"], request_id=request_id, rating=-1)
    unknown = rate(app_client, keys["bob"], request_id="0" * 32, rating=-1)
    assert other.status_code == elsewhere.status_code == unknown.status_code == 403
    # Another key's request reads exactly like one that does not exist.
    assert other.json()["error"]["message"] == unknown.json()["error"]["message"].replace("0" * 32, request_id)
    assert feedback_rows(private_database) == before
    assert rate(app_client, keys["admin"], request_id=request_id, rating=1).status_code == 200
    assert rate(app_client, keys["alice"], request_id=request_id, rating=-1).status_code == 200
    anonymous = app_client.post("/v1/feedback", json={"request_id": request_id, "rating": 1})
    assert anonymous.status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"rating": 0}, 422, "not on the thumbs scale"),
        ({"rating": 7, "scale": "stars"}, 422, "not on the stars scale"),
        ({"rating": 5}, 422, "not on the thumbs scale"),
        ({"rating": 1.5}, 422, "rating"),
        ({"rating": True}, 422, "rating"),
        ({"rating": -1, "reason": "rude"}, 422, "reason"),
        ({"rating": -1, "scale": "percent"}, 422, "scale"),
        ({"rating": -1, "text": "x" * 2001}, 422, "text"),
        ({"rating": -1, "text": "a\x00b"}, 422, "text"),
        ({"rating": -1, "text": "\ud800 lone"}, 422, "text"),
        ({"rating": -1, "sources": [10**30]}, 422, "sources"),
        ({"rating": 10**30}, 422, "rating"),
        ({"rating": -1, "sources": [987654321]}, 422, "no document 987654321"),
        ({"rating": -1, "sources": ["handbook/pto.md"]}, 422, "sources"),
        ({"rating": -1, "extra": 1}, 422, "extra"),
        ({"request_id": "../../etc", "rating": -1}, 422, "request_id"),
        ({"request_id": "f" * 32, "rating": -1}, 403, "may not rate"),
    ],
)
def test_bad_input_is_a_4xx_and_changes_nothing(
    app_client: TestClient, keys: dict[str, str], private_database: Database,
    body: dict[str, Any], status: int, message: str,
) -> None:  # fmt: skip
    request_id = ask(app_client, keys["alice"], "Who approves travel outside the country?")
    before = feedback_rows(private_database)
    response = rate(app_client, keys["alice"], **{"request_id": request_id, **body})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    assert feedback_rows(private_database) == before


@pytest.mark.parametrize("raw", [b'{"request_id": "x", "rating": NaN}', b"not json", b'{"rating": -1'])
def test_unparsable_bodies_are_422(app_client: TestClient, keys: dict[str, str], raw: bytes) -> None:
    headers = {**_auth(keys["alice"]), "Content-Type": "application/json"}
    response = app_client.post("/v1/feedback", content=raw, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"]


def test_free_text_is_stored_filtered_and_sources_are_document_ids(
    app_client: TestClient, keys: dict[str, str], private_database: Database
) -> None:
    response = app_client.post("/v1/query", json={"question": "How many PTO days after three years?"},
                               headers=_auth(keys["alice"]))  # fmt: skip
    cited = sorted({c["document_id"] for c in response.json()["citations"]})
    text = f"Wrong: ask {NAME} ({EMAIL}), my SSN is {SSN}. The PTO page says otherwise."
    saved = rate(app_client, keys["alice"], request_id=response.json()["request_id"], rating=-1, reason="wrong",
                 text=text, sources=[cited[0], cited[0]])  # fmt: skip
    assert saved.status_code == 200, saved.text
    stored = saved.json()["text"]
    assert NAME not in stored and EMAIL not in stored and SSN not in stored
    assert "<EMAIL_ADDRESS>" in stored and "<US_SSN>" in stored and "PTO page" in stored
    assert saved.json()["sources"] == [cited[0]]
    dump = table_dump(private_database, skip_index=True)
    assert [v for v in (NAME, EMAIL, SSN) if v in dump] == []


def test_with_transcripts_off_no_question_text_is_stored_anywhere(
    app_client: TestClient, keys: dict[str, str], private_database: Database
) -> None:
    request_id = ask(app_client, keys["alice"], OFF_QUESTION)
    assert rate(app_client, keys["alice"], request_id=request_id, rating=-1, reason="wrong").status_code == 200
    with private_database.connect() as conn:
        assert conn.execute("SELECT count(*) FROM transcripts WHERE request_id = %s", (request_id,)).fetchone() == (0,)
    dump = table_dump(private_database, skip_index=True)
    assert request_id in dump  # the scan reads the rows the request left
    assert "anchor meetings" not in dump and OFF_QUESTION not in dump


def test_transcripts_keep_only_filtered_text_citations_and_versions(
    app_client: TestClient, keys: dict[str, str], private_database: Database
) -> None:
    response = app_client.post("/v1/query", json={"question": KEPT_QUESTION, "config": "kept"},
                               headers=_auth(keys["alice"]))  # fmt: skip
    assert response.status_code == 200
    body = response.json()
    with private_database.connect() as conn, conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM transcripts WHERE request_id = %s", (body["request_id"],)).fetchone()
    assert row is not None
    assert NAME not in row["question"] and "<PERSON_1>" in row["question"] and "parental leave" in row["question"]
    assert row["answer"] and row["config_version"] == body["versions"]["config"]
    assert row["config_version"].startswith("kept@") and row["index_version"] == body["versions"]["index"]
    assert [c["document_id"] for c in row["citations"]] == [c["document_id"] for c in body["citations"]]
    assert timedelta(days=6) < row["expires_at"] - row["created_at"] <= timedelta(days=7)
    assert NAME not in table_dump(private_database, skip_index=True)


def test_retention_deletes_expired_transcripts_and_keeps_the_rest(
    app_client: TestClient, keys: dict[str, str], private_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = ask(app_client, keys["alice"], "What is the expense limit for a client dinner?", config="kept")
    new = ask(app_client, keys["alice"], "How many PTO days do new employees get in their first year?", "kept")
    assert rate(app_client, keys["alice"], request_id=old, rating=-1).status_code == 200
    with private_database.connect() as conn:
        conn.execute("UPDATE transcripts SET expires_at = now() - interval '1 second' WHERE request_id = %s", (old,))
        worker = Worker(private_database, app_client.app.state.settings, chores=CHORES)  # type: ignore[attr-defined]
        worker.run_chores(conn)
        left = {r[0] for r in conn.execute("SELECT request_id FROM transcripts").fetchall()}
    assert old not in left and new in left
    assert len(feedback_rows(private_database)) > 0 and ledger_row(private_database, old) is not None  # ratings stay
    # The CLI deletes what expired since.
    with private_database.connect() as conn:
        conn.execute("UPDATE transcripts SET expires_at = now() - interval '1 second' WHERE request_id = %s", (new,))
    from app import cli

    monkeypatch.setenv("RAGOPS_DATABASE_URL", private_database.url)
    result = CliRunner().invoke(cli.app, ["feedback", "purge"])
    assert result.exit_code == 0 and "deleted 1 expired transcript" in result.output, result.output
    with private_database.connect() as conn:
        assert conn.execute("SELECT count(*) FROM transcripts WHERE request_id = %s", (new,)).fetchone() == (0,)


def test_admins_list_their_collections_ratings_page_by_page(app_client: TestClient, keys: dict[str, str]) -> None:
    for _ in range(3):
        request_id = ask(app_client, keys["alice"], "How many PTO days do new employees get in their first year?")
        assert rate(app_client, keys["alice"], request_id=request_id, rating=-1, reason="outdated").status_code == 200
    h = _auth(keys["admin"])
    first = app_client.get("/v1/feedback", params={"collection": "default", "since": "1h", "limit": 2}, headers=h)
    assert first.status_code == 200, first.text
    page = first.json()
    assert len(page["items"]) == 2 and page["next_after"] == page["items"][-1]["id"]
    item = page["items"][0]
    assert item["versions"]["config"].startswith("default@") and item["route"].startswith("/v1/")
    rest = app_client.get("/v1/feedback", params={"after": page["next_after"], "limit": 500, "negative": True},
                          headers=h).json()  # fmt: skip
    assert all(i["negative"] for i in rest["items"]) and all(i["id"] > page["next_after"] for i in rest["items"])
    future = app_client.get("/v1/feedback", params={"since": "2999-01-01"}, headers=h).json()
    assert future["items"] == [] and future["next_after"] is None
    elsewhere = app_client.get("/v1/feedback", params={"collection": "default"}, headers=_auth(keys["hr_admin"]))
    assert elsewhere.status_code == 403
    assert app_client.get("/v1/feedback", headers=_auth(keys["alice"])).status_code == 403  # no admin scope
    bad = app_client.get("/v1/feedback", params={"since": "last tuesday"}, headers=h)
    assert bad.status_code == 422 and "since" in bad.json()["error"]["message"]


def test_feedback_requests_are_metered_but_never_billed(
    app_client: TestClient, keys: dict[str, str], private_database: Database
) -> None:
    request_id = ask(app_client, keys["alice"], "How many PTO days do new employees get in their first year?")
    response = rate(app_client, keys["alice"], request_id=request_id, rating=1)
    row = ledger_row(private_database, response.headers["X-Request-Id"], wait_s=2)
    assert row is not None and row["route"] == "/v1/feedback" and row["status"] == 200
    assert (row["prompt_tokens"], row["completion_tokens"], row["embedding_tokens"], row["cost_usd"]) == (0, 0, 0, 0)


def test_parse_since_takes_durations_and_dates() -> None:
    now = datetime(2026, 1, 8, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_since("2026-01-02", now) == datetime(2026, 1, 2, tzinfo=UTC)
    since = parse_since("2026-01-02T16:00:00+16:00", now)
    assert since == datetime(2026, 1, 2, tzinfo=UTC) and since.utcoffset() == timedelta(0)
    with pytest.raises(BadRequest, match="duration"):
        parse_since("soon", now)


@pytest.mark.parametrize(
    ("feedback", "pii", "message"),
    [
        ({"transcripts": {"enabled": True}}, {"enabled": False}, "only PII-filtered text"),
        ({"transcripts": {"enabled": True}}, {"apply_to": {"answer": False}}, "only PII-filtered text"),
        ({"transcripts": {"retention_days": 0}}, {}, "retention_days"),
        ({"transcripts": {"enabled": "sometimes"}}, {}, "enabled"),
        ({"transcript": {}}, {}, "transcript"),
    ],
)
def test_bad_transcript_settings_are_refused(feedback: dict[str, Any], pii: dict[str, Any], message: str) -> None:
    raw = yaml.safe_dump({"feedback": feedback, "pii": pii}).encode()
    with pytest.raises(Exception, match=message):
        parse_config(Path("bad.yaml"), raw)
