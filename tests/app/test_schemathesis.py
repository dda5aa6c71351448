"""Schemathesis against the service's own OpenAPI schema: every route, authenticated, no 5xx, no schema violation.

Every response must be documented (status, content type, headers, body); invalid requests must be
refused with a 4xx. Schema-valid requests may still get a documented 422 from rules the schema cannot
express (a configuration's question token limit), so schemathesis' "valid data is accepted" check is
off. Bounded (a few examples per operation and mode) to stay
under a minute on two cores: every generated request runs the real pipeline.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from app.keys import create_key
from app.main import create_app
from core.db import Database
from tests.app.conftest import make_settings

EXAMPLES_PER_OPERATION = 10


# A global admin, and an admin and query key granted one collection and the default configuration:
# generated requests naming anything else must be refused with a documented 403, never a 5xx.
GRANTS = {"global": (["*"], ["*"]), "scoped": (["default"], [])}


@pytest.fixture(scope="module")
def api_keys(private_database: Database) -> dict[str, str]:
    """All-scopes keys on this module's own database, one per grant."""
    with private_database.connect() as conn:
        return {
            name: create_key(conn, name, ["query", "admin"], collections=cols, configs=cfgs)[1]
            for name, (cols, cfgs) in GRANTS.items()
        }


@pytest.fixture(scope="module")
def client(private_database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The API over a database of this module's own: its requests queue jobs and delete what they find."""
    app = create_app(make_settings(private_database, tmp_path_factory.mktemp("own"), vllm_url=None))
    with TestClient(app) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("mode", "grant"),
    [(GenerationMode.POSITIVE, "global"), (GenerationMode.POSITIVE, "scoped"), (GenerationMode.NEGATIVE, "scoped")],
    ids=lambda v: getattr(v, "value", v),
)
def test_every_route_holds_its_schema(
    client: TestClient, api_keys: dict[str, str], mode: GenerationMode, grant: str
) -> None:
    api_key = api_keys[grant]
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/query", "POST /v1/chat", "POST /v1/chat/completions"}
    inputless = inputless_operations(client.app.openapi())  # type: ignore[attr-defined]
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
        except Unsatisfiable:  # only an operation without inputs (GET /healthz) has nothing to make invalid
            assert mode is GenerationMode.NEGATIVE and operation.label in inputless, operation.label
    print(f"schemathesis {mode.value} ({grant}): {sum(calls.values())} calls over {len(calls)} operations")
    expected = {op.label for op in operations} - (inputless if mode is GenerationMode.NEGATIVE else set())
    assert set(calls) >= expected, sorted(expected - set(calls))


def inputless_operations(openapi: dict[str, Any]) -> set[str]:
    """Labels of the operations that take no parameters and no body: negative mode cannot make them invalid."""
    return {
        f"{method.upper()} {path}"
        for path, item in openapi["paths"].items()
        for method, operation in item.items()
        if not operation.get("parameters") and "requestBody" not in operation
    }
