"""Render bench/results/*.json into the README's results table (between the bench markers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def ingest_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for the ingest benchmark."""
    ratios = r["ratios"]
    rows = [
        ("ingest: corpus", f"{r['corpus']} -> {r['chunks']} chunks of <= {r['chunk_size']} tokens", ""),
        (
            "ingest: embed-only",
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
    if "langchain_pgvector" in r:
        lc = r["langchain_pgvector"]
        rows.append(
            (
                "ingest: LangChain PGVector, same chunks",
                f"first {lc['first_s']:.1f} s, same again {lc['same_again_s']:.1f} s",
                f"ragops first is {ratios['langchain_first_vs_ragops_first']:.2f}x faster; unchanged re-ingest "
                f"{ratios['langchain_same_again_vs_ragops_unchanged']:.0f}x faster",
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


RENDERERS = {"ingest": ingest_rows}


def render() -> str:
    """The markdown table of every result present."""
    lines = ["| measure | result | vs target / baseline |", "|---|---|---|"]
    dates = []
    for name, renderer in RENDERERS.items():
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        dates.append(f"{name}: {result['date']} on {result['machine']}")
        lines.extend(f"| {a} | {b} | {c} |" for a, b, c in renderer(result))
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
