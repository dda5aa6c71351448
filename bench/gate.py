"""The whole eval gate on the sample set: index builds for both sides, 48 questions each, comparison.

The candidate changes the chunk size, so both sides build their own index version from scratch,
in a fresh embedded PostgreSQL: the worst case a pull request can cost.

    python -m bench gate
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, write_result


def ragops(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, check=False)  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import os

    with tempfile.TemporaryDirectory() as tmp:
        configs = Path(tmp) / "configs"
        shutil.copytree(ROOT / "configs", configs)
        text = (configs / "default.yaml").read_text()
        (configs / "candidate.yaml").write_text(text.replace("chunk_size: 200", "chunk_size: 160"))
        env = {**os.environ, "RAGOPS_DATA_DIR": str(Path(tmp) / "state"), "RAGOPS_CONFIGS_DIR": str(configs)}
        t0 = time.perf_counter()
        base = ragops("eval", "run", "--config", "default", "--out", f"{tmp}/base.json", env=env)
        t_base = time.perf_counter() - t0
        cand = ragops("eval", "run", "--config", "candidate", "--out", f"{tmp}/cand.json", env=env)
        t_cand = time.perf_counter() - t0 - t_base
        comparison = ragops("eval", "compare", f"{tmp}/base.json", f"{tmp}/cand.json", env=env)
        total = time.perf_counter() - t0
        if base.returncode or cand.returncode or comparison.returncode == 2:
            raise SystemExit(base.stderr + cand.stderr + comparison.stderr)
        reports = [json.loads(Path(f"{tmp}/{n}.json").read_text()) for n in ("base", "cand")]
    result = {
        "questions": reports[0]["dataset"]["questions"],
        "baseline_s": round(t_base, 1),
        "candidate_s": round(t_cand, 1),
        "index_build_s": [r["index_build_seconds"] for r in reports],
        "total_s": round(total, 1),
        "verdict_exit_code": comparison.returncode,
    }
    print(json.dumps(result, indent=2))
    print(f"wrote {write_result('gate', result)}")
    return result


if __name__ == "__main__":
    main()
