"""The web console, server side: login and sessions, CSRF, scopes and collections, pages, the metered ask.

The browser journeys are in test_console_browser.py; these drive the same routes over a TestClient.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.console import CSP, REPORT_CSP, SESSION_COOKIE
from app.console.sessions import SessionStore
from app.keys import create_key, revoke_key
from app.main import create_app
from app.online_eval import Measures, add_measures
from app.rollouts import store as rollout_store
from core.config import load_config
from core.db import Database
from tests.app.conftest import make_settings
from tests.utils.ledger import ledger_row
from tests.utils.sse import parse_sse

QUESTION = "How many PTO days do new employees get?"
ADMIN_PAGES = ("/ui/playground", "/ui/index", "/ui/usage", "/ui/feedback", "/ui/quality", "/ui/drift", "/ui/rollouts",
               "/ui/evals")  # fmt: skip


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reports folder holding one gate report, as `ragops eval compare --html` writes it."""
    folder = tmp_path_factory.mktemp("eval")
    (folder / "report.html").write_text(
        "<!doctype html><html><head><style>td{}</style></head><body><h1>ragops eval gate: PASS</h1>"
        "<table><tr><td>ndcg@10</td></tr></table></body></html>"
    )
    (folder / "notes.txt").write_text("not a report")
    return folder


@pytest.fixture(scope="module")
def console(served_database: Database, reports: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(
        served_database, tmp_path_factory.mktemp("console"), vllm_url=None, eval_reports_dir=reports
    )
    with TestClient(create_app(settings), follow_redirects=False) as client:
        yield client


@pytest.fixture(scope="module")
def keys(served_database: Database) -> dict[str, str]:
    """A global admin with a daily budget, and a query-only key granted one collection that holds nothing."""
    with served_database.connect() as conn:
        admin = create_key(conn, "console-admin", ["query", "admin"], collections=["*"], configs=["*"],
                           budget_usd_day=5)[1]  # fmt: skip
        query = create_key(conn, "console-query", ["query"], collections=["hr-only"])[1]
    return {"admin": admin, "query": query}


@pytest.fixture(scope="module")
def keys_private(private_database: Database) -> dict[str, str]:
    """A global admin in the module's own database (uploads queue jobs: not in the shared one)."""
    with private_database.connect() as conn:
        return {"admin": create_key(conn, "uploader", ["query", "admin"], collections=["*"], configs=["*"])[1]}


def login(client: TestClient, key: str) -> str:
    """Log in through the form; returns the session's CSRF token (the client keeps the cookie)."""
    client.cookies.clear()
    page = client.get("/ui/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token is not None
    response = client.post("/ui/login", data={"key": key, "csrf": token.group(1)})
    assert response.status_code == 303, response.text
    playground = client.get(response.headers["location"])
    assert playground.status_code == 200
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', playground.text)
    assert csrf is not None
    return csrf.group(1)


def test_login_sets_a_strict_httponly_cookie_and_the_key_appears_nowhere(
    console: TestClient, keys: dict[str, str]
) -> None:
    console.cookies.clear()
    page = console.get("/ui/login")
    assert page.headers["content-security-policy"] == CSP and "script-src 'self'" in CSP
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token is not None
    response = console.post("/ui/login", data={"key": keys["admin"], "csrf": token.group(1)})
    assert response.status_code == 303
    cookie = next(v for k, v in response.headers.multi_items() if k == "set-cookie" and SESSION_COOKIE in v)
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert keys["admin"] not in cookie and keys["admin"] not in response.headers["location"]
    for path in ADMIN_PAGES:
        shown = console.get(path)
        assert shown.status_code == 200, path
        assert keys["admin"] not in shown.text and "<script>" not in shown.text
        assert shown.headers["content-security-policy"] == CSP


def test_login_without_the_form_token_or_with_a_bad_key_is_refused(console: TestClient, keys: dict[str, str]) -> None:
    console.cookies.clear()
    refused = console.post("/ui/login", data={"key": keys["admin"], "csrf": "forged"})
    assert refused.status_code == 403 and "CSRF" in refused.text
    assert SESSION_COOKIE not in console.cookies
    token = re.search(r'name="csrf" value="([^"]+)"', console.get("/ui/login").text)
    assert token is not None
    bad = console.post("/ui/login", data={"key": "rgo_00000000_" + "x" * 32, "csrf": token.group(1)})
    assert bad.status_code == 303 and bad.headers["location"] == "/ui/login?failed"
    assert "was not accepted" in console.get(bad.headers["location"]).text
    assert console.get("/ui/playground").headers["location"] == "/ui/login"


def test_ask_streams_citations_and_the_answer_and_writes_a_ledger_row(
    console: TestClient, keys: dict[str, str], served_database: Database
) -> None:
    csrf = login(console, keys["admin"])
    body = {"question": QUESTION, "collection": "default", "mode": "keyword"}
    refused = console.post("/ui/api/ask", json=body, headers={"x-csrf-token": "wrong"})
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]["message"]
    response = console.post("/ui/api/ask", json=body, headers={"x-csrf-token": csrf})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = dict(parse_sse(response.text))
    citations = json.loads(events["citations"] or "[]")
    assert citations and "PTO" in " ".join(c["snippet"] for c in citations)
    done = json.loads(events["done"] or "{}")
    assert done["versions"]["config"].endswith("+mode=keyword")  # the override is part of the recorded version
    row = ledger_row(served_database, response.headers["x-request-id"], wait_s=10)
    assert row is not None and row["route"] == "/ui/api/ask" and row["key_name"] == "console-admin"
    assert row["config_version"].endswith("+mode=keyword")


def test_the_playground_answers_without_javascript(console: TestClient, keys: dict[str, str]) -> None:
    csrf = login(console, keys["admin"])
    page = console.post("/ui/api/answer", data={"question": QUESTION, "collection": "default", "csrf": csrf})
    assert page.status_code == 200
    assert "[1]" in page.text and "Citations" in page.text and "prompt " in page.text
    missing = console.post("/ui/api/answer", data={"question": QUESTION, "collection": "default"})
    assert missing.status_code == 403 and "CSRF" in missing.text and "text/html" in missing.headers["content-type"]


def test_a_query_key_sees_no_admin_page_and_no_other_collection(console: TestClient, keys: dict[str, str]) -> None:
    login(console, keys["query"])
    playground = console.get("/ui/playground").text
    assert 'href="/ui/index"' not in playground and 'href="/ui/usage"' not in playground
    assert ">default (" not in playground  # the samples' collection is not this key's
    for path in (*ADMIN_PAGES[1:], "/ui/evals/report/report.html", "/ui/feedback?collection=default"):
        page = console.get(path)
        assert page.status_code == 403, path
        assert "admin" in page.text and "index version" not in page.text.lower() and "ndcg" not in page.text
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', playground)
    assert csrf is not None
    other = console.post("/ui/api/ask", json={"question": QUESTION, "collection": "default"},
                         headers={"x-csrf-token": csrf.group(1)})  # fmt: skip
    assert other.status_code == 403 and "may not use the collection 'default'" in other.json()["error"]["message"]
    jobs = console.get("/ui/index/jobs", headers={"x-csrf-token": csrf.group(1)})
    assert jobs.status_code == 403 and jobs.json()["error"]["type"] == "ScopeError"


def test_logout_ends_the_session_on_the_server(console: TestClient, keys: dict[str, str]) -> None:
    csrf = login(console, keys["admin"])
    session = console.cookies[SESSION_COOKIE]
    assert console.post("/ui/logout", data={"csrf": "forged"}).status_code == 403
    out = console.post("/ui/logout", data={"csrf": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    console.cookies.set(SESSION_COOKIE, session, path="/ui")  # a copied cookie no longer works
    assert console.get("/ui/index").headers["location"] == "/ui/login"
    api = console.post("/ui/api/ask", json={"question": QUESTION}, headers={"x-csrf-token": csrf})
    assert api.status_code == 401


def test_usage_shows_latency_percentiles_and_what_the_budget_leaves(
    console: TestClient, keys: dict[str, str], served_database: Database
) -> None:
    with served_database.connect() as conn:
        conn.execute(
            """INSERT INTO ledger (request_id, key_name, route, status, config_version, latency_ms, cost_usd)
               SELECT 'usage-test-' || i, 'usage-test-key', '/v1/query', CASE WHEN i <= 2 THEN 500 ELSE 200 END,
                      'usage-test@abc', jsonb_build_object('total', i * 10.0), 0.001
               FROM generate_series(1, 20) i"""
        )
    login(console, keys["admin"])
    page = console.get("/ui/usage?days=7")
    row = re.search(r"<tr><td>usage-test-key</td>(.*?)</tr>", page.text)
    assert row is not None
    cells = re.findall(r"<td>(.*?)</td>", row.group(1))
    assert cells[:2] == ["20", "2"]  # requests, errors
    assert cells[-2:] == ["105.0", "190.5"]  # p50 and p95 of 10..200 ms
    assert "console-admin" in page.text and "$5.00" in page.text  # its daily budget
    assert page.text.count("<svg") == 4


def test_evals_lists_reports_from_the_folder_and_serves_them_sandboxed(
    console: TestClient, keys: dict[str, str]
) -> None:
    login(console, keys["admin"])
    page = console.get("/ui/evals")
    assert "report.html" in page.text and "notes.txt" not in page.text
    report = console.get("/ui/evals/report/report.html")
    assert report.status_code == 200 and "ragops eval gate: PASS" in report.text
    assert report.headers["content-security-policy"] == REPORT_CSP
    for name in ("..%2Fconsole%2Fpgdata", "notes.txt", "missing.html"):
        assert console.get(f"/ui/evals/report/{name}").status_code == 404
    assert console.get("/ui/evals?report=../x.html").status_code == 404


def test_upload_needs_a_session_before_its_body_and_a_csrf_token(
    private_database: Database, keys_private: dict[str, str], tmp_path: Path
) -> None:
    """Uploads go through the admin API's handler: stored under the collection's uploads, a job queued."""
    settings = make_settings(private_database, tmp_path, vllm_url=None, worker_in_process=False)
    content = b"# Console note\n\nUploaded from the console.\n"
    files = [("files", ("console-note.md", content, "text/markdown"))]
    with TestClient(create_app(settings), follow_redirects=False) as client:
        anonymous = client.post("/ui/api/documents", files=files, data={"collection": "default"})
        assert anonymous.status_code == 303 and anonymous.headers["location"] == "/ui/login"
        csrf = login(client, keys_private["admin"])
        forged = client.post("/ui/api/documents", files=files, data={"collection": "default", "csrf": "x"})
        assert forged.status_code == 403
        assert not (tmp_path / "uploads" / "default" / "console-note.md").exists()
        accepted = client.post(
            "/ui/api/documents", files=files, data={"collection": "default"}, headers={"x-csrf-token": csrf}
        )
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["files"] == [{"filename": "console-note.md", "bytes": len(content)}]
        assert (tmp_path / "uploads" / "default" / "console-note.md").is_file()
        with private_database.connect() as conn:
            job = conn.execute(
                "SELECT params->>'collection' FROM jobs WHERE id = %s", (accepted.json()["job_id"],)
            ).fetchone()
        assert job == ("default",)


def test_a_revoked_key_or_an_expired_session_ends_the_login(database: Database) -> None:
    with database.connect() as conn:
        key = create_key(conn, "short-lived", ["query"], collections=["default"])[0]
    store = SessionStore(ttl_s=60, recheck_s=0)
    session_id, session = store.create(key)
    assert store.get(session_id, database.connect) is session and session.csrf_ok(session.csrf)
    assert not session.csrf_ok("") and not session.csrf_ok(None) and store.get("other", database.connect) is None
    with database.connect() as conn:
        revoke_key(conn, str(key.id))
    assert store.get(session_id, database.connect) is None
    expired = SessionStore(ttl_s=0.01, recheck_s=60)
    old_id, _ = expired.create(key)
    time.sleep(0.02)
    assert expired.get(old_id, database.connect) is None


def answer_of(console: TestClient, csrf: str) -> str:
    """Ask through the playground's stream; returns the answer's request id once its ledger row is written."""
    response = console.post("/ui/api/ask", json={"question": QUESTION, "collection": "default"},
                            headers={"x-csrf-token": csrf})  # fmt: skip
    assert response.status_code == 200
    done = json.loads(dict(parse_sse(response.text))["done"] or "{}")
    return str(done["request_id"])


def test_thumbs_on_a_playground_answer_show_on_the_feedback_page(
    console: TestClient, keys: dict[str, str], served_database: Database
) -> None:
    csrf = login(console, keys["admin"])
    request_id = answer_of(console, csrf)
    assert ledger_row(served_database, request_id, wait_s=10) is not None
    forged = console.post("/ui/api/feedback", data={"request_id": request_id, "rating": "-1", "csrf": "x"})
    assert forged.status_code == 403
    rated = console.post("/ui/api/feedback", data={"request_id": request_id, "rating": "-1"},
                         headers={"x-csrf-token": csrf})  # fmt: skip
    assert rated.status_code == 200, rated.text
    assert rated.json()["negative"] is True and rated.json()["scale"] == "thumbs"
    zero = console.post("/ui/api/feedback", data={"request_id": request_id, "rating": "0"},
                        headers={"x-csrf-token": csrf})  # fmt: skip
    assert zero.status_code == 422 and "thumbs" in zero.json()["error"]["message"]
    page = console.get("/ui/feedback?collection=default&negative=true")
    row = re.search(rf"<tr class=\"poor\">(?:(?!</tr>).)*{request_id}", page.text, re.S)
    assert page.status_code == 200 and row is not None and "thumbs down" in row.group(0)
    assert page.text.count("<svg") == 2
    # Without JavaScript: the form posts, the playground says thanks; rating again replaces the rating.
    again = console.post("/ui/api/feedback", data={"request_id": request_id, "rating": "1", "csrf": csrf})
    assert again.status_code == 303 and again.headers["location"] == "/ui/playground?rated=up"
    assert "thumbs up) was saved" in console.get(again.headers["location"]).text
    good = console.get("/ui/feedback?collection=default&negative=false").text
    assert request_id in good and request_id not in console.get("/ui/feedback?negative=true").text


def test_a_collection_admin_sees_only_its_collections_feedback_and_quality(
    console: TestClient, served_database: Database
) -> None:
    today = time.strftime("%Y-%m-%d", time.gmtime())
    with served_database.connect() as conn:
        other = create_key(conn, "console-hr-admin", ["admin"], collections=["hr-only"])[1]
        group = (today, "default", "default@console-test", "prompt@console-test", "v-console-test")
        add_measures(conn, [Measures(group, refused=False, cited=2, pii_entities=0, latency_ms=40.0,
                                     cost_usd=Decimal(0), top_score=0.8, margin=0.2, support=0.75)])  # fmt: skip
    admin = login(console, create_admin(served_database))
    assert admin
    quality = console.get("/ui/quality?collection=default")
    assert quality.status_code == 200 and "default@console-test" in quality.text and "0.750" in quality.text
    login(console, other)
    for path in ("/ui/feedback?collection=default", "/ui/quality?collection=default", "/ui/drift?collection=default"):
        page = console.get(path)
        assert page.status_code == 403, path
        assert "console-test" not in page.text and "thumbs" not in page.text
    assert "default@console-test" not in console.get("/ui/quality").text  # every collection of this key: hr-only


def create_admin(database: Database) -> str:
    with database.connect() as conn:
        return create_key(conn, "console-admin-2", ["admin"], collections=["*"], configs=["*"])[1]


def test_rollouts_page_shows_the_test_per_guard_and_aborts_after_a_confirmation(
    private_database: Database, keys_private: dict[str, str], tmp_path: Path
) -> None:
    """A rollout row written straight to the store (the gate and the shadow traffic are test_rollouts.py's)."""
    guards = load_config("default", Path(__file__).resolve().parents[2] / "configs").config.rollout
    with private_database.connect() as conn:
        version = conn.execute("SELECT id FROM index_versions WHERE is_active").fetchone()
        assert version is not None
        live = rollout_store.Versions("default", "default", version[0])
        candidate = rollout_store.Versions("default", "console-candidate", version[0])
        rollout = rollout_store.insert_rollout(conn, "default", live, candidate, guards, None, "key:console")
        decision = {"verdict": "continue", "samples": 3, "reason": None,
                    "measures": [{"measure": "support", "margin": 0.05, "n": 3, "mean_degradation": 0.01,
                                  "log_lr": -0.4213, "verdict": "continue"}]}  # fmt: skip
        rollout_store.note_decision(conn, rollout.id, decision)
        outsider = create_key(conn, "console-outsider", ["admin"], collections=["hr-only"])[1]
    settings = make_settings(private_database, tmp_path, vllm_url=None, worker_in_process=False)
    with TestClient(create_app(settings), follow_redirects=False) as client:
        login(client, outsider)
        assert client.get("/ui/rollouts").text.count(f"Rollout {rollout.id}") == 0
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', client.get("/ui/rollouts").text)
        assert csrf is not None
        refused = client.post(f"/ui/api/rollouts/{rollout.id}/abort", data={"csrf": csrf.group(1)})
        assert refused.status_code == 404 and "console-candidate" not in refused.text
        csrf_admin = login(client, keys_private["admin"])
        page = client.get("/ui/rollouts").text
        section = page[page.index(f'id="rollout-{rollout.id}"') :]
        assert '<span class="state">shadow</span>' in section and "console-candidate" in section
        assert "<td>support</td><td>0.05</td><td>3</td><td>0.01</td><td>-0.4213</td><td>continue</td>" in section
        assert 'class="confirm" data-confirm="Abort rollout' in section
        forged = client.post(f"/ui/api/rollouts/{rollout.id}/abort", data={"csrf": "forged"})
        assert forged.status_code == 403
        aborted = client.post(f"/ui/api/rollouts/{rollout.id}/abort", data={"csrf": csrf_admin})
        assert aborted.status_code == 303 and aborted.headers["location"] == "/ui/rollouts"
        after = client.get("/ui/rollouts").text
        assert '<span class="state">aborted</span>' in after and f"/ui/api/rollouts/{rollout.id}/abort" not in after


@pytest.mark.parametrize(
    "path",
    ["/ui/quality?since=yesterday-ish", "/ui/quality?collection=%00", "/ui/feedback?days=0",
     "/ui/feedback?negative=maybe", "/ui/drift?config=no-such-config", "/ui/drift?collection=nowhere",
     "/ui/usage?days=100000", "/ui/playground?rated=sideways"],
)  # fmt: skip
def test_odd_page_parameters_are_a_4xx_page(console: TestClient, keys: dict[str, str], path: str) -> None:
    login(console, keys["admin"])
    page = console.get(path)
    assert 400 <= page.status_code < 500, (path, page.status_code)
    assert "text/html" in page.headers["content-type"] and keys["admin"] not in page.text
