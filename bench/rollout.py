"""``python -m bench rollout``: does the rollout's sequential test stop bad candidates and pass good ones?

Live traffic is the eval set's questions over the bundled samples. Each question is answered once
per side with the real pipeline (extractive generator): the live configuration, a broken candidate
(keyword-only, top_k 1), one identical to live (a copy under another name), and a subtly worse one
(chunk_size 64, its own index version). The per-question measures are cached; each of 20 seeds then
draws its own stream of live questions (with replacement) and feeds the paired measures to the
sequential test with the guards of configs/default.yaml, as the rollout worker would, until it decides.

Then shadowing's cost on the request path: /v1/query over HTTP on the production app, with a shadow
rollout sampling every question (the worst case: one queued row per answer) against no rollout,
interleaved pair by pair in one run. The rollout worker is not running during those pairs.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from pydantic import SecretStr

from app.answers import Question
from app.keys import create_key
from app.main import create_app
from app.pricing import load_pricing
from app.rag import RagPipeline, final_answer
from app.rollouts import service, store
from app.rollouts.measures import degradation, measures
from app.rollouts.routing import RolloutRouter
from app.rollouts.sequential import decide
from bench.common import ROOT, bench_server, fresh_database, paired_summary, read_jsonl, write_result
from core.access import EVERYTHING
from core.catalog import Catalog
from core.config import RolloutSettings, load_config
from core.embedding import get_embedder
from core.settings import Settings
from ingest.pipeline import IngestPipeline
from tests.utils.server import serve_in_thread

SEEDS = 20
CANDIDATES: dict[str, dict[str, Any]] = {
    "broken": {"retrieval": {"mode": "keyword", "top_k": 1}},
    "identical": {},
    "chunk64": {"index": {"chunking": {"chunk_size": 64, "chunk_overlap": 10}}},
}


def merged(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``change`` laid over it, section by section."""
    out = dict(base)
    for key, value in change.items():
        out[key] = merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def write_configs(folder: Path) -> Path:
    """default (as in the repo, shadow sampling every question for the latency pairs) and the candidates."""
    default = yaml.safe_load((ROOT / "configs/default.yaml").read_text())
    for name, change in CANDIDATES.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(merged(default, change)))
    (folder / "default.yaml").write_text(yaml.safe_dump(merged(default, {"rollout": {"shadow_sample_rate": 1.0}})))
    shutil.copy(ROOT / "configs/pricing.yaml", folder / "pricing.yaml")
    return folder


def answer_once(pipeline: RagPipeline, text: str, config: str, index_version: int) -> dict[str, Any]:
    """One question answered with one side's versions: its measures."""
    loaded = pipeline.catalog.config(config)
    question = Question(text=text, config=config, collection="default", index_version=index_version)
    prepared = pipeline.prepare(question, EVERYTHING)
    answer = final_answer(pipeline.stream(prepared, incremental=False))
    u = answer.usage
    cost = load_pricing(pipeline.settings.configs_dir).request_cost(
        answer.versions.model, loaded.config.index.embedding.model, u.prompt_tokens, u.completion_tokens,
        u.cached_tokens, u.embedding_tokens,
    )  # fmt: skip
    return measures(answer, cost)


def answer_all(pipeline: RagPipeline, questions: list[str], sides: dict[str, int]) -> dict[str, list[dict[str, Any]]]:
    """Every question answered once per side (config -> index version), the sides of one question back to back
    in a rotating order, so that a machine busier at one moment than another slows every side alike."""
    result: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    names = list(sides)
    for i, text in enumerate(questions):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            result[name].append(answer_once(pipeline, text, name, sides[name]))
    return result


def run_stage(pairs: list[tuple[dict[str, Any], dict[str, Any]]], guards: RolloutSettings,
              rng: np.random.Generator) -> tuple[str, int, str | None]:  # fmt: skip
    """Feed a random stream of paired questions to the test until it decides: (verdict, questions, reason)."""
    values: dict[str, list[float]] = {name: [] for name in guards.guards}
    for n in range(1, guards.max_samples + 1):
        live, candidate = pairs[int(rng.integers(len(pairs)))]
        for name in values:
            value = degradation(name, live, candidate)
            if value is not None:
                values[name].append(value)
        decision = decide(values, guards)
        if decision.verdict != "continue":
            return decision.verdict, n, decision.reason
    raise AssertionError("the test must decide by max_samples")


def simulate(pairs: list[tuple[dict[str, Any], dict[str, Any]]], guards: RolloutSettings) -> dict[str, Any]:
    """Shadow, then canary (when shadow passed), for every seed."""
    runs = []
    for seed in range(SEEDS):
        rng = np.random.default_rng(seed)
        verdict, n, reason = run_stage(pairs, guards, rng)
        run: dict[str, Any] = {"seed": seed, "shadow": verdict, "shadow_questions": n}
        if verdict == "pass":
            canary, m, reason = run_stage(pairs, guards, rng)
            run |= {"canary": canary, "canary_questions": m}
        run["outcome"] = "rolled_back" if "rollback" in (run["shadow"], run.get("canary")) else "promoted"
        run["reason"] = reason.split(" (guard")[0] if reason else None
        runs.append(run)
    stopped = [r for r in runs if r["outcome"] == "rolled_back"]
    questions = [r["shadow_questions"] + r.get("canary_questions", 0) for r in stopped]
    return {
        "rolled_back": len(stopped), "seeds": SEEDS,
        "rolled_back_in_shadow_within_200": sum(r["shadow"] == "rollback" and r["shadow_questions"] <= 200
                                                for r in runs),
        "promoted": SEEDS - len(stopped),
        "questions_to_stop": {"min": min(questions, default=None), "median": float(np.median(questions)) if questions
                              else None, "max": max(questions, default=None)},
        "max_questions_to_promote": max((r["shadow_questions"] + r.get("canary_questions", 0) for r in runs
                                         if r["outcome"] == "promoted"), default=None),
        "runs": runs,
    }  # fmt: skip


def latency_pairs(url: str, app: Any, router: RolloutRouter, questions: list[str], key: str, pairs: int,
                  ) -> dict[str, Any]:  # fmt: skip
    """/v1/query with the shadow rollout routing (every answer queued) minus without any rollout, pair by pair."""
    pipeline = app.state.pipeline
    diffs: list[float] = []
    order = random.Random(7)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:

        def timed(on: bool, question: str) -> float:
            pipeline.rollouts = router if on else None
            response = client.post("/v1/query", json={"question": question})
            response.raise_for_status()
            return float(response.elapsed.total_seconds() * 1000)

        for q in questions[:5]:  # warm-up
            timed(True, q), timed(False, q)
        for i in range(pairs):
            question = questions[i % len(questions)]
            first = order.random() < 0.5
            a = timed(first, question)
            b = timed(not first, question)
            on, off = (a, b) if first else (b, a)
            diffs.append(on - off)
    pipeline.rollouts = router
    return paired_summary(diffs, digits=3)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench rollout")
    parser.add_argument("--pairs", type=int, default=300, help="interleaved latency pairs")
    args = parser.parse_args(argv)
    questions = [r["question"] for r in read_jsonl(ROOT / "evals/datasets/sample.jsonl")]
    guards = load_config("default", ROOT / "configs").config.rollout
    result: dict[str, Any] = {
        "traffic": f"{len(questions)} eval questions over the bundled samples, resampled per seed",
        "generator": "extractive", "guards": guards.model_dump(mode="json"), "candidates": {},
    }  # fmt: skip
    with bench_server() as admin_uri, tempfile.TemporaryDirectory() as tmp:
        configs = write_configs(Path(tmp))
        database = fresh_database(admin_uri, "rollout_bench")
        settings = Settings(database_url=SecretStr(database.url), configs_dir=configs, prompts_dir=ROOT / "prompts",
                            vllm_url=None, db_pool_max=10)  # fmt: skip
        catalog = Catalog.load(configs, ROOT / "prompts", "default")
        print("building the live index and the chunk_size 64 version", flush=True)
        with database.connect() as conn:
            default = catalog.config("default")
            IngestPipeline(conn, default, get_embedder(default.config.index.embedding)).run(ROOT / "samples")
            chunk64 = catalog.config("chunk64")
            built = IngestPipeline(conn, chunk64, get_embedder(chunk64.config.index.embedding), collection="default")
            index64 = built.run(ROOT / "samples", activate=False).index_version
            live = service.live_versions(conn, catalog, "default", None)
        with database.pool(4) as pool:
            pipeline = RagPipeline(settings, catalog, pool)
            sides = {name: index64.id if name == "chunk64" else live.index_version for name in ("default", *CANDIDATES)}
            answer_once(pipeline, questions[0], "default", live.index_version)  # warm-up: models loaded
            print(f"answering {len(questions)} questions x {len(sides)} sides", flush=True)
            answered = answer_all(pipeline, questions, sides)
            for name in CANDIDATES:
                pairs = list(zip(answered["default"], answered[name], strict=True))
                result["candidates"][name] = simulate(pairs, guards)
                print(
                    name, json.dumps({k: v for k, v in result["candidates"][name].items() if k != "runs"}), flush=True
                )
        with database.connect() as conn:
            key = create_key(conn, "bench", ["query"], collections=["*"], configs=["*"])[1]
            gate = store.record_gate(conn, {"config": "identical"}, True, "PASS (bench)", "0" * 64, {})
            rollout = service.start_rollout(conn, catalog, "default", gate_id=gate.id, config="identical",
                                            created_by="bench")  # fmt: skip
        app = create_app(settings)
        with serve_in_thread(app, keep_alive_s=60) as url:
            router = app.state.pipeline.rollouts
            result["shadow_latency_paired"] = latency_pairs(url, app, router, questions, key, args.pairs)
        with database.connect() as conn:
            queued = conn.execute("SELECT count(*) FROM rollout_queue WHERE rollout_id = %s", (rollout.id,)).fetchone()
            result["shadow_latency_paired"]["questions_queued"] = int(queued[0]) if queued else 0
        print(json.dumps(result["shadow_latency_paired"]), flush=True)
    path = write_result("rollout", result)
    print(f"wrote {path}")
    return result
