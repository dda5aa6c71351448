"""Render bench/results/*.json into the README's results table (between the bench markers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, code_changed_since

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def ingest_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for the ingest benchmark."""
    ratios = r["ratios"]
    rows = [
        ("ingest: corpus", f"{r['corpus']} -> {r['chunks']} chunks of <= {r['chunk_size']} tokens", ""),
        (
            f"ingest: embed-only ({r.get('backend', 'torch')})",
            f"{r['embed_only']['seconds']:.1f} s ({r['embed_only']['chunks_per_s']:.1f} chunks/s)",
            "",
        ),
        (
            "ingest: ragops first ingest",
            f"{r['ragops_first']['seconds']:.1f} s ({r['ragops_first']['docs_per_s']:.1f} docs/s, "
            f"{r['ragops_first']['chunks_per_s']:.1f} chunks/s, embedder {r['ragops_first']['embedder_share']:.0%})",
            f"{ratios['pipeline_vs_embed_only_throughput']:.2f}x embed-only throughput (target >= 0.90)",
        ),
        (
            "ingest: unchanged re-ingest",
            f"{r['ragops_unchanged']['seconds']:.2f} s, {r['ragops_unchanged']['texts_embedded']} texts embedded",
            f"{ratios['first_vs_unchanged_reingest']:.0f}x faster than first (target >= 20x)",
        ),
        (
            "ingest: re-ingest after editing 1%",
            f"{r['ragops_edit_1pct']['seconds']:.2f} s, {r['ragops_edit_1pct']['texts_embedded']} texts embedded",
            f"{ratios['edit_1pct_share_of_first']:.1%} of first (target <= 5%)",
        ),
    ]
    if "embed_backends" in r and "cosine_vs_torch_float32" in r:
        b, cosine = r["embed_backends"], r["cosine_vs_torch_float32"]
        speeds = ", ".join(
            f"{name} {v['texts_per_s']:.1f}" + (f" ({v['precision']}, batch {v['batch']})" if "precision" in v else "")
            for name, v in b.items()
        )
        worst = min(cosine.values(), key=lambda c: c["min"])
        rows.append(
            (
                "embedders on the same chunks, texts/s (torch float32 = what LangChain users run)",
                f"{speeds}; cosine to torch float32 min {worst['min']:.6f} over {worst['texts']} chunks",
                f"default / torch float32 = {ratios['default_vs_torch_float32_embed_throughput']:.2f}x, "
                f"onnx = {ratios['onnx_vs_torch_float32_embed_throughput']:.2f}x; cosine target >= 0.9999",
            )
        )
    if "pii_analysis" in r:
        p = r["pii_analysis"]
        rows.append(
            (
                "ingest: PII spans analyzed and stored at ingest vs not (first ingest, A B B A, best of each)",
                f"{min(p['with_s']):.1f} s vs {min(p['without_s']):.1f} s, {p['texts_analyzed']} texts analyzed",
                f"throughput with analysis {p['throughput_with_vs_without']:.2f}x without (the price of per-query "
                "filtering without analysis)",
            )
        )
    if "query_cache" in r:
        q = r["query_cache"]
        rows.append(
            (
                "query vector cache (a repeated question)",
                f"embed_query p50 {q['cold_p50_ms']:.1f} ms cold, {q['warm_p50_ms']:.3f} ms warm "
                f"({q['queries']} questions, LRU of {q['size']})",
                "",
            )
        )
    if "langchain_index_incremental" in r:
        a = r["langchain_index_incremental"]
        passes = (("first", "first ingest"), ("unchanged", "unchanged re-ingest"), ("edit_1pct", "1% edited"))
        for name, label in passes:
            ratio = ratios[f"langchain_index_{name}_vs_ragops_{name}"]
            rows.append(
                (
                    f"ingest anchor: LangChain index() + SQLRecordManager, cleanup=incremental, {label}",
                    f"{a[name]['seconds']:.2f} s, {a[name]['texts_embedded']} texts embedded "
                    f"(added {a[name].get('num_added', 0)}, skipped {a[name].get('num_skipped', 0)}, "
                    f"deleted {a[name].get('num_deleted', 0)})",
                    f"LangChain / ragops = {ratio:.2f} (same run, same chunks, model and server)",
                )
            )
    if "langchain_pgvector" in r:
        lc = r["langchain_pgvector"]
        rows.append(
            (
                "ingest: LangChain PGVector.add_texts without ids (naive: re-embeds and duplicates; not the anchor)",
                f"first {lc['first_s']:.1f} s, same again {lc['same_again_s']:.1f} s",
                f"LangChain first / ragops first = {ratios['langchain_first_vs_ragops_first']:.2f} (one pass each)",
            )
        )
    if "first_ingest_side_by_side" in r:
        side = r["first_ingest_side_by_side"]
        rows.append(
            (
                f"ingest: first ingest, ragops ({r.get('backend')}, {r.get('precision', 'float32')}) vs LangChain "
                "PGVector.add_texts (torch, float32), "
                f"alternated {side['rounds']}x, best of each",
                f"ragops {min(side['ragops_s']):.1f} s, LangChain {min(side['langchain_pgvector_s']):.1f} s",
                f"ragops throughput {side['ragops_vs_langchain_throughput']:.2f}x LangChain's (target >= 1.25)",
            )
        )
    h = r["hnsw"]
    rows.append(
        (
            "HNSW recall@10 vs exact",
            f"{h['recall_at_10']:.3f} over {h['queries']} queries (p50 {h['hnsw_p50_ms']:.1f} ms vs exact "
            f"{h['exact_p50_ms']:.1f} ms)",
            "target >= 0.95",
        )
    )
    return rows


def html_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for HTML main-content extraction: navigation left in chunks, and its ingest cost."""
    nav, t = r["navigation"], r["throughput"]
    before, after = nav["before"], nav["after"]
    per_s = t["pages_per_s"]
    return [
        (
            f"HTML ingest: chunks holding navigation text, {r['corpus']}",
            f"{after['sampled_with_navigation']} of {after['sampled']} sampled after extraction, "
            f"{before['sampled_with_navigation']} of {before['sampled']} before "
            f"(all chunks: {after['chunks_with_navigation']} of {after['chunks']} after, "
            f"{before['chunks_with_navigation']} of {before['chunks']} before)",
            f"target 0 of 200 after: {'met' if after['sampled_with_navigation'] == 0 else 'MISSED'}",
        ),
        (
            f"HTML ingest throughput with extraction vs without ({t['pages']} pages, full pipeline, A B B A)",
            f"{per_s['with']:.2f} vs {per_s['without']:.2f} pages/s; loading and chunking alone "
            f"{sum(x['load_and_chunk_seconds'] for x in t['runs']['with']):.0f} s vs "
            f"{sum(x['load_and_chunk_seconds'] for x in t['runs']['without']):.0f} s, the rest is embedding",
            f"{t['ratio_with_vs_without']:.2f}x (target >= 0.95: "
            f"{'met' if t['ratio_with_vs_without'] >= 0.95 else 'MISSED'})",
        ),
    ]


def chunk_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for chunk lengths in the embedder's own tokens: chunks it would cut, before and after fitting."""
    e, rows = r["embedder"], []
    for name, settings in r["settings"].items():
        cells = [
            f"{corpus} {c[name]['before']['over_limit']} of {c[name]['before']['chunks']} -> "
            f"{c[name]['after']['over_limit']} of {c[name]['after']['chunks']}"
            for corpus, c in r["corpora"].items()
        ]
        after = sum(c[name]["after"]["over_limit"] for c in r["corpora"].values())
        rows.append(
            (
                f"chunks longer than {e['model']} reads ({e['max_tokens']} of its tokens, title and headings "
                f"included), {settings['chunk_size']}/{settings['chunk_overlap']}-token chunks: before -> after",
                "; ".join(cells),
                f"target 0 after: {'met' if after == 0 else 'MISSED'}",
            )
        )
    return rows


def quality_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for retrieval quality per dataset: each mode, keyword beside its references, tuning."""
    rows = []
    for name, d in r["datasets"].items():
        scores = ", ".join(
            f"{mode} {d[mode]['ndcg_at_10']:.3f} / {d[mode]['recall_at_10']:.3f}"
            for mode in ("vector", "keyword", "hybrid")
        )
        best = max(d["vector"]["ndcg_at_10"], d["keyword"]["ndcg_at_10"])
        needed = best + 0.01 if d["components_within_0_05"] else best - 0.005
        rows.append(
            (
                f"retrieval nDCG@10 / recall@10: {name} ({d['hybrid']['queries']} queries)",
                scores,
                f"hybrid {d['hybrid_minus_best_component']:+.4f} vs better component (target >= "
                f"{needed - best:+.3f}: {'met' if d['hybrid']['ndcg_at_10'] >= needed - 1e-9 else 'MISSED'})",
            )
        )
        if "keyword_bm25s" in d:
            rows.append(
                (
                    f"keyword nDCG@10 beside references: {name}",
                    f"ragops BM25 {d['keyword']['ndcg_at_10']:.3f}, ts_rank {d['keyword_ts_rank']['ndcg_at_10']:.3f}, "
                    f"bm25s (k1 0.9, b 0.4) {d['keyword_bm25s']['ndcg_at_10']:.3f}",
                    f"{d['keyword_minus_best_reference']:+.4f} vs better reference (target >= -0.01: "
                    f"{'met' if d['keyword_minus_best_reference'] >= -0.01 else 'MISSED'})",
                )
            )
    return rows


def tune_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for ``ragops tune`` on each dataset: tuned vs untuned on the real test queries."""
    rows = []
    better = sum(d["tuned_minus_untuned"] > 0 for d in r["datasets"].values())
    worst = min(d["tuned_minus_untuned"] for d in r["datasets"].values())
    verdict = "met" if better >= 2 and worst >= -0.005 else "MISSED"
    for name, d in r["datasets"].items():
        rows.append(
            (
                f"ragops tune on {d['pseudo_queries']} pseudo-queries from the corpus alone: {name}",
                f"test nDCG@10 {d['untuned']['ndcg_at_10']:.4f} untuned -> {d['tuned']['ndcg_at_10']:.4f} tuned "
                f"({d['tuned_minus_untuned']:+.4f}); held-out pseudo-queries {d['held_out_pseudo_ndcg']['before']:.3f}"
                f" -> {d['held_out_pseudo_ndcg']['after']:.3f}; changed {d['chosen'] or 'nothing'}",
                f"target better on >= 2 of 3 and never worse by > 0.005: {better} better, worst "
                f"{worst:+.4f}: {verdict}",
            )
        )
    return rows


def latency_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for retrieval latency and recall at each size."""
    rows = []
    real = int(r["vectors"].split()[0])  # "3000 real embeddings (...) + N(0, 0.03) noise"
    for size, d in r["sizes"].items():
        lat = ", ".join(
            f"{mode} {d[f'{mode}_ms']['p50']:.1f}/{d[f'{mode}_ms']['p95']:.1f}"
            for mode in ("vector", "keyword", "hybrid", "vector_filtered")
        )
        data = (
            f"SYNTHETIC {int(size):,} chunks: {real:,} real embeddings + Gaussian noise, texts repeated"
            if int(size) > real
            else f"{int(size):,} chunks"
        )
        checks = {
            "vector p50 <= 10": d["vector_ms"]["p50"] <= 10,
            "keyword p95 <= 30": d["keyword_ms"]["p95"] <= 30,
            "hybrid p95 <= 30": d["hybrid_ms"]["p95"] <= 30,
            "filtered 10% p50 <= 10": d["vector_filtered_ms"]["p50"] <= 10,
        }
        verdicts = ", ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in checks.items())
        rows.append((f"retrieval p50/p95 ms at {data}", lat, f"targets at 100k (real questions): {verdicts}"))
        rows.append(
            (
                f"HNSW recall@10 at {data}",
                f"{d['recall_at_10']:.3f}; with a filter matching 10%: {d['recall_at_10_filtered_10pct']:.3f}",
                "target >= 0.95",
            )
        )
    return rows


def paired_row(label: str, what: str, p: dict[str, Any], target_ms: float, digits: int = 2) -> tuple[str, str, str]:
    """A row for paired differences (see bench.common.paired_summary) against a p50 target."""
    iqr = p["paired_diff_iqr_ms"]
    p50 = p["paired_diff_p50_ms"]
    return (
        label,
        f"{what}, same question back to back: p50 {p50:+.{digits}f} ms, "
        f"IQR [{iqr[0]:+.{digits}f}, {iqr[1]:+.{digits}f}] ms, p95 {p['paired_diff_p95_ms']:+.{digits}f} ms "
        f"over {p['pairs']} pairs",
        f"target <= {target_ms:g} ms: {'met' if p50 <= target_ms else 'MISSED'}",
    )


def api_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for /v1/query latency: end to end, then the paired overheads a production request pays."""
    rows = []
    for level, d in r["levels"].items():
        rows.append(
            (
                f"/v1/query extractive, concurrency {level}, production path (metering on)",
                f"p50 {d['p50_ms']:.0f} ms, p95 {d['p95_ms']:.0f} ms, {d['requests_per_s']:.1f} req/s, "
                f"{d.get('keys', 1)} key(s), {d['errors']} errors"
                + (f" ({', '.join(f'{k}: {n}' for k, n in d['error_kinds'].items())})" if d.get("error_kinds") else ""),
                f"explanation: end to end minus the stages the server reports, p50 {d['api_overhead_p50_ms']:.2f} ms",
            )
        )
    if "api_paired" in r:
        rows.append(
            paired_row(
                "API overhead (HTTP, auth, budget, ledger, JSON), paired end to end, concurrency 1",
                "/v1/query minus the same pipeline called in-process", r["api_paired"], 5,
            )
        )  # fmt: skip
    if "grant_paired" in r:
        rows.append(
            paired_row(
                "authorization by collection: scoped key vs global key, paired, concurrency 1",
                "scoped minus global key's API overhead", r["grant_paired"], 0.5, digits=3,
            )
        )  # fmt: skip
    if "accounting_paired" in r:
        rows.append(
            paired_row(
                "accounting (auth + budget reservation + ledger), paired end to end, concurrency 1",
                "metered minus bare", r["accounting_paired"], 3,
            )
        )  # fmt: skip
    if "accounting_overhead" in r:
        a = r["accounting_overhead"]
        rows.append(
            (
                "explanation only: subtractive split (cannot see the ledger write after the response)",
                f"API overhead p50 {a['api_overhead_metered_p50_ms']:.2f} ms metered vs "
                f"{a['api_overhead_bare_p50_ms']:.2f} ms with the benchmark-only metering=False; end to end "
                f"p50 {a['metered_p50_ms']:.1f} vs {a['bare_p50_ms']:.1f} ms "
                f"(median of {a['rounds']} interleaved rounds)",
                f"{a['accounting_overhead_p50_ms']:+.2f} ms subtractive; {a['overhead_p50_ms']:+.2f} ms end to end",
            )
        )
    return rows


def streaming_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for time to first token through the service vs vLLM directly."""
    return [
        (
            "streaming TTFT via service vs vLLM direct",
            f"direct p50 {r['direct_ttft_ms']['p50']:.1f} ms, service p50 {r['service_ttft_ms']['p50']:.1f} ms "
            f"(incl. embed + search)",
            f"service overhead beyond embed + search p50 {r['service_overhead_ms']['p50']:.1f} ms (target <= 10 ms)",
        ),
        *(
            [
                (
                    f"streaming with PII on: first text after a word clears the {r['stream_window_chars']}-char window",
                    f"TTFT p50 {r['service_ttft_pii_ms']['p50']:.1f} ms vs {r['service_ttft_ms']['p50']:.1f} ms off",
                    f"+{r['pii_first_text_delay_ms']['p50']:.0f} ms p50: the time the model takes to write the window",
                )
            ]
            if "pii_first_text_delay_ms" in r
            else []
        ),
    ]


def gate_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for the whole eval gate."""
    return [
        (
            f"eval gate, both sides from scratch ({r['questions']} questions each)",
            f"{r['total_s']:.0f} s (baseline {r['baseline_s']:.0f} s, candidate {r['candidate_s']:.0f} s, "
            f"index builds {r['index_build_s'][0]:.0f} s + {r['index_build_s'][1]:.0f} s)",
            "target <= 180 s",
        )
    ]


def detection_rows(d: dict[str, Any], label: str) -> list[tuple[str, str, str]]:
    """Recall per type and precision on one labelled PII set."""
    per_type = d["per_type"]
    ner = ("PERSON", "LOCATION")
    pattern = ", ".join(f"{t} {v['recall']:.2f}" for t, v in sorted(per_type.items()) if t not in ner)
    named = ", ".join(f"{t} {per_type[t]['recall']:.2f}" for t in ner if t in per_type)
    dataset = d.get("dataset", "evals/datasets/pii.jsonl")
    return [
        (
            f"PII recall on {dataset} ({d['texts']} texts; {label})",
            f"{pattern}; {named}",
            "target >= 0.95 pattern types, >= 0.80 PERSON",
        ),
        (f"PII precision, all types ({dataset})", f"{d['precision']:.3f}", "target >= 0.90"),
    ]


def pii_detection_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Detection quality on the development set and, separately, on the held-out set."""
    return detection_rows(r["detection"], "development set: the recognizers were tuned on it") + detection_rows(
        r["held_out"], "held out: written before its first scoring, never tuned on"
    )


def pii_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for PII detection quality (unless a newer detection-only result exists) and filtering overhead."""
    if (RESULTS / "pii_detection.json").exists():
        return overhead_rows(r)
    return [*detection_rows(r["detection"], "development set"), *overhead_rows(r)]


def overhead_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The PII filter's cost on /v1/query."""
    rows: list[tuple[str, str, str]] = []
    if "overhead" in r:
        o = r["overhead"]
        rows.append(
            (
                f"PII filtering on /v1/query ({o['question_tokens']}-token question, "
                f"{o['answer_tokens_median']:.0f}-token answer)",
                f"p50 {o['pii_on_p50_ms']:.1f} ms on vs {o['pii_off_p50_ms']:.1f} ms off "
                f"(median of {o['rounds']} interleaved rounds)",
                f"+{o['added_p50_ms']:.1f} ms end to end; the filter itself p50 {o['filter_p50_ms']:.1f} ms "
                "(target <= 30 ms)",
            )
        )
    return rows


def load_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for the loopback load test and the soak (each its own result file since the SLO change)."""
    rows = []
    for kind in ("load", "soak"):
        if kind not in r:
            continue
        d = r[kind]
        jobs = d.get("reindexes") or []
        activated = sum(1 for j in jobs if j.get("activated"))
        during = f", during {len(jobs)} full reindex jobs ({activated} activated under load)" if jobs else ""
        if "slo_s" in d:
            failures = f"{d['errors']} failures of {d['requests']} (slower than {d['slo_s']:g} s counts as failed)"
            tails = f"p95 {d['p95_ms']:.0f} ms, p99 {d['p99_ms']:.0f} ms"
            target = f"target 0 failures at a {d['slo_s']:g} s SLO"
        else:
            failures = f"{d['errors']} errors of {d['requests']} (300 s client timeout: slow answers not counted)"
            tails = f"p95 {d['p95_ms']:.0f} ms"
            target = "target 0 errors (no SLO applied)"
        rows.append(
            (
                f"{kind}: /v1/query extractive, {d['clients']} clients"
                f"{' (' + str(d['keys']) + ' keys)' if 'keys' in d else ''} for {d['seconds']:.0f} s{during}",
                f"{d['requests_per_s']:.1f} req/s, p50 {d['p50_ms']:.0f} ms, {tails}, {failures}"
                + (f" ({', '.join(f'{k}: {n}' for k, n in d['error_kinds'].items())})" if d.get("error_kinds") else ""),
                target,
            )
        )
        samples = d.get("api_memory") or []
        peak = d.get("api_rss_mb_peak_under_load") or max((m["rss_mb"] for m in samples), default=None)
        if peak is None:
            continue
        half = [m["rss_mb"] for m in samples if m["t_s"] >= d["seconds"] / 2]
        second_half = f"; second half of the run {half[-1] - half[0]:+.0f} MiB" if len(half) > 1 else ""
        rows.append(
            (
                f"{kind}: API memory",
                f"RSS {d['api_rss_mb_start']:.0f} MiB before, peak {peak:.0f} MiB under load{second_half}, "
                f"{d['api_rss_mb_end']:.0f} MiB after the clients stopped",
                "target: flat under load",
            )
        )
    return rows


def reindex_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for reindexing through the job system."""
    full, inc = r["full"], r["incremental_unchanged"]
    return [
        (
            f"reindex job: full build, {r['corpus']}",
            f"{full['seconds']:.1f} s ({full['docs_per_s']:.1f} docs/s, {full['counts']['chunks_written']} chunks), "
            "then activated",
            "",
        ),
        (
            "reindex job: incremental, corpus unchanged",
            f"{inc['seconds']:.2f} s, {inc['counts']['unchanged']} unchanged, {inc['counts']['added']} added",
            f"{r['incremental_share_of_full']:.1%} of the full build (target <= 5%)",
        ),
    ]


def hostile_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for the schemathesis run."""
    modes = r["modes"]
    calls = sum(m["calls"] for m in modes.values())
    failures = sum(m["failures"] for m in modes.values())
    detail = ", ".join(f"{name} {m['calls']}" for name, m in modes.items())
    return [
        (
            f"schemathesis on the OpenAPI schema ({next(iter(modes.values()))['operations']} operations, auth on)",
            f"{calls} generated requests ({detail}), {failures} operations with a failure",
            "target 0 failures (no 5xx, no schema violation)",
        )
    ]


def console_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for the console: the playground's first answer character vs /v1/query, and page renders."""
    added, pages = r["console_added_ms"], r["page_render_ms"]
    direct, console = r["direct_first_char_ms"]["p50"], r["console_first_char_ms"]["p50"]
    worst = max(pages.items(), key=lambda p: p[1]["p95"])
    return [
        (
            "console playground: first answer character vs /v1/query stream (interleaved, one run)",
            f"direct p50 {direct:.1f} ms, console p50 {console:.1f} ms",
            f"console adds p50 {added['p50']:+.1f} ms (target <= 20 ms)",
        ),
        (
            f"console pages, server render with {r['ledger_rows'].split()[0]} ledger rows (synthetic)",
            ", ".join(f"{name} p95 {p['p95']:.1f} ms" for name, p in pages.items()),
            f"worst p95 {worst[1]['p95']:.1f} ms ({worst[0]}) (target <= 50 ms)",
        ),
    ]


def drift_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for the drift benchmark: the chosen rule on held-out data, the alternative statistic, retrieval drift."""
    rows = []
    for name, label in (("mmd", "MMD, permutation p"), ("classifier_auc", "domain-classifier AUC")):
        dev = r["dev"].get(name, {})
        held = r["heldout"].get(name)
        if held is None:
            rows.append((f"drift: question drift by {label} (dev)", "no rule of the grid met every target on dev", ""))
            continue
        rule = f"{held['window']}-question windows, p < {held['alpha']}, {held['consecutive']} in a row"
        rows.append(
            (
                f"drift: question drift by {label}, rule chosen on dev ({rule}), {r['seeds']} seeds, held-out",
                f"WikiQA -> PubMedQA switch caught within 200 questions in {held['switch_detected_within_200']:.0%} "
                f"(median {held['switch_delay_median']:.0f}, max {held['switch_delay_max']}); gradual mix caught "
                f"before 40% in {held['gradual_before_40pct']:.0%} (median at {held['gradual_share_median']:.0%}); "
                f"false alarms {held['false_alarm_rate']:.2%} of {held['null_windows']} WikiQA windows; "
                f"{held['seconds_per_test'] * 1000:.0f} ms per test",
                "targets: >= 95% within 200; >= 95% before 40%; <= 5% false alarms"
                + (f" (dev false alarms {dev['chosen']['false_alarm_rate']:.1%})" if dev.get("chosen") else ""),
            )
        )
    if "retrieval" in r:
        ret = r["retrieval"]
        rows.append(
            (
                f"drift: retrieval drift, WikiQA index of all {ret['pages']} pages -> half of them "
                f"({ret['chunks']['full']} -> {ret['chunks']['half']} chunks)",
                f"caught within 200 questions in {ret['switch_detected_within_200']:.0%} of seeds (median "
                f"{ret['switch_delay_median']:.0f}); false alarms {ret['false_alarm_rate']:.2%} of "
                f"{ret['null_windows']} windows; median top score {ret['median_reference']['top_score']:.3f} -> "
                f"{ret['median_half_index']['top_score']:.3f}",
                "target: fires within 200 questions",
            )
        )
    return rows


def online_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for what tracing and online evaluation cost, and the worker's throughput."""
    rows = []
    for key, label in (("tracing_paired", "tracing on (OTLP/HTTP to a local receiver) vs off"),
                       ("sampling_paired", "online evaluation: /v1/query with 100% sampling vs 0%")):  # fmt: skip
        if key in r and "paired_diff_p50_ms" in r[key]:
            what = f"end to end, concurrency 1, answers citing {r.get('top_k', 5)} chunk(s)"
            rows.append(paired_row(label, what, r[key], target_ms=1.0, digits=3))
    if "tracing_on_us_per_request" in r:
        us = r["tracing_on_us_per_request"]
        rows.append(
            (
                "tracing on: a request's spans and attributes alone (root + 8 stages, OTLP batch export)",
                f"{us:.0f} µs per request on the request's thread",
                f"target <= 1 ms added: {'met' if us <= 1000 else 'MISSED'}",
            )
        )
    if "tracing_off_ns_per_stage" in r:
        ns = r["tracing_off_ns_per_stage"]
        rows.append(
            (
                "tracing off: one stage span (no-op)",
                f"{ns:.0f} ns per stage, {8 * ns / 1000:.1f} µs for a request's 8 stages",
                "off at no cost: nothing of the SDK is built",
            )
        )
    if "worker" in r:
        w = r["worker"]
        verdict = "met" if w["answers_per_s"] >= 20 else "MISSED"
        rows.append(
            (
                "online evaluation worker, reference-free measures",
                f"{w['answers']} queued answers in {w['seconds']:.1f} s: {w['answers_per_s']:.0f} answers/s",
                f"target >= 20 answers/s: {verdict}",
            )
        )
    return rows


def rollout_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for the rollout benchmark: each candidate's outcomes over the seeds, and shadowing's request-path cost."""
    c = r["candidates"]
    broken, same, subtle = c["broken"], c["identical"], c["chunk64"]
    stop = subtle["questions_to_stop"]
    rows = [
        (
            "rollout: broken candidate (keyword-only, top_k 1) in shadow",
            f"rolled back in shadow within 200 questions in {broken['rolled_back_in_shadow_within_200']} of "
            f"{broken['seeds']} seeds (after {broken['questions_to_stop']['max']} questions at most)",
            "target 20 of 20",
        ),
        (
            "rollout: candidate identical to live",
            f"rolled back in {same['rolled_back']} of {same['seeds']} seeds; promoted in {same['promoted']}, "
            f"after {same['max_questions_to_promote']} paired questions at most (shadow + canary)",
            f"target 0 rolled back, promoted within max_samples {r['guards']['max_samples']} per stage",
        ),
        (
            "rollout: subtly worse candidate (chunk_size 64)",
            f"stopped in {subtle['rolled_back']} of {subtle['seeds']} seeds, after {stop['min']}-{stop['max']} "
            f"questions (median {stop['median']})",
            "target >= 18 of 20",
        ),
    ]
    p = r["shadow_latency_paired"]
    rows.append(paired_row("rollout: /v1/query with shadow sampling every question minus no rollout", "on minus off",
                           p, 1.0, 3))  # fmt: skip
    return rows


def extractive_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for extractive answers from stored sentence vectors vs embedding every candidate per answer."""
    q = r["query"]
    names = {
        "reembed_float32": "every candidate embedded per answer in float32 (the code path before)",
        "reembed": "every candidate embedded per answer, today's embedder",
        "rescore": f"stored sentence vectors, {q['rescore']} nearest re-embedded (default)",
        "stored": "stored sentence vectors alone (rescore: 0)",
    }
    base = "reembed_float32" if "c16_speedup_vs_reembed_float32" in q else "reembed"
    rows = []
    for path, d in q["paths"].items():
        speedup = q[f"c16_speedup_vs_{base}"][path]
        also = q.get("c16_speedup_vs_reembed", {}).get(path) if base != "reembed" else None
        rows.append(
            (
                f"/v1/query extractive, {names.get(path, path)}, same server, A B C D D C B A",
                f"c1 p50 {d['c1_p50_ms']:.0f} ms, p95 {d['c1_p95_ms']:.0f} ms; c16 {d['c16_requests_per_s']:.1f} req/s "
                f"({speedup:.2f}x before" + (f"; {also:.2f}x the old path on today's embedder" if also else "") + "); "
                f"{d['texts_embedded_per_answer']:.1f} texts embedded per answer",
                "target: c16 >= 4x before, c1 p50 <= 150 ms" if not path.startswith("reembed") else "",
            )
        )
    if "ingest" in r:
        i = r["ingest"]
        rows.append(
            (
                f"ingest with sentence vectors vs without ({i['chunks']} chunks of the samples, A B B A)",
                f"{i['chunks_per_s']['on']:.1f} vs {i['chunks_per_s']['off']:.1f} chunks/s: "
                f"{i['ratio_on_vs_off']:.2f}x",
                "target >= 0.90x",
            )
        )
    return rows


def answers_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for extractive answer quality on the two eval sets and the README's first example."""
    rows = []
    for label, d in r["sets"].items():
        rows.append(
            (
                f"extractive answers, {label} ({d['dataset']}: {d['answerable']} answerable, "
                f"{d['unanswerable']} unanswerable)",
                f"string presence {d['string_presence']:.3f}; answered {d['answered_n']}/{d['answerable']}; "
                f"refused {d['refused_n']}/{d['unanswerable']} ({d['refusal_accuracy']:.3f}); "
                f"ROUGE-L {d['rouge_l']:.3f}",
                "targets: string presence >= 0.85, answered >= 0.95, refusals >= 0.67 (4 of 6)",
            )
        )
    e = r["readme_example"]
    answer = e["answer"] if len(e["answer"]) <= 160 else e["answer"][:159] + "…"
    rows.append(
        (
            f'the README\'s first example: "{e["question"]}"',
            answer.replace("|", "\\|"),
            f'target: quotes "{e["fact"]}": {"met" if e["fact_quoted"] else "MISSED"}',
        )
    )
    return rows


RENDERERS = {
    "ingest": ingest_rows,
    "html": html_rows,
    "chunks": chunk_rows,
    "quality": quality_rows,
    "tune": tune_rows,
    "latency": latency_rows,
    "api": api_rows,
    "extractive": extractive_rows,
    "answers": answers_rows,
    "streaming": streaming_rows,
    "gate": gate_rows,
    "pii_detection": pii_detection_rows,
    "pii": pii_rows,
    "load": load_rows,
    "soak": load_rows,
    "reindex": reindex_rows,
    "hostile": hostile_rows,
    "console": console_rows,
    "drift": drift_rows,
    "online": online_rows,
    "rollout": rollout_rows,
}


def provenance(result: dict[str, Any]) -> str:
    """The commit a result measured, flagged when the measured code changed after it or was never recorded."""
    commit = result.get("commit")
    if not commit:
        return "commit not recorded: measured before results were stamped"
    if result.get("uncommitted_changes"):
        return f"commit {commit} plus uncommitted changes"
    if code_changed_since(commit, result.get("benchmark")):
        return f"STALE: measured at {commit}, the measured code changed since"
    return f"commit {commit}"


def render() -> str:
    """The markdown table of every result present."""
    lines = ["| measure | result | vs target / baseline |", "|---|---|---|"]
    dates = []
    for name, renderer in RENDERERS.items():
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        stamp = provenance(result)
        load = f", load average {result['load_avg_15m']} over the last 15 min" if "load_avg_15m" in result else ""
        dates.append(f"{name}: {result['date']} on {result['machine']}{load}, {stamp}")
        rows = renderer(result)
        if stamp != f"commit {result.get('commit')}":  # say it on every row, not only in the footnote
            rows = [(a, b, f"{c} (**{stamp}**)") for a, b, c in rows]
        lines.extend(f"| {a} | {b} | {c} |" for a, b, c in rows)
    lines.append("")
    lines.append("Measured " + "; ".join(dates) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} lacks the {START} / {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{render()}\n{END}{tail}")
    print(f"updated {Path(readme).name}")
