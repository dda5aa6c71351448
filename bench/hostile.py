"""Schemathesis against the service's own OpenAPI schema, more examples than the test suite runs.

Every route, authenticated with an admin key, valid and invalid inputs: counts calls and
failures (5xx or a response outside the schema). The "valid data is accepted" check is off for
the reason given in tests/app/test_schemathesis.py.

    python -m bench hostile [--examples 20] [--operation "POST /v1/query"]

A failure is recorded with the request that caused it (a curl line), so it can be replayed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from app.keys import create_key
from app.main import create_app
from bench.common import bench_server, fresh_database, write_result
from core.config import load_config
from core.embedding import get_embedder
from core.settings import Settings
from ingest.pipeline import IngestPipeline

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import schemathesis
    from fastapi.testclient import TestClient
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode, checks

    parser = argparse.ArgumentParser(prog="python -m bench hostile")
    parser.add_argument("--examples", type=int, default=20, help="per operation and mode")
    parser.add_argument("--operation", default="", help="only operations whose label contains this")
    args = parser.parse_args(argv)
    config = load_config("default", ROOT / "configs")
    result: dict[str, Any] = {"examples_per_operation": args.examples, "modes": {}}
    with bench_server() as admin_uri:
        database = fresh_database(admin_uri, "hostile_bench")
        with database.connect() as conn:
            IngestPipeline(conn, config, get_embedder(config.config.index.embedding)).run(ROOT / "samples")
            key = create_key(conn, "bench", ["query", "admin"], collections=["*"], configs=["*"])[1]
        app_settings = Settings(
            database_url=SecretStr(database.url), configs_dir=ROOT / "configs", prompts_dir=ROOT / "prompts",
            data_dir=Path(tempfile.mkdtemp(prefix="ragops-hostile-")), vllm_url=None, worker_in_process=False,
        )  # fmt: skip
        with TestClient(create_app(app_settings)) as client:
            schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
            operations = [r.ok() for r in schema.get_all_operations()]  # type: ignore[union-attr]
            operations = [o for o in operations if args.operation in o.label]
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                calls = failures = 0
                failed: list[str] = []
                for operation in operations:
                    last_request = "(no request made)"  # the latest example's: the failing one when a check fails

                    @given(case=operation.as_strategy(generation_mode=mode))
                    @settings(
                        max_examples=args.examples, deadline=None, suppress_health_check=list(HealthCheck),
                        database=None,
                    )  # fmt: skip
                    def run(case: schemathesis.Case) -> None:
                        nonlocal calls, last_request
                        calls += 1
                        last_request = case.as_curl_command(headers={"Authorization": "Bearer <admin key>"})
                        case.call_and_validate(
                            headers={"Authorization": f"Bearer {key}"},
                            excluded_checks=[checks.positive_data_acceptance],
                        )

                    try:
                        run()
                    except Unsatisfiable:
                        pass
                    # A failing check (schemathesis raises its FailureGroup, a BaseExceptionGroup): count it,
                    # name the operation and what failed.
                    except (Exception, BaseExceptionGroup) as exc:
                        failures += 1
                        inner = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
                        kinds = ", ".join(sorted({type(e).__name__ for e in inner}))
                        failed.append(f"{operation.label}: {kinds}: {last_request}")
                result["modes"][mode.value] = {
                    "operations": len(operations), "calls": calls, "failures": failures, "failed": failed,
                }  # fmt: skip
                print(json.dumps({mode.value: result["modes"][mode.value]}), flush=True)
    path = write_result("hostile", result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
