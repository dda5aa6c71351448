"""PII filtering on the request path: pseudonyms, blocking, streams, failing closed, and a leak scan.

Real Presidio with the bundled spaCy model, the real API over the real database.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.generators.base import Delta, Finished, GenerationRequest, Generator, Usage
from app.pii import PiiSession
from core.config import PiiSettings, load_config
from core.db import Database
from core.errors import PiiBlocked
from core.pii import get_pii_engine
from core.runtime import Runtime
from core.settings import Settings
from evals.dataset import load_dataset
from evals.runner import run_eval
from tests.conftest import REPO
from tests.utils.ledger import ledger_row, table_dump

POLICY = load_config("default", REPO / "configs").config.pii
# Made-up values in valid formats.
NAME, EMAIL, PHONE, CARD, EMPLOYEE = (
    "Corinne Abelard",
    "corinne.abelard@example.org",
    "312-555-0147",
    "4487 5749 1186 2520",
    "KF-204871",
)
ANSWER = (
    f"{NAME}, we will write to {EMAIL} and call {PHONE} about badge {EMPLOYEE}; "
    f"the card {CARD} was never charged. Carried-over PTO days expire on 31 March."
)


def session(policy: PiiSettings = POLICY) -> PiiSession:
    return PiiSession(get_pii_engine(), policy)


def chunkings(text: str) -> Iterator[tuple[str, list[str]]]:
    """The same text cut into deltas in many ways, so every entity straddles some boundary."""
    yield "chars", list(text)
    yield "words", re.findall(r"\S+\s*", text)
    for size in (3, 7, 16):
        yield f"every-{size}", [text[i : i + size] for i in range(0, len(text), size)]
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(text)), 25))
    yield "random", [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]


def test_pseudonyms_are_consistent_and_the_callers_values_come_back() -> None:
    pii = session()
    question = pii.filter_question(f"I'm {NAME}, mail me at {EMAIL}. Does {NAME} keep unused PTO?")
    assert question == "I'm <PERSON_1>, mail me at <EMAIL_ADDRESS>. Does <PERSON_1> keep unused PTO?"
    answer = pii.filter_answer("Dear <PERSON_1>: yes. Ask Dana Whitfield in HR.")
    assert answer == f"Dear {NAME}: yes. Ask <PERSON_2> in HR."  # only the caller's own value is restored
    assert pii.report() == {"question": {"EMAIL_ADDRESS": 1, "PERSON": 2}, "answer": {"PERSON": 1}}


def test_restoring_can_be_turned_off() -> None:
    pii = session(POLICY.model_copy(update={"restore_pseudonyms": False}))
    pii.filter_question(f"I'm {NAME}.")
    assert pii.filter_answer("Dear <PERSON_1>.") == "Dear <PERSON_1>."


def test_blocked_types_name_the_type_never_the_value() -> None:
    with pytest.raises(PiiBlocked) as caught:
        session().filter_question(f"My card {CARD} was charged twice.")
    assert "CREDIT_CARD" in str(caught.value) and CARD not in str(caught.value)
    assert caught.value.counts == {"question": {"CREDIT_CARD": 1}}


@pytest.mark.parametrize(("name", "deltas"), list(chunkings(ANSWER)), ids=[n for n, _ in chunkings(ANSWER)])
def test_streamed_output_is_filtered_even_when_entities_straddle_deltas(name: str, deltas: list[str]) -> None:
    whole = session().filter_answer(ANSWER)
    for value in (NAME, EMAIL, PHONE, EMPLOYEE, CARD):
        assert value not in whole
    stream = session().stream()
    released = [stream.feed(d) for d in deltas]
    released.append(stream.flush())
    assert "".join(released) == whole
    sent = ""
    for piece in released:  # no prefix of a value ever leaves before the filter saw the whole value
        sent += piece
        for value in (EMAIL, PHONE, CARD, EMPLOYEE):
            assert value[:6] not in sent, (name, value)
    assert sum(1 for piece in released if piece) > 1  # it streams, rather than holding everything


def test_the_first_text_leaves_once_a_word_clears_the_window_and_later_text_in_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Time to first text is one window of generation, not one and a half; later releases are batched."""
    text = " ".join(["Carried-over PTO days expire on 31 March unless your manager approves"] * 6)
    pii = session()
    analyses: list[int] = []
    analyze = pii.answer_spans
    monkeypatch.setattr(pii, "answer_spans", lambda t: analyses.append(len(t)) or analyze(t))
    stream = pii.stream()
    window = POLICY.stream_window_chars
    fed, first_at, released = 0, None, ""
    for word in re.findall(r"\S+\s*", text):
        fed += len(word)
        piece = stream.feed(word)
        if piece and first_at is None:
            first_at = fed
        released += piece
    released += stream.flush()
    assert released == text
    assert first_at is not None and first_at <= window + 2 * max(len(w) for w in text.split())
    assert len(analyses) <= len(text) // (window // 2) + 2


PEM = (
    "-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEAq7BFUpkGp3+LQmlQ\n"
    "Yx2eqzDV+xeG8kx/sQFV18S5JhzGeIJNA72wSeukEPojtqUyX2J0CciPBh7eqclQ\n-----END PRIVATE KEY-----"
)
KEY_ANSWER = f"Never paste keys into tickets. The one you sent was:\n{PEM}\nRotate it today."


@pytest.mark.parametrize(("name", "deltas"), list(chunkings(KEY_ANSWER)), ids=[n for n, _ in chunkings(KEY_ANSWER)])
def test_a_private_key_longer_than_the_window_never_streams_out(name: str, deltas: list[str]) -> None:
    """The SECRET pattern runs to the key's end (or the text's), so the filter holds the key back whole."""
    whole = session().filter_answer(KEY_ANSWER)
    assert whole == "Never paste keys into tickets. The one you sent was:\n<SECRET>\nRotate it today."
    stream = session().stream()
    sent = ""
    for delta in deltas:
        sent += stream.feed(delta)
        assert "MIIBVQ" not in sent and "-----BEGIN" not in sent, name
    assert sent + stream.flush() == whole


class EchoGenerator(Generator):
    """Repeats the question and the first retrieved passage back, five characters per delta.

    A fake: the extractive generator never repeats the caller's words, but a real model may,
    and the output filter must catch it; the real vLLM tier cannot be steered into doing so.
    """

    name = "extractive"

    def stream(self, request: GenerationRequest) -> Iterator[Delta | Finished]:
        passage = request.passages[0].hit.text[:200] if request.passages else ""
        text = f"You wrote: {request.messages[-1]['content'][-300:]} Also: {passage} Contact {EMAIL}."
        for i in range(0, len(text), 5):
            yield Delta(text[i : i + 5])
        yield Finished(Usage(prompt_tokens=10, completion_tokens=len(text) // 4), "extractive")


@pytest.fixture
def echo(client: TestClient) -> Iterator[Any]:
    pipeline = client.app.state.pipeline  # type: ignore[attr-defined]
    key = f"extractive:{pipeline.catalog.config(None).name}"
    real = pipeline.generator(pipeline.catalog.config(None))
    pipeline._generators[key] = EchoGenerator()
    try:
        yield pipeline
    finally:
        pipeline._generators[key] = real


def test_query_reports_counts_and_filters_what_the_model_repeats(
    client: TestClient, echo: Any, served_database: Database
) -> None:
    question = f"I'm {NAME} ({PHONE}). How many PTO days carry over?"
    response = client.post("/v1/query", json={"question": question})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["pii"]["question"] == {"PERSON": 1, "PHONE_NUMBER": 1}
    assert body["pii"]["answer"]["EMAIL_ADDRESS"] == 1  # the model's own addition is redacted
    assert EMAIL not in body["answer"] and "<EMAIL_ADDRESS>" in body["answer"]
    assert NAME in body["answer"]  # the caller's own name, restored for the caller
    assert PHONE not in body["answer"]  # redacted (not pseudonymized) values cannot come back
    row = ledger_row(served_database, response.headers["X-Request-Id"], wait_s=5)
    assert row is not None and row["pii_counts"] == body["pii"]


def test_blocked_pii_is_a_422_that_names_the_type(client: TestClient, served_database: Database) -> None:
    response = client.post("/v1/query", json={"question": f"Why was card {CARD} declined?"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "PiiBlocked" and "CREDIT_CARD" in error["message"] and CARD not in response.text
    row = ledger_row(served_database, response.headers["X-Request-Id"], wait_s=5)
    assert row is not None and row["status"] == 422 and row["pii_counts"] == {"question": {"CREDIT_CARD": 1}}


@pytest.fixture
def broken_analyzer(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The real analyzer, made to fail from its second call on (the first filters the question)."""
    pipeline = client.app.state.pipeline  # type: ignore[attr-defined]
    config = pipeline.catalog.config(None)
    analyzer = pipeline.pii_engine(config).analyzer(config.config.pii)
    real = analyzer.analyze
    calls = [0]

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] > calls_allowed[0]:
            raise RuntimeError("analyzer crashed")
        return real(*args, **kwargs)

    calls_allowed = [0]
    monkeypatch.setattr(analyzer, "analyze", flaky)
    yield calls_allowed


def test_an_analyzer_failure_on_the_question_fails_closed(client: TestClient, broken_analyzer: list[int]) -> None:
    response = client.post("/v1/query", json={"question": f"I'm {NAME}. How many PTO days carry over?"})
    assert response.status_code == 503 and response.headers["Retry-After"]
    error = response.json()["error"]
    assert error["type"] == "PiiUnavailable" and "PII filter failed" in error["message"]
    assert NAME not in response.text
    metrics = client.get("/metrics").text
    assert re.search(r"^ragops_pii_failures_total [1-9]", metrics, re.M)


def test_an_analyzer_failure_mid_stream_ends_the_stream_with_an_error(
    client: TestClient, echo: Any, broken_analyzer: list[int]
) -> None:
    broken_analyzer[0] = 1  # the question passes; the output filter breaks
    payload = {"question": f"I'm {NAME} ({PHONE}). How many PTO days carry over?", "stream": True}
    with client.stream("POST", "/v1/query", json=payload) as response:
        text = response.read().decode()
    events = re.findall(r"^event: (\w+)", text, re.M)
    assert events[0] == "citations" and events[-1] == "error" and "done" not in events
    assert "PiiUnavailable" in text
    for value in (NAME, PHONE, EMAIL):
        assert value not in text  # nothing unfiltered got out before the failure


@pytest.mark.parametrize("stream", [False, True])
def test_transcript_logging_is_opt_in_and_carries_only_filtered_text(
    client: TestClient, echo: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """RAGOPS_LOG_TEXT logs the question and answer as filtered, with pseudonyms (never restored values)."""
    question = f"I'm {NAME}, reach me at {EMAIL}. How do PTO days carry over?"
    caplog.set_level(logging.INFO, logger="ragops.transcript")
    assert client.post("/v1/query", json={"question": question, "stream": stream}).status_code == 200
    assert not [r for r in caplog.records if r.name == "ragops.transcript"]  # off by default

    monkeypatch.setattr(client.app.state.pipeline.settings, "log_text", True)  # type: ignore[attr-defined]
    response = client.post("/v1/query", json={"question": question, "stream": stream})
    assert response.status_code == 200 and NAME in response.text  # the caller gets their name back
    (record,) = [r.getMessage() for r in caplog.records if r.name == "ragops.transcript"]
    assert response.headers["X-Request-Id"] in record
    assert "question=\"I'm <PERSON_1>, reach me at <EMAIL_ADDRESS>." in record
    assert "answer=" in record and "<PERSON_1>" in record.split("answer=")[1]  # echoed, pseudonym kept
    assert NAME not in record and EMAIL not in record


def test_transcript_is_never_logged_for_a_configuration_without_filtering() -> None:
    off = PiiSession(get_pii_engine(), POLICY.model_copy(update={"enabled": False}))
    assert off.filter_question(f"I'm {NAME}.") == f"I'm {NAME}." and off.filtered_transcript() is None
    no_answer = session(POLICY.model_copy(update={"apply_to": POLICY.apply_to.model_copy(update={"answer": False})}))
    no_answer.filter_question(f"I'm {NAME}.")
    assert no_answer.filtered_transcript() is None


def excerpt(line: str, value: str) -> str:
    """Where ``value`` sits in ``line``: its start (a dumped row's table) and the text around the value."""
    at = line.index(value)
    return f"{line[:40]} ... {line[max(0, at - 200) : at + len(value) + 100]}"


SEEDED = {
    "name": "Teodor Lindqvist-Amaro",
    "email": "teodor.lindqvist@example.net",
    "phone": "206-555-0119",
    "employee": "KF-917342",
    "secret": "AKIAZ7Q4M2X9K3LPW8RT",
}


def test_leak_scan_no_seeded_value_is_stored_logged_or_reported(
    client: TestClient,
    echo: Any,
    served_database: Database,
    database: Database,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    # Every answer queued for online evaluation (its filtered text is stored until the worker measures it),
    # not the configuration's random share: the scan must cover that table in every run.
    monkeypatch.setattr("app.online_eval.sampled", lambda rate: True)
    s = SEEDED
    question = (
        f"This is {s['name']}, {s['email']}, {s['phone']}, staff id {s['employee']}, AWS key {s['secret']}. "
        "How do PTO days carry over?"
    )
    # Every answering endpoint, streamed and not.
    chat = [{"role": "user", "content": question}]
    calls = [
        ("/v1/query", {"question": question}),
        ("/v1/query", {"question": question, "stream": True}),
        ("/v1/chat", {"messages": chat}),
        ("/v1/chat", {"messages": [*chat, {"role": "assistant", "content": "ok"}, *chat], "stream": True}),
        ("/v1/chat/completions", {"model": "default", "messages": chat}),
        ("/v1/chat/completions", {"model": "default", "messages": chat, "stream": True}),
    ]
    for path, payload in calls:
        response = client.post(path, json=payload)
        assert response.status_code == 200, (path, response.text)
        for key in ("email", "phone", "employee", "secret"):  # redacted types never come back, even to the caller
            assert s[key] not in response.text, (path, key)
    # The CLI.
    from app import cli

    monkeypatch.setenv("RAGOPS_DATABASE_URL", served_database.url)
    result = CliRunner().invoke(cli.app, ["query", question])
    assert result.exit_code == 0, result.output
    # An eval run with the seeded values in its questions.
    dataset_file = tmp_path / "seeded.jsonl"
    line = {"id": "s1", "question": question, "reference": "Carried-over PTO days expire on 31 March.",
            "sources": ["handbook/pto.md"], "kind": "pii", "pii": list(s.values())}  # fmt: skip
    dataset_file.write_text(json.dumps(line) + "\n")
    settings = Settings(database_url=database.url, data_dir=tmp_path / "data")  # type: ignore[arg-type]
    with database.connect() as conn:
        report = run_eval(
            Runtime(settings=settings, database=database, conn=conn),
            "default",
            load_dataset(dataset_file),
            samples=REPO / "samples",
        )
    report_file = tmp_path / "report.json"
    report_file.write_text(json.dumps(report))

    captured = capfd.readouterr()
    haystacks = {
        "CLI output": result.output,  # the CLI prints the answer and its citations
        "logs": "\n".join(r.getMessage() for r in caplog.records),
        "stdout/stderr": captured.out + captured.err,
        "ledger and every other table (served)": table_dump(served_database),
        "every table (eval)": table_dump(database),
        "eval report": report_file.read_text(),
    }
    leaks = [
        f"{key} leaked into {where}: {excerpt(line, value)}"
        for where, text in haystacks.items()
        for key, value in s.items()
        for line in text.splitlines()
        if value in line
    ]
    assert not leaks, "\n".join(leaks)  # the lines, not the whole haystack: a table dump is megabytes
    assert table_dump(served_database)  # the scan looked at something
