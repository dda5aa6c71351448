"""Headless Chromium (Debian's chromium + chromium-driver) driven by Selenium, for the console's browser tier."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Read at import (collection), before the autouse isolation drops every RAGOPS_* variable (see vllm_server.py).
STARTUP_ENV = {k: os.environ[k] for k in ("RAGOPS_REQUIRE_BROWSER", "RAGOPS_CHROMIUM", "RAGOPS_CHROMEDRIVER")
               if k in os.environ}  # fmt: skip
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900")  # fmt: skip


def require_browser() -> tuple[Path, Path]:
    """Chromium and chromedriver; skips the test without them, or fails it when RAGOPS_REQUIRE_BROWSER=1 (CI)."""
    import pytest

    chromium = Path(STARTUP_ENV.get("RAGOPS_CHROMIUM", "/usr/bin/chromium"))
    driver = Path(STARTUP_ENV.get("RAGOPS_CHROMEDRIVER", "/usr/bin/chromedriver"))
    if not (os.access(chromium, os.X_OK) and os.access(driver, os.X_OK)):
        message = f"browser tier needs {chromium} and {driver}: run scripts/browser.sh (./dev.sh test does)"
        if STARTUP_ENV.get("RAGOPS_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.fail("selenium is not installed: pip install -e '.[dev]'")
    return chromium, driver


@contextmanager
def chromium_driver() -> Iterator[Any]:
    """One headless Chromium with a fresh profile, its console log kept; quit when the block ends."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = require_browser()
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(chromium)
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        browser = webdriver.Chrome(options=options, service=Service(str(driver)))
        browser.set_page_load_timeout(30)
        try:
            yield browser
        finally:
            browser.quit()
