"""The README cannot drift: its curl bodies are accepted by the API and its commands exist."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app import cli
from app.keys import create_key
from app.main import create_app
from core.db import Database
from tests.app.conftest import authed, make_settings
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
REQUEST_ID = "$REQUEST_ID"  # the feedback example splices the shell variable into its JSON body


@pytest.fixture(scope="module")
def api_key(private_database: Database) -> str:
    """An all-scopes key on this module's own database."""
    with private_database.connect() as conn:
        return create_key(conn, "tests", ["query", "admin"], collections=["*"], configs=["*"])[1]


@pytest.fixture(scope="module")
def client(private_database: Database, api_key: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The API over a database of this module's own: its requests queue jobs and delete what they find."""
    app = create_app(make_settings(private_database, tmp_path_factory.mktemp("own"), vllm_url=None))
    with authed(TestClient(app), api_key) as test_client:
        yield test_client


CURL = re.compile(
    r"curl -[sN] (?:localhost|127\.0\.0\.1):8000(/\S+) -H \"Authorization: Bearer \$KEY\" "
    r"-H 'content-type: application/json' \\\n\s+-d '(.*?)'",
    re.S,
)


def curl_examples() -> list[tuple[str, dict[str, object]]]:
    text = README.replace('"\'"$REQUEST_ID"\'"', f'"{REQUEST_ID}"')
    return [(path, json.loads(body)) for path, body in CURL.findall(text)]


def test_readme_has_curl_examples() -> None:
    assert len(curl_examples()) >= 4


@pytest.mark.parametrize(("path", "body"), curl_examples())
def test_readme_curl_bodies_are_served(client: TestClient, path: str, body: dict[str, object]) -> None:
    if body.get("request_id") == REQUEST_ID:  # an answer of this key's to rate, as the README gets one
        answer = client.post("/v1/query", json={"question": "How many PTO days do new employees get?"})
        body = {**body, "request_id": answer.json()["request_id"]}
    response = client.post(path, json=body)
    assert response.status_code == (202 if path.startswith("/v1/admin/") else 200), response.text  # jobs are queued


@pytest.mark.parametrize("command", sorted(set(re.findall(r"\.venv/bin/ragops ([a-z]+(?: [a-z]+)?)", README))))
def test_readme_cli_commands_exist(command: str) -> None:
    words = command.split()
    result = CliRunner().invoke(cli.app, [*words, "--help"])
    if result.exit_code != 0 and len(words) == 2:  # "ingest samples": the second word is an argument
        result = CliRunner().invoke(cli.app, [words[0], "--help"])
    assert result.exit_code == 0, result.output
