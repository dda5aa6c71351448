"""Eval set loading: the repository's set is valid; bad lines are named precisely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import EvalInputError
from evals.dataset import load_dataset
from tests.conftest import REPO


def test_the_bundled_eval_set_is_valid_and_covers_every_kind() -> None:
    dataset = load_dataset(REPO / "evals" / "datasets" / "sample.jsonl")
    kinds = [q.kind for q in dataset.questions]
    assert len(kinds) >= 40 and kinds.count("unanswerable") >= 5 and kinds.count("pii") >= 5
    for q in dataset.questions:  # every cited source exists in the bundled samples
        for source in q.sources:
            assert (REPO / "samples" / source.split("#", 1)[0]).is_file(), source
        for value in q.pii:
            assert value in q.question and value not in q.redacted(q.question)
    answerable = [q for q in dataset.questions if q.kind != "unanswerable"]
    assert all(q.key_fact for q in answerable)  # string presence is scored on every answerable question


def test_the_held_out_set_is_valid_and_shares_no_question_with_the_eval_set() -> None:
    """Answer-selection changes are judged on both sets; a shared question would not be held out."""
    held_out = load_dataset(REPO / "evals" / "datasets" / "holdout.jsonl").questions
    sample = load_dataset(REPO / "evals" / "datasets" / "sample.jsonl").questions
    assert len(held_out) >= 40 and [q.kind for q in held_out].count("unanswerable") >= 5
    assert all(q.key_fact for q in held_out if q.kind != "unanswerable")
    for q in held_out:
        for source in q.sources:
            assert (REPO / "samples" / source).is_file(), source
    assert not {q.question.lower() for q in held_out} & {q.question.lower() for q in sample}
    assert not {q.id for q in held_out} & {q.id for q in sample}


GOOD = {"id": "a", "question": "q?", "reference": "r", "sources": ["x.md"], "kind": "answerable"}


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["{not json"], ":1: invalid JSON"),
        ([json.dumps({**GOOD, "colour": 1})], ":1: colour: Extra inputs are not permitted"),
        ([json.dumps({k: v for k, v in GOOD.items() if k != "question"})], ":1: question: Field required"),
        ([json.dumps(GOOD), json.dumps(GOOD)], ":2: duplicate id 'a'"),
        ([json.dumps({**GOOD, "kind": "unanswerable"})], "an unanswerable question has no sources"),
        ([json.dumps({**GOOD, "kind": "pii"})], "lists its personal values"),
        ([json.dumps({**GOOD, "kind": "maybe"})], ":1: kind: Input should be"),
        ([json.dumps({**GOOD, "key_fact": "$95"})], "key_fact must appear in the reference answer"),
        ([json.dumps({**GOOD, "sources": [], "kind": "unanswerable", "key_fact": "r"})], "has no key_fact"),
        ([], "has no questions"),
    ],
)
def test_malformed_datasets_are_refused_with_the_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(EvalInputError) as info:
        load_dataset(path)
    assert message in str(info.value)
