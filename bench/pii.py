"""PII filtering: detection quality on the labelled set, and its latency cost on ``/v1/query``.

Overhead: one server, three configurations that differ only in ``pii.enabled`` and
``pii.apply_to.context`` (all: the default; off: question and answer only), asked the same
~30-token question (a name, an e-mail address and a phone number in it) in interleaved rounds.
Both answer with the same fixed ~150-token text (sample prose with a name and an address in
it), streamed word by word like a model would: the extractive generator's work depends on the
question's wording, which filtering changes, and its variance would swamp the filter's cost.

    python -m bench pii [--rounds 7 --requests 30] [--detection-only]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import SecretStr

from app.generators.base import Delta, Finished, GenerationRequest, Generator, Usage, count_prompt_tokens
from app.keys import create_key
from app.main import create_app
from app.pii import PLACEHOLDER
from bench.common import bench_server, fresh_database, median, percentile, write_result
from core.config import load_config
from core.embedding import get_embedder
from core.pii import get_pii_engine
from core.settings import Settings
from core.tokens import count_tokens
from evals.pii import load_pii_set, score_detection
from ingest.pipeline import IngestPipeline
from tests.utils.server import free_port, serve_in_thread

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "I'm Corinne Abelard (corinne.abelard@example.org, 312-555-0147). Which hotel rates may I book?"


DEVELOPMENT_SET = "evals/datasets/pii.jsonl"
# Written before its first scoring and never used to tune the recognizers: the honest figure.
HELD_OUT_SET = "evals/datasets/pii_heldout.jsonl"


def detection(dataset: str = DEVELOPMENT_SET) -> dict[str, Any]:
    """Recall and precision per type on ``dataset`` (LOCATION on, to score it too)."""
    pii = load_config("default", ROOT / "configs").config.pii
    policy = pii.model_copy(update={"entities": {**pii.entities, "LOCATION": "redact"}})
    result = score_detection(get_pii_engine(), policy, load_pii_set(ROOT / dataset)).as_dict()
    return {"dataset": dataset, **result}


ANSWER = (
    "Hotel bookings go through the travel portal. In high-cost cities such as Port Aldane and Easton Quay "
    "the nightly limit is $290; elsewhere it is $190, taxes included. Book at least 14 days ahead when you "
    "can, and choose a refundable rate. If the portal has no room under the limit, ask your manager to "
    "approve an exception in writing before you book, and attach the approval to the expense claim. For "
    "stays longer than five nights, the travel desk negotiates a weekly rate: write to Dana Whitfield at "
    "travel-desk@example.com with your dates. Loyalty points are yours to keep, but never choose a more "
    "expensive hotel to earn them. Receipts must be itemized [1][2]."
)


OWN_WORDS = ROOT / "evals" / "datasets" / "own_words.jsonl"


def own_words() -> list[str]:
    """Questions over the samples whose answers hold no personal data (not the eval set's wording)."""
    return [json.loads(line)["question"] for line in OWN_WORDS.read_text().splitlines() if line.strip()]


def false_alarms(client: httpx.Client, url: str, config: str = "default") -> dict[str, Any]:
    """Answers (and citation snippets) over the team's own words that show a placeholder: each is a false alarm."""
    answers, snippets = [], 0
    questions = own_words()
    for question in questions:
        response = client.post(f"{url}/v1/query", json={"question": question, "config": config})
        response.raise_for_status()
        body = response.json()
        if PLACEHOLDER.search(body["answer"]):
            answers.append({"question": question, "answer": body["answer"][:200]})
        snippets += any(PLACEHOLDER.search(c["snippet"] + c["title"] + c["section"]) for c in body["citations"])
    return {"questions": len(questions), "answers_with_placeholder": len(answers),
            "responses_with_placeholder_in_citations": snippets, "flagged": answers}  # fmt: skip


class CannedGenerator(Generator):
    """The same answer for every question, one word per delta (a stand-in that costs the same both sides)."""

    name = "extractive"

    def stream(self, request: GenerationRequest) -> Iterator[Delta | Finished]:
        for word in re.findall(r"\S+\s*", ANSWER):
            yield Delta(word)
        yield Finished(Usage(count_prompt_tokens(request.messages), count_tokens(ANSWER)), "extractive")


def configs_folder() -> Path:
    """default.yaml three times: PII on (context included), question and answer only, and off."""
    folder = Path(tempfile.mkdtemp(prefix="ragops-pii-bench-"))
    shutil.copy(ROOT / "configs" / "pricing.yaml", folder / "pricing.yaml")
    raw = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    (folder / "default.yaml").write_text(yaml.safe_dump(raw))
    raw["pii"]["apply_to"]["context"] = "off"
    (folder / "qaonly.yaml").write_text(yaml.safe_dump(raw))
    raw["pii"]["enabled"] = False
    (folder / "nopii.yaml").write_text(yaml.safe_dump(raw))
    return folder


def timed(client: httpx.Client, url: str, config: str, n: int) -> tuple[list[float], list[dict[str, Any]]]:
    times, bodies = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        response = client.post(f"{url}/v1/query", json={"question": QUESTION, "config": config})
        times.append((time.perf_counter() - t0) * 1000)
        response.raise_for_status()
        bodies.append(response.json())
    return times, bodies


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench pii")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=30, help="per configuration and round")
    parser.add_argument("--detection-only", action="store_true", help="score both sets, skip the overhead runs")
    parser.add_argument("--false-alarms-only", action="store_true", help="count placeholders in own-words answers")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"detection": detection(), "held_out": detection(HELD_OUT_SET)}
    print(json.dumps({"detection": result["detection"], "held_out": result["held_out"]}), flush=True)
    if args.detection_only:
        path = write_result("pii_detection", result)
        print(f"wrote {path}")
        return result
    folder = configs_folder()
    config = load_config("default", folder)
    try:
        with bench_server() as admin_uri:
            database = fresh_database(admin_uri, "pii_bench")
            with database.connect() as conn:
                IngestPipeline(conn, config, get_embedder(config.config.index.embedding)).run(ROOT / "samples")
                key = create_key(conn, "bench", ["query"], collections=["*"], configs=["*"])[1]
            settings = Settings(
                database_url=SecretStr(database.url), configs_dir=folder, prompts_dir=ROOT / "prompts",
                vllm_url=None, port=free_port(),
            )  # fmt: skip
            app = create_app(settings)
            headers = {"Authorization": f"Bearer {key}"}
            with serve_in_thread(app) as url, httpx.Client(timeout=60, headers=headers) as client:
                result["false_alarms"] = false_alarms(client, url)  # the real extractive generator
                print(json.dumps(result["false_alarms"]), flush=True)
                if args.false_alarms_only:
                    return result
                for name in ("default", "qaonly", "nopii"):
                    app.state.pipeline._generators[f"extractive:{name}"] = CannedGenerator()
                timed(client, url, "default", 5)  # warm-up
                timed(client, url, "qaonly", 5)
                timed(client, url, "nopii", 5)
                on_p50, qa_p50, off_p50, bodies, qa_bodies = [], [], [], [], []
                for _ in range(args.rounds):  # interleaved: all see the same machine state
                    on, on_bodies = timed(client, url, "default", args.requests)
                    qa, qa_round = timed(client, url, "qaonly", args.requests)
                    off, _ = timed(client, url, "nopii", args.requests)
                    on_p50.append(percentile(on, 50))
                    qa_p50.append(percentile(qa, 50))
                    off_p50.append(percentile(off, 50))
                    bodies.extend(on_bodies)
                    qa_bodies.extend(qa_round)
        answer_tokens = [b["usage"]["completion_tokens"] for b in bodies]
        result["overhead"] = {
            "question_tokens": count_tokens(QUESTION),
            "answer_tokens_median": median([float(t) for t in answer_tokens]),
            "pii_on_p50_ms": round(median(on_p50), 2),
            "pii_off_p50_ms": round(median(off_p50), 2),
            "added_p50_ms": round(median([a - b for a, b in zip(on_p50, off_p50, strict=True)]), 2),
            # The filter's own time inside each request (question + answer), free of the e2e noise.
            "filter_p50_ms": round(
                percentile([b["timings"]["pii_ms"] + b["timings"]["pii_answer_ms"] for b in bodies], 50), 2
            ),
            # Context filtering (5 retrieved chunks, their titles and sources) vs question + answer only.
            "qa_only_p50_ms": round(median(qa_p50), 2),
            "context_added_p50_ms": round(median([a - b for a, b in zip(on_p50, qa_p50, strict=True)]), 2),
            "context_on_vs_qa_only_p50_ratio": round(median(on_p50) / median(qa_p50), 3),
            "qa_only_filter_p50_ms": round(
                percentile([b["timings"]["pii_ms"] + b["timings"]["pii_answer_ms"] for b in qa_bodies], 50), 2
            ),
            "citations": len(bodies[-1]["citations"]),
            "filtered": bodies[-1]["pii"],
            "rounds": args.rounds,
            "requests_per_round": args.requests,
        }
        print(json.dumps(result["overhead"]), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    path = write_result("pii", result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
