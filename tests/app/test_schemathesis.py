"""Schemathesis against the service's own OpenAPI schema: every route, authenticated, no 5xx, no schema violation.

Every response must be documented (status, content type, headers, body); invalid requests must be
refused with a 4xx. Schema-valid requests may still get a documented 422 from rules the schema cannot
express (a configuration's question token limit), so schemathesis' "valid data is accepted" check is
off. Bounded (a few examples per operation and mode) to stay
under a minute on two cores: every generated request runs the real pipeline.
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

EXAMPLES_PER_OPERATION = 10


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_every_route_holds_its_schema(client: TestClient, api_key: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/query", "POST /v1/chat", "POST /v1/chat/completions"}
    calls: dict[str, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {api_key}"}, excluded_checks=[checks.positive_data_acceptance]
            )
            calls[case.operation.label] = calls.get(case.operation.label, 0) + 1

        try:
            run()
        except Unsatisfiable:  # nothing in this operation can be made invalid (e.g. GET /healthz)
            assert mode is GenerationMode.NEGATIVE, operation.label
    print(f"schemathesis {mode.value}: {sum(calls.values())} calls over {len(calls)} operations")
    assert len(calls) >= (len(operations) if mode is GenerationMode.POSITIVE else 4)
