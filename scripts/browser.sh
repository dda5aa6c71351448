#!/usr/bin/env bash
# Chromium and chromedriver for the console's browser tests (tests/app/test_console_browser.py).
# Idempotent: does nothing when both are there. Installs them with apt-get (Debian's `chromium` and
# `chromium-driver`) when they are missing and apt-get can run; otherwise says why and exits 0, and the
# browser tests skip, unless RAGOPS_REQUIRE_BROWSER=1 (CI=true sets it in ./dev.sh), where they fail.
set -euo pipefail
CHROMIUM="${RAGOPS_CHROMIUM:-/usr/bin/chromium}"
DRIVER="${RAGOPS_CHROMEDRIVER:-/usr/bin/chromedriver}"
if [ -x "$CHROMIUM" ] && [ -x "$DRIVER" ]; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
if command -v apt-get >/dev/null 2>&1 && { [ -z "$SUDO" ] || $SUDO true 2>/dev/null; }; then
  echo "==> installing chromium and chromium-driver (browser tests; about a minute, once)" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
else
  echo "browser tests need $CHROMIUM and $DRIVER (Debian: apt-get install chromium chromium-driver);" \
       "apt-get is not usable here, so they will be skipped (or fail with RAGOPS_REQUIRE_BROWSER=1)" >&2
fi
