"""HTML main-content extraction: navigation left in chunks before and after, and what it costs at ingest.

Measured on a folder of real documentation pages (default: Debian's ``postgresql-doc-15``,
``apt-get install postgresql-doc-15``; nothing is copied into the repository).

1. Navigation in chunks: every page is loaded and chunked twice, with the HTML loader's
   main-content extraction off ("before") and on ("after"); ``--sample`` chunks are drawn from
   each side. A chunk contains navigation when it holds a navigation cell (Prev, Up, Home, Next
   alone between table separators) or a text of the page's own ``navheader`` / ``navfooter``
   blocks that does not also occur in the page's content. Those texts are read from the raw HTML,
   independently of the extractor under test.
2. Ingest throughput: ``--pages`` sampled pages ingested through the real pipeline (chunking,
   embedding, binary COPY) into fresh databases, without extraction and with it, interleaved
   A B B A on one server with one loaded model; the ratio is pages/s with over pages/s without.

    python -m bench html [--folder DIR] [--pages 300] [--sample 200]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import random
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import bench_server, fresh_database, write_result
from bench.ingest_bench import bench_config
from core.embedding import get_embedder
from ingest import loaders
from ingest.chunking import Chunker
from ingest.pipeline import IngestPipeline

DEFAULT_FOLDER = Path("/usr/share/doc/postgresql-doc-15/html")
_NAV_CELL = re.compile(r"(?:^|\|)[ ]*(?:Prev|Up|Home|Next)[ ]*(?=\||$)", re.MULTILINE)
_NAV_BLOCKS = ("navheader", "navfooter")


def navigation_texts(raw: bytes) -> set[str]:
    """Texts of the page's navigation blocks (cells of DocBook's navheader/navfooter) absent from its content."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(raw, "html.parser")
    cells: set[str] = set()
    for block in soup.find_all(class_=_NAV_BLOCKS):
        for cell in block.find_all(["td", "th"]):
            text = " ".join(cell.get_text(" ").split())
            if len(text) > 4:  # the bare words Prev/Up/Home/Next are matched as cells by _NAV_CELL
                cells.add(text)
        block.extract()
    content = " ".join(soup.get_text(" ").split())
    return {text for text in cells if text not in content}


def navigation_in(chunk_text: str, nav_texts: set[str]) -> str | None:
    """The navigation a chunk holds (a lone Prev/Up/Home/Next cell or one of the page's navigation texts), if any."""
    flat = " ".join(chunk_text.split())
    cell = _NAV_CELL.search(flat)
    if cell:
        return flat[max(cell.start() - 60, 0) : cell.end() + 60]
    return next((text for text in nav_texts if text in flat), None)


def chunk_pages(files: list[Path], main_content: bool) -> tuple[list[tuple[str, str]], list[str], float]:
    """(source, chunk text) for every page, the skip reasons, and the loading seconds (parsing only)."""
    chunker = Chunker(bench_config().config.index.chunking)
    chunks: list[tuple[str, str]] = []
    skipped: list[str] = []
    load_seconds = 0.0
    for path in files:
        t0 = time.perf_counter()
        try:
            document = loaders.load_html(path.name, path.read_bytes(), main_content=main_content)
        except loaders.SkipFile as exc:
            skipped.append(f"{path.name}: {exc}")
            continue
        finally:
            load_seconds += time.perf_counter() - t0
        chunks.extend((path.name, chunk.text) for chunk in chunker.split(document))
    return chunks, skipped, load_seconds


def navigation_counts(files: list[Path], sample: int, seed: int) -> dict[str, Any]:
    """Chunks with navigation text, before and after, in a sample and over all chunks."""
    nav = {path.name: navigation_texts(path.read_bytes()) for path in files}
    result: dict[str, Any] = {}
    for side, main_content in (("before", False), ("after", True)):
        chunks, skipped, load_seconds = chunk_pages(files, main_content)
        found = [navigation_in(text, nav[source]) for source, text in chunks]
        drawn = random.Random(seed).sample(range(len(chunks)), min(sample, len(chunks)))
        examples = [found[i] for i in drawn if found[i]][:3]
        result[side] = {
            "chunks": len(chunks),
            "chunks_with_navigation": sum(1 for f in found if f),
            "sampled": len(drawn),
            "sampled_with_navigation": sum(1 for i in drawn if found[i]),
            "examples": examples,
            "skipped": skipped,
            "load_seconds": load_seconds,
        }
    return result


@contextlib.contextmanager
def html_loader(main_content: bool) -> Iterator[None]:
    """The pipeline's HTML loader with extraction on or off (benchmark only: swaps the suffix table entry)."""
    saved = {suffix: loaders._SINGLE_LOADERS[suffix] for suffix in (".html", ".htm")}
    for suffix in saved:
        loaders._SINGLE_LOADERS[suffix] = functools.partial(loaders.load_html, main_content=main_content)
    try:
        yield
    finally:
        loaders._SINGLE_LOADERS.update(saved)


def throughput(files: list[Path]) -> dict[str, Any]:
    """Pages/s through the whole pipeline, without and with extraction, interleaved A B B A."""
    config = bench_config()
    embedder = get_embedder(config.config.index.embedding)
    embedder.embed_batch(["warm up the model"] * 8)
    runs: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    with tempfile.TemporaryDirectory() as tmp, bench_server() as admin_uri:
        folder = Path(tmp) / "pages"
        folder.mkdir()
        for path in files:
            shutil.copyfile(path, folder / path.name)
        for number, side in enumerate(("without", "with", "with", "without")):
            database = fresh_database(admin_uri, f"bench_html_{number}")
            with html_loader(side == "with"), database.connect() as conn:
                report = IngestPipeline(conn, config, embedder).run(folder)
            runs[side].append(
                {
                    "seconds": report.total_seconds,
                    "load_and_chunk_seconds": report.load_seconds,
                    "embed_seconds": report.embed_seconds,
                    "pages": report.added,
                    "skipped": len(report.skipped),
                    "chunks": report.chunks_written,
                }
            )
    totals = {side: sum(r["seconds"] for r in rs) for side, rs in runs.items()}
    pages = {side: sum(r["pages"] for r in rs) for side, rs in runs.items()}
    per_s = {side: pages[side] / totals[side] for side in runs}
    return {
        "pages": len(files),
        "runs": runs,
        "pages_per_s": per_s,
        "ratio_with_vs_without": per_s["with"] / per_s["without"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench html")
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--pages", type=int, default=300, help="pages ingested per throughput pass")
    parser.add_argument("--sample", type=int, default=200, help="chunks drawn per side for the navigation count")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    files = sorted([*args.folder.glob("*.html"), *args.folder.glob("*.htm")])
    if not files:
        raise SystemExit(f"no HTML pages in {args.folder} (Debian: apt-get install postgresql-doc-15)")
    result: dict[str, Any] = {"corpus": f"{args.folder} ({len(files)} pages)"}
    result["navigation"] = navigation_counts(files, args.sample, args.seed)
    sampled = sorted(random.Random(args.seed).sample(files, min(args.pages, len(files))))
    result["throughput"] = throughput(sampled)
    path = write_result("html", result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
