#!/usr/bin/env bash
# One entry point for every developer, the README and CI.
#   ./dev.sh setup   create .venv, install ragops with pinned torch, seed tokenizer files, export the
#                    embedding model to ONNX under .ragops/models (idempotent; offline)
#   ./dev.sh serve   setup, ingest the bundled samples into the embedded PostgreSQL, serve the API
#   ./dev.sh test    setup, lint, the eval gate against evals/baselines/, the vLLM venv, then the whole test suite
#                    (RAGOPS_SKIP_VLLM=1 / RAGOPS_SKIP_GATE=1 skip the vLLM tier / eval gate locally; CI runs both;
#                    scripts/browser.sh installs chromium for the console's browser tier when it is missing)
#   ./dev.sh bench   setup, then the benchmarks in bench/
set -euo pipefail
cd "$(dirname "$0")"

VENV="${RAGOPS_VENV:-.venv}"
PY="$VENV/bin/python"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAGAS_DO_NOT_TRACK=true TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS=
# One OpenBLAS thread per calling thread: requests are already answered in parallel, and OpenBLAS's
# fork handler deadlocks a process that forks (pg_ctl, git) while another thread is inside a
# multi-threaded BLAS call (the PII model's matrix products).
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"

setup() {
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "ragops needs Python >= 3.11 (found $(python3 --version 2>&1))" >&2; exit 1
  fi
  [ -x "$PY" ] || { echo "==> creating $VENV"; python3 -m venv "$VENV"; }
  local stamp="$VENV/.ragops-installed" want
  want="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-64)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "==> installing ragops and its dependencies (first run: a few minutes)"
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
    echo "$want" > "$stamp"
  fi
  "$PY" -m core.tokens seed
  "$PY" -m core.embedding export
}

cmd="${1:-}"; shift || true
case "$cmd" in
  setup) setup ;;
  serve)
    setup
    "$VENV/bin/ragops" ingest samples --sync
    exec "$VENV/bin/ragops" serve "$@" ;;
  ingest)
    setup
    exec "$VENV/bin/ragops" ingest "${@:-samples}" ;;
  lint)
    setup
    "$VENV/bin/ruff" check core app ingest evals tests bench
    "$VENV/bin/mypy" ;;
  test)
    setup
    "$VENV/bin/ruff" check core app ingest evals tests bench
    "$VENV/bin/ruff" format --check core app ingest evals tests bench
    "$VENV/bin/mypy"
    if [ "${RAGOPS_SKIP_GATE:-0}" != "1" ]; then
      # The repository gates itself: its own eval against the committed baseline (exit 1 on regression).
      mkdir -p .ragops/eval
      "$VENV/bin/ragops" eval run --config default --out .ragops/eval/candidate.json
      "$VENV/bin/ragops" eval compare evals/baselines/default.json .ragops/eval/candidate.json \
        --gate evals/gate.yaml --markdown .ragops/eval/report.md --html .ragops/eval/report.html > /dev/null
      echo "eval gate passed (report: .ragops/eval/report.md)"
    fi
    if [ "${RAGOPS_SKIP_VLLM:-0}" != "1" ]; then
      # The integration tier runs a real vLLM (CPU build) from its own venv; first run ~2 min.
      bash scripts/vllm_venv.sh >/dev/null
      export RAGOPS_REQUIRE_VLLM=1
    fi
    # The console's browser tier: Debian's chromium + chromedriver, installed once when missing. In CI
    # (CI=true) a missing browser fails the tier instead of skipping it, like the vLLM tier.
    bash scripts/browser.sh
    if [ "${CI:-}" = "true" ]; then export RAGOPS_REQUIRE_BROWSER=1; fi
    exec "$PY" -m pytest "$@" ;;
  bench)
    setup
    exec "$PY" -m bench "$@" ;;
  *)
    echo "usage: ./dev.sh setup|serve|ingest [PATH]|lint|test [pytest args]|bench [name]" >&2; exit 2 ;;
esac
