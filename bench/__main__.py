"""``python -m bench NAME [args]``: run one benchmark; ``report`` renders results into the README."""

from __future__ import annotations

import importlib
import sys

# benchmark name -> module in bench/ with a main(argv) function
MODULES = {
    "ingest": "ingest_bench",
    "html": "html_extraction",
    "chunks": "chunk_lengths",
    "quality": "retrieval_quality",
    "tune": "tune",
    "latency": "retrieval_latency",
    "api": "api_latency",
    "extractive": "extractive",
    "answers": "answers",
    "streaming": "streaming",
    "gate": "gate",
    "pii": "pii",
    "load": "load",
    "reindex": "reindex",
    "hostile": "hostile",
    "console": "console",
    "drift": "drift",
    "online": "online",
    "rollout": "rollout",
    "report": "report",
}


def main() -> None:
    name, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if name not in MODULES:
        sys.exit(f"usage: python -m bench {'|'.join(MODULES)} [options]")
    importlib.import_module(f"bench.{MODULES[name]}").main(args)


if __name__ == "__main__":
    main()
