"""Drift detection on real question sets: does the alarm fire when traffic moves, and stay quiet when not?

Reference = WikiQA questions; live traffic switches to PubMedQA questions (abrupt), or mixes in 10%
more PubMedQA every 100 questions (gradual), or stays WikiQA (null). Questions are embedded once with
the project's embedder and reused by every seed. The window size, alpha and the consecutive-window
rule are chosen on a development split (reference = half of WikiQA dev, null = the other half,
drift = PubMedQA's train/validation questions), then reported on held-out data (reference = all of
WikiQA dev, null = WikiQA test, drift = PubMedQA test). MMD and the domain classifier's AUC are
measured side by side. Retrieval drift: WikiQA's corpus is ingested twice with the real pipeline
(every page, and a random half of the pages); live questions switch from the full index to the half.

Each live window is a fresh random sample from its pool (no question twice within a window).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.retrieval import RetrievalQuery, search
from bench.common import DATASETS, ROOT, bench_server, fresh_database, read_jsonl, write_result
from core.access import DEFAULT_COLLECTION
from core.config import DriftSettings, LoadedConfig, load_config
from core.drift.signals import SIGNALS, judge
from core.drift.stats import TestResult, classifier_test, consecutive_alarm, mmd_test
from core.embedding import get_embedder
from ingest import versions
from ingest.pipeline import IngestPipeline

WINDOWS = (25, 50, 100)
ALPHAS = (0.005, 0.01, 0.05)  # 500 permutations: the smallest p is 1/501
CONSECUTIVE = (1, 2, 3)
SWITCH_WITHIN = 200  # questions after the switch
GRADUAL_BLOCK = 100  # questions per 10% step
GRADUAL_LIMIT = 0.40  # the alarm must come before the mix reaches this share
Test = Callable[[np.ndarray, np.ndarray, int], TestResult]
TESTS: dict[str, Test] = {
    "mmd": lambda ref, win, seed: mmd_test(ref, win, permutations=500, seed=seed),
    "classifier_auc": lambda ref, win, seed: classifier_test(ref, win, seed=seed),
}


def window_sample(rng: np.random.Generator, domains: list[int], pools: list[np.ndarray]) -> np.ndarray:
    """Rows for one window whose positions are from the given domains (0 = null pool, 1 = drift pool)."""
    rows = []
    for d in (0, 1):
        count = domains.count(d)
        if count:
            rows.append(pools[d][rng.choice(len(pools[d]), count, replace=False)])
    return np.vstack(rows)


def scenario_streams(seed: int, window: int, null_windows: int) -> dict[str, Any]:
    """Per-position domains of the three streams (0 = WikiQA, 1 = PubMedQA) and where each switch is."""
    rng = random.Random(seed)
    pre = rng.randint(2, 4) * window + rng.randrange(window)  # the switch falls anywhere inside a window
    switch = [0] * pre + [1] * (SWITCH_WITHIN + 2 * window)
    gradual: list[int] = []
    for step in range(7):
        block = [1] * (step * GRADUAL_BLOCK // 10) + [0] * (GRADUAL_BLOCK - step * GRADUAL_BLOCK // 10)
        rng.shuffle(block)
        gradual += block
    return {"null": [0] * (null_windows * window), "switch": switch, "switch_at": pre, "gradual": gradual}


def p_values(
    test: Test, reference: np.ndarray, pools: list[np.ndarray], domains: list[int], window: int, seed: int
) -> list[float]:
    """p-value of each complete window of a stream."""
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, len(domains) - window + 1, window):
        sample = window_sample(rng, domains[start : start + window], pools)
        out.append(test(reference, sample, seed * 1000 + start).p_value)
    return out


def first_alarm(ps: list[float], alpha: float, consecutive: int) -> int | None:
    """Index of the first window at which the alarm is raised."""
    states: list[Any] = []
    for i, p in enumerate(ps):
        states.append("drift" if p < alpha else "ok")
        if consecutive_alarm(states, consecutive):
            return i
    return None


def alarm_windows(ps: list[float], alpha: float, consecutive: int) -> int:
    """Windows of a stream at which the alarm is on."""
    states: list[Any] = []
    on = 0
    for p in ps:
        states.append("drift" if p < alpha else "ok")
        on += consecutive_alarm(states, consecutive)
    return on


Split = Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]]


def question_drift(test: Test, split: Split, seeds: int, null_windows: int) -> dict[str, Any]:
    """Every window size x alpha x consecutive rule for one statistic, from one set of p-values per window size.

    ``split(seed)`` gives that seed's reference, null pool and drift pool.
    """
    grid: dict[str, Any] = {}
    seconds = 0.0
    tests_run = 0
    for window in WINDOWS:
        if window > len(split(0)[1]):
            continue
        runs = []
        for seed in range(seeds):
            reference, null_pool, drift_pool = split(seed)
            pools = [null_pool, drift_pool]
            streams = scenario_streams(seed, window, null_windows)
            t0 = time.perf_counter()
            run = {k: p_values(test, reference, pools, streams[k], window, seed) for k in ("null", "switch", "gradual")}
            seconds += time.perf_counter() - t0
            tests_run += sum(len(v) for v in run.values())
            runs.append((streams["switch_at"], run))
        for alpha, consecutive in itertools.product(ALPHAS, CONSECUTIVE):
            false_on = sum(alarm_windows(r["null"], alpha, consecutive) for _, r in runs)
            null_total = sum(len(r["null"]) for _, r in runs)
            delays, shares = [], []
            for switch_at, r in runs:
                hit = first_alarm(r["switch"], alpha, consecutive)
                delays.append(None if hit is None else (hit + 1) * window - switch_at)
                g = first_alarm(r["gradual"], alpha, consecutive)
                shares.append(None if g is None else ((g + 1) * window - 1) // GRADUAL_BLOCK / 10)
            fired = [d for d in delays if d is not None and d <= SWITCH_WITHIN]
            early = [s for s in shares if s is not None and s < GRADUAL_LIMIT]
            grid[f"w{window}_a{alpha}_c{consecutive}"] = {
                "window": window, "alpha": alpha, "consecutive": consecutive,
                "false_alarm_rate": round(false_on / null_total, 4), "null_windows": null_total,
                "switch_detected_within_200": round(len(fired) / len(runs), 3),
                "switch_delay_median": float(np.median([d for d in delays if d is not None])) if fired else None,
                "switch_delay_max": max((d for d in delays if d is not None), default=None),
                "gradual_before_40pct": round(len(early) / len(runs), 3),
                "gradual_share_median": float(np.median([s for s in shares if s is not None])) if early else None,
            }  # fmt: skip
    return {"grid": grid, "seconds_per_test": round(seconds / max(tests_run, 1), 4), "tests": tests_run}


def choose(grid: dict[str, Any]) -> dict[str, Any] | None:
    """The rule that meets every target with the fewest false alarms, then the fastest detection."""
    ok = [
        g
        for g in grid.values()
        if g["switch_detected_within_200"] >= 0.95
        and g["gradual_before_40pct"] >= 0.95
        and g["false_alarm_rate"] <= 0.05
    ]
    ok.sort(key=lambda g: (g["false_alarm_rate"], g["gradual_share_median"], g["switch_delay_median"], -g["window"]))
    return ok[0] if ok else None


def embed_questions(config: LoadedConfig) -> tuple[dict[str, np.ndarray], dict[str, list[str]], dict[str, str]]:
    """Vectors of every WikiQA and PubMedQA question (embedded once), the splits, and WikiQA's texts."""
    embedder = get_embedder(config.config.index.embedding)
    splits: dict[str, list[str]] = {}
    texts: dict[str, str] = {}
    for name in ("wikiqa", "pubmedqa"):
        for q in read_jsonl(DATASETS / name / "queries.jsonl"):
            key = f"{name}:{q['_id']}"
            texts[key] = q["text"]
            splits.setdefault(f"{name}:{q['metadata']['split']}", []).append(key)
    keys = list(texts)
    t0 = time.perf_counter()
    vectors = dict(zip(keys, embedder.embed_batch([texts[k] for k in keys]), strict=True))
    print(f"embedded {len(keys)} questions in {time.perf_counter() - t0:.1f} s")
    return vectors, splits, {k: v for k, v in texts.items() if k.startswith("wikiqa:")}


def build_indexes(config: LoadedConfig, admin_uri: str, seed: int) -> dict[str, Any]:
    """WikiQA's corpus ingested twice by the real pipeline: every page, and a random half of the pages."""
    rows = read_jsonl(DATASETS / "wikiqa" / "corpus.jsonl")
    pages = sorted({r["metadata"]["doc_id"] for r in rows})
    kept = set(random.Random(seed).sample(pages, len(pages) // 2))
    embedder = get_embedder(config.config.index.embedding)
    out: dict[str, Any] = {"pages": len(pages), "passages": len(rows)}
    with tempfile.TemporaryDirectory(prefix="ragops-drift-") as folder:
        half = Path(folder) / "corpus.jsonl"
        half.write_text("".join(json.dumps(r) + "\n" for r in rows if r["metadata"]["doc_id"] in kept))
        for name, corpus in (("full", DATASETS / "wikiqa" / "corpus.jsonl"), ("half", half)):
            database = fresh_database(admin_uri, f"drift_{name}")
            t0 = time.perf_counter()
            with database.connect() as conn:
                report = IngestPipeline(conn, config, embedder).run(corpus)
            out[name] = {"database": database, "chunks": report.chunks_written, "ingest_s": time.perf_counter() - t0}
    return out


def retrieval_signals(
    config: LoadedConfig, indexes: dict[str, Any], vectors: dict[str, np.ndarray], texts: dict[str, str]
) -> dict[str, dict[str, np.ndarray]]:
    """Per index: top-1 score, margin and emptiness of every WikiQA question, through ragops' own search."""
    settings = config.config.retrieval
    keys = list(texts)
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in ("full", "half"):
        top, margin, empty = [], [], []
        with indexes[name]["database"].connect() as conn:
            version = versions.active_index_version(conn)
            assert version is not None
            for key in keys:
                query = RetrievalQuery(texts[key], settings.top_k, DEFAULT_COLLECTION, None)
                scores = [h.score for h in search(conn, version, settings, query, vectors[key])]
                top.append(scores[0] if scores else 0.0)
                margin.append(scores[0] - scores[1] if len(scores) > 1 else 0.0)
                empty.append(not scores)
        out[name] = {"top_score": np.array(top), "score_margin": np.array(margin), "empty_retrieval": np.array(empty)}
    out["keys"] = {"order": np.array(keys)}
    return out


def retrieval_drift(
    signals: dict[str, dict[str, np.ndarray]], dev: list[str], test: list[str], rule: dict[str, Any], seeds: int
) -> dict[str, Any]:
    """Reference: WikiQA dev on the full index; live: WikiQA test, on the full index (null), then on the half."""
    order = {k: i for i, k in enumerate(signals["keys"]["order"])}
    ref_rows, test_rows = np.array([order[k] for k in dev]), np.array([order[k] for k in test])
    window = rule["window"]
    settings = DriftSettings(
        min_questions=window, max_questions=window, alpha=rule["alpha"], consecutive=rule["consecutive"]
    )
    names = ("top_score", "score_margin", "empty_retrieval")
    delays, false_on, null_total = [], 0, 0
    for seed in range(seeds):
        streams = scenario_streams(seed, window, 20)
        rng = np.random.default_rng(seed)
        for kind in ("null", "switch"):
            domains = streams[kind]
            states: dict[str, list[Any]] = {n: [] for n in names}
            alarm_at = None
            for i, start in enumerate(range(0, len(domains) - window + 1, window)):
                part = domains[start : start + window]
                rows = test_rows[rng.choice(len(test_rows), window, replace=False)]
                on = False
                for name in names:
                    live = np.where(np.array(part) == 1, signals["half"][name][rows], signals["full"][name][rows])
                    states[name].append(
                        judge(SIGNALS[name], signals["full"][name][ref_rows], live, settings, seed=seed).state
                    )
                    on = on or consecutive_alarm(states[name], rule["consecutive"])
                if kind == "null":
                    false_on, null_total = false_on + on, null_total + 1
                elif on and alarm_at is None:
                    alarm_at = i
            if kind == "switch":
                delays.append(None if alarm_at is None else (alarm_at + 1) * window - streams["switch_at"])
    fired = [d for d in delays if d is not None and d <= SWITCH_WITHIN]
    reference = {n: float(np.median(signals["full"][n][ref_rows])) for n in ("top_score", "score_margin")}
    half = {n: float(np.median(signals["half"][n][test_rows])) for n in ("top_score", "score_margin")}
    return {
        "rule": {k: rule[k] for k in ("window", "alpha", "consecutive")},
        "psi_min": settings.psi_min,
        "false_alarm_rate": round(false_on / null_total, 4),
        "null_windows": null_total,
        "switch_detected_within_200": round(len(fired) / seeds, 3),
        "switch_delay_median": float(np.median(fired)) if fired else None,
        "median_reference": reference,
        "median_half_index": half,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench drift")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--skip-retrieval", action="store_true", help="question drift only (no ingest)")
    args = parser.parse_args(argv)
    config = load_config("default", ROOT / "configs")
    vectors, splits, wiki_texts = embed_questions(config)

    def stack(keys: list[str]) -> np.ndarray:
        return np.stack([vectors[k] for k in keys])

    dev_keys = sorted(splits["wikiqa:dev"])

    def dev_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keys = list(dev_keys)
        random.Random(seed).shuffle(keys)
        return stack(keys[: len(keys) // 2]), stack(keys[len(keys) // 2 :]), stack(splits["pubmedqa:trainval"])

    def heldout_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return stack(dev_keys), stack(splits["wikiqa:test"]), stack(splits["pubmedqa:test"])

    result: dict[str, Any] = {"seeds": args.seeds, "questions": {k: len(v) for k, v in splits.items()}, "dev": {}}
    chosen: dict[str, Any] = {}
    for name, test in TESTS.items():
        dev = question_drift(test, dev_split, args.seeds, 10)
        rule = choose(dev["grid"])
        result["dev"][name] = {"seconds_per_test": dev["seconds_per_test"], "chosen": rule, "grid": dev["grid"]}
        print(name, "dev choice:", rule)
        if rule is not None:
            chosen[name] = rule
    result["heldout"] = {}
    for name, rule in chosen.items():
        held = question_drift(TESTS[name], heldout_split, args.seeds, 20)
        key = f"w{rule['window']}_a{rule['alpha']}_c{rule['consecutive']}"
        result["heldout"][name] = {**held["grid"][key], "seconds_per_test": held["seconds_per_test"]}
        print(name, "held-out:", result["heldout"][name])
    if not args.skip_retrieval and "mmd" in chosen:
        with bench_server() as admin_uri:
            indexes = build_indexes(config, admin_uri, seed=0)
            signals = retrieval_signals(config, indexes, vectors, wiki_texts)
            result["retrieval"] = {
                "corpus": "wikiqa corpus.jsonl, all pages vs a random half of the pages (real ingest pipeline)",
                "pages": indexes["pages"], "passages": indexes["passages"],
                "chunks": {n: indexes[n]["chunks"] for n in ("full", "half")},
                "ingest_s": {n: round(indexes[n]["ingest_s"], 1) for n in ("full", "half")},
                **retrieval_drift(signals, dev_keys, splits["wikiqa:test"], chosen["mmd"], args.seeds),
            }  # fmt: skip
            print("retrieval:", result["retrieval"])
    path = write_result("drift", result)
    print(f"wrote {path}")
    return result
