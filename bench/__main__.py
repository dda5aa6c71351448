"""``python -m bench NAME [args]``: run one benchmark; ``report`` renders results into the README."""

from __future__ import annotations

import sys


def main() -> None:
    name, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if name == "ingest":
        from bench import ingest_bench

        ingest_bench.main(args)
    elif name == "quality":
        from bench import retrieval_quality

        retrieval_quality.main(args)
    elif name == "latency":
        from bench import retrieval_latency

        retrieval_latency.main(args)
    elif name == "api":
        from bench import api_latency

        api_latency.main(args)
    elif name == "streaming":
        from bench import streaming

        streaming.main(args)
    elif name == "gate":
        from bench import gate

        gate.main(args)
    elif name == "report":
        from bench import report

        report.main(args)
    else:
        sys.exit("usage: python -m bench ingest|quality|latency|api|streaming|gate|report [options]")


if __name__ == "__main__":
    main()
