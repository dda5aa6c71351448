"""The console in a real browser: headless Chromium (Debian) through chromedriver, the app on a real uvicorn socket.

One browser and one server for the module; each journey takes a few seconds. Screenshots of each
page go to docs/screenshots/ (the README shows them). Skipped without Chromium unless
RAGOPS_REQUIRE_BROWSER=1 (CI), then failed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from app.keys import create_key
from app.main import create_app
from app.online_eval import Measures, add_measures
from app.rollouts import store as rollout_store
from core.config import load_config
from core.db import Database
from tests.app.conftest import SAMPLES, make_settings
from tests.conftest import REPO
from tests.utils.browser import chromium_driver
from tests.utils.server import serve_in_thread

SCREENSHOTS = REPO / "docs" / "screenshots"
EMAIL = "jane.roe.4417@example.org"  # made-up PII typed into a question: must reach no page, URL or log
QUESTION = f"I am {EMAIL}. How many PTO days do new employees get?"


@pytest.fixture(scope="module")
def keys(private_database: Database) -> dict[str, str]:
    with private_database.connect() as conn:
        admin = create_key(conn, "operator", ["query", "admin"], collections=["*"], configs=["*"],
                           budget_usd_day=2)[1]  # fmt: skip
        query = create_key(conn, "support-bot", ["query"], collections=["hr-only"])[1]
    return {"admin": admin, "query": query}


@pytest.fixture(scope="module")
def site(private_database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app with an in-process worker (reindex jobs run) and one eval report, on a real socket."""
    tmp = tmp_path_factory.mktemp("browser")
    reports = tmp / "eval"
    reports.mkdir()
    (reports / "report.html").write_text(
        "<!doctype html><html><head><style>h1{color:#2e7d32}</style></head><body><h1>ragops eval gate: PASS</h1>"
        "<table><tr><td>ndcg@10</td><td>0.933 &rarr; 0.946</td></tr></table></body></html>"
    )
    settings = make_settings(
        private_database, tmp, vllm_url=None, worker_in_process=True, eval_reports_dir=reports,
        source_roots=[SAMPLES, tmp / "uploads"],
    )  # fmt: skip
    with serve_in_thread(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium_driver() as driver:
        yield driver


def wait_until(browser: Any, condition: Any, timeout_s: float = 20.0) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout_s, poll_frequency=0.05).until(condition)


def css(browser: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, selector)


def css_all(browser: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(browser.find_elements(By.CSS_SELECTOR, selector))


def login(browser: Any, site: str, key: str) -> None:
    browser.delete_all_cookies()
    browser.get(f"{site}/ui")
    assert browser.current_url.endswith("/ui/login")
    css(browser, "#key").send_keys(key)
    css(browser, "form[action='/ui/login'] button").click()
    wait_until(browser, lambda b: "/ui/login" not in b.current_url)


def assert_clean(browser: Any, *secrets: str) -> None:
    """No secret in the page's HTML, its URL or the browser's console log."""
    log = json.dumps(browser.get_log("browser"))
    for secret in secrets:
        assert secret not in browser.page_source and secret not in browser.current_url and secret not in log


def shoot(browser: Any, name: str) -> None:
    """The whole page (the window grown to its height for the shot), as docs/screenshots/NAME.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(max(height, 900), 2400))
    browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
    browser.set_window_size(1280, 900)


def test_ask_streams_an_answer_with_marked_citations_and_two_configurations(
    browser: Any, site: str, keys: dict[str, str]
) -> None:
    from selenium.webdriver.support.ui import Select

    login(browser, site, keys["admin"])
    assert browser.current_url.endswith("/ui/playground")
    css(browser, "#question").send_keys(QUESTION)
    Select(css(browser, "#collection")).select_by_value("default")
    Select(css(browser, "#config_b")).select_by_value("default")
    Select(css(browser, "#mode_b")).select_by_value("keyword")
    css(browser, "#ask button[type=submit]").click()
    wait_until(browser, lambda b: css(b, "#status").text == "Done.")
    for pane in ("#pane-a", "#pane-b"):
        assert "[1]" in css(browser, f"{pane} .answer").text
        facts = css(browser, f"{pane} .facts").text
        assert "Versions" in facts and "Timings" in facts and "Tokens" in facts and "PII filtered" in facts
        assert "First character after" in facts
        assert css_all(browser, f"{pane} .citations li")
        marked = [m.text for m in css_all(browser, f"{pane} .citations mark")]
        answer = css(browser, f"{pane} .answer").text
        chunks = [c.text for c in css_all(browser, f"{pane} .citations .chunk")]
        assert marked, (answer, chunks)
        assert all(" ".join(m.split()) in answer for m in marked)
    assert "+mode=keyword" in css(browser, "#pane-b .facts").text
    assert "EMAIL_ADDRESS" in css(browser, "#pane-a .facts").text  # counted, not shown
    shoot(browser, "playground")
    assert_clean(browser, keys["admin"], EMAIL)


def test_reindex_progress_reaches_done_then_activate_and_roll_back(
    browser: Any, site: str, keys: dict[str, str]
) -> None:
    from selenium.webdriver.support.ui import Select

    login(browser, site, keys["admin"])
    browser.get(f"{site}/ui/index")
    before = {r.get_attribute("data-version") for r in css_all(browser, "#versions tbody tr")}
    Select(css(browser, "#r-collection")).select_by_value("default")
    Select(css(browser, "#r-mode")).select_by_value("full")
    css(browser, "#reindex button").click()
    wait_until(browser, lambda b: b.current_url.endswith("/ui/index") and css_all(b, "#jobs tbody tr[data-job]"))
    row = "#jobs tbody tr[data-job]"
    wait_until(browser, lambda b: css(b, f"{row} td.status").text == "succeeded", 120)
    bar = css(browser, f"{row} progress")
    assert bar.get_attribute("value") == bar.get_attribute("max") != "0"
    assert css(browser, f"{row} .progress span").text.split("/")[0] == bar.get_attribute("max")

    browser.get(f"{site}/ui/index")
    built = ({r.get_attribute("data-version") for r in css_all(browser, "#versions tbody tr")} - before).pop()
    old = next(iter(before))

    def activate(version: str, accept: bool) -> None:
        Select(css(browser, f"#act-{version}")).select_by_value("")
        css(browser, f"tr[data-version='{version}'] form.activate button").click()
        alert = wait_until(browser, lambda b: b.switch_to.alert)
        assert f"index version {version}" in alert.text
        alert.accept() if accept else alert.dismiss()
        if accept:
            wait_until(browser, lambda b: "default" in css(b, f"tr[data-version='{version}'] td.answers").text)

    activate(built, accept=False)  # cancelled at the confirmation: nothing moves
    time.sleep(0.3)
    assert "default" in css(browser, f"tr[data-version='{old}'] td.answers").text
    activate(built, accept=True)
    assert "default" not in css(browser, f"tr[data-version='{old}'] td.answers").text
    activate(old, accept=True)  # the roll-back
    assert "default" not in css(browser, f"tr[data-version='{built}'] td.answers").text
    shoot(browser, "index")
    assert_clean(browser, keys["admin"])


def test_usage_and_evals_pages(browser: Any, site: str, keys: dict[str, str]) -> None:
    login(browser, site, keys["admin"])
    browser.get(f"{site}/ui/usage")
    assert css_all(browser, "svg.chart") and "operator" in css(browser, "#usage-key").text
    assert "$2.00" in browser.page_source  # the operator key's daily budget
    shoot(browser, "usage")
    browser.get(f"{site}/ui/evals")
    browser.switch_to.frame(css(browser, "iframe.report"))
    assert "ragops eval gate: PASS" in css(browser, "h1").text
    browser.switch_to.default_content()
    shoot(browser, "evals")
    assert_clean(browser, keys["admin"], EMAIL)


def test_thumbs_down_in_the_playground_shows_on_the_feedback_page(
    browser: Any, site: str, keys: dict[str, str]
) -> None:
    from selenium.webdriver.support.ui import Select

    login(browser, site, keys["admin"])
    css(browser, "#question").send_keys(QUESTION)
    Select(css(browser, "#collection")).select_by_value("default")
    assert not css(browser, "#pane-a form.rate").is_displayed()  # nothing to rate yet
    css(browser, "#ask button[type=submit]").click()
    wait_until(browser, lambda b: css(b, "#status").text == "Done.")
    css(browser, "#pane-a form.rate button.down").click()
    wait_until(browser, lambda b: css(b, "#pane-a .rated").text == "Thanks: rated down.")
    config = css(browser, "#pane-a .facts").text.split("config ", 1)[1].split(",", 1)[0]
    browser.get(f"{site}/ui/feedback?collection=default&negative=true")
    rows = css_all(browser, "#ratings tbody tr.poor")
    assert rows and "thumbs down" in rows[0].text and config in rows[0].text
    assert css_all(browser, "svg.chart")
    shoot(browser, "feedback")
    assert_clean(browser, keys["admin"], EMAIL)


def test_quality_drift_and_rollout_pages_and_an_abort_after_confirmation(
    browser: Any, site: str, keys: dict[str, str], private_database: Database
) -> None:
    """Quality figures and the rollout are written to their stores directly (the worker's and the gate's parts
    are tested in test_online_eval.py and test_rollouts.py)."""
    today = datetime.now(UTC).date()
    guards = load_config("default", REPO / "configs").config.rollout
    with private_database.connect() as conn:
        version = conn.execute("SELECT id FROM index_versions WHERE is_active").fetchone()
        assert version is not None
        group = (today, "default", "default@browser", "default@browser", f"v{version[0]}")
        add_measures(conn, [
            Measures(group, refused=False, cited=2, pii_entities=1, latency_ms=35.0, cost_usd=Decimal("0.0002"),
                     top_score=0.71, margin=0.12, support=support)
            for support in (0.82, 0.64)
        ])  # fmt: skip
        live = rollout_store.Versions("default", "default", version[0])
        candidate = rollout_store.Versions("default", "concise", version[0])
        rollout = rollout_store.insert_rollout(conn, "default", live, candidate, guards, None, "key:operator")
        rollout_store.note_decision(conn, rollout.id, {
            "verdict": "continue", "samples": 12, "reason": None,
            "measures": [{"measure": m, "margin": 0.05, "n": 12, "mean_degradation": 0.004, "log_lr": -0.8,
                          "verdict": "continue"} for m in ("support", "top_score")],
        })  # fmt: skip
    login(browser, site, keys["admin"])
    browser.get(f"{site}/ui/quality")
    assert "default@browser" in css(browser, "#quality").text and len(css_all(browser, "svg.chart")) == 4
    shoot(browser, "quality")
    browser.get(f"{site}/ui/drift")
    assert "default" in css(browser, "h1 + form").text and css(browser, "#latest")
    shoot(browser, "drift")
    browser.get(f"{site}/ui/rollouts")
    section = f"#rollout-{rollout.id}"
    assert css(browser, f"{section} .state").text == "shadow"
    assert "support" in css(browser, f"{section} table.guards").text
    shoot(browser, "rollouts")
    abort = f"{section} form[action$='/abort'] button"
    css(browser, abort).click()
    alert = wait_until(browser, lambda b: b.switch_to.alert)
    assert f"Abort rollout {rollout.id}" in alert.text
    alert.dismiss()  # cancelled: nothing changes
    time.sleep(0.3)
    assert css(browser, f"{section} .state").text == "shadow"
    css(browser, abort).click()
    wait_until(browser, lambda b: b.switch_to.alert).accept()
    wait_until(browser, lambda b: css(b, f"{section} .state").text == "aborted")
    assert not css_all(browser, f"{section} form")
    assert_clean(browser, keys["admin"], EMAIL)


def test_a_query_key_gets_403_pages_without_data(browser: Any, site: str, keys: dict[str, str]) -> None:
    login(browser, site, keys["query"])
    nav = css(browser, "nav").text
    assert "Playground" in nav and "Index" not in nav and "Usage" not in nav and "Rollouts" not in nav
    assert "default (" not in css(browser, "#collection").text
    for page in ("index", "usage", "feedback", "quality", "drift", "rollouts", "evals"):
        browser.get(f"{site}/ui/{page}")
        assert "403" in css(browser, "h1").text and "admin" in css(browser, "main").text
        assert "version" not in browser.page_source.lower() and "operator" not in browser.page_source
    shoot(browser, "forbidden")
    assert_clean(browser, keys["query"])


def test_logout_clears_the_session_and_a_request_without_csrf_is_refused(
    browser: Any, site: str, keys: dict[str, str]
) -> None:
    login(browser, site, keys["admin"])
    status = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
           fetch('/ui/api/ask', {method: 'POST', headers: {'content-type': 'application/json'},
                 body: JSON.stringify({question: 'hello'})}).then(r => done(r.status));"""
    )
    assert status == 403
    css(browser, "form.logout button").click()
    wait_until(browser, lambda b: b.current_url.endswith("/ui/login"))
    assert not [c for c in browser.get_cookies() if c["name"] == "ragops_session"]
    browser.get(f"{site}/ui/playground")
    assert browser.current_url.endswith("/ui/login")


def test_every_console_response_carries_the_content_security_policy(site: str) -> None:
    for path in ("/ui/login", "/ui/static/console.js", "/ui/playground"):
        response = httpx.get(f"{site}{path}", follow_redirects=False)
        assert "script-src 'self'" in response.headers["content-security-policy"], path
