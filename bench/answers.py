"""Extractive answer quality on the project's two eval sets, and the README's first example.

    python -m bench answers

``ragops eval run`` on ``evals/datasets/sample.jsonl`` (the set the CI gate runs) and on
``evals/datasets/holdout.jsonl`` (48 questions written later over the same samples, in their own
words, so that no change is fitted to one set's wording), in a fresh embedded PostgreSQL; then the
question the README shows first, asked with ``ragops query`` after ``ragops ingest samples``, as a
new user who ran ``./dev.sh serve`` would. Both sets are answered by one configuration and one
index, so their figures compare like for like.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import ROOT, write_result

SETS = {"eval set": "evals/datasets/sample.jsonl", "held-out set": "evals/datasets/holdout.jsonl"}
README_QUESTION = "How many PTO days do new employees get?"
README_FACT = "15 days"  # handbook/pto.md: "Year 1 (your first 12 months): 15 days"


def ragops(*args: str, env: dict[str, str]) -> str:
    """Run the CLI; its standard output, or exit with what it printed when it failed."""
    done = subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, check=False)  # fmt: skip
    if done.returncode:
        raise SystemExit(f"ragops {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline measures of one eval report, with the counts behind the shares."""
    questions = report["questions"]
    answerable = [q["metrics"] for q in questions if "answered" in q["metrics"]]
    unanswerable = [q["metrics"] for q in questions if "refusal_accuracy" in q["metrics"]]
    aggregates = report["aggregates"]
    return {
        "questions": len(questions),
        "answerable": len(answerable),
        "answered_n": round(sum(m["answered"] for m in answerable)),
        "unanswerable": len(unanswerable),
        "refused_n": round(sum(m["refusal_accuracy"] for m in unanswerable)),
        **{name: round(aggregates[name], 4) for name in ("string_presence", "answered", "refusal_accuracy", "rouge_l")},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RAGOPS_DATA_DIR": str(Path(tmp) / "state")}
        for label, dataset in SETS.items():
            out = Path(tmp) / f"{Path(dataset).stem}.json"
            ragops("eval", "run", "--config", "default", "--dataset", dataset, "--out", str(out), env=env)
            report = json.loads(out.read_text())
            result["sets"][label] = {"dataset": dataset, "config": report["versions"]["config"], **summary(report)}
        ragops("ingest", "samples", env=env)  # as ./dev.sh serve does: the default collection a new user asks
        answer = json.loads(ragops("query", README_QUESTION, "--json", env=env))
    result["readme_example"] = {
        "question": README_QUESTION,
        "answer": answer["text"],
        "fact": README_FACT,
        "fact_quoted": README_FACT in answer["text"],
    }
    print(json.dumps(result, indent=2))
    print(f"wrote {write_result('answers', result)}")
    return result


if __name__ == "__main__":
    main()
