"""Factories for small document folders with known content."""

from __future__ import annotations

import json
from pathlib import Path

DOCS = {
    "guide/pto.md": (
        "# Paid time off\n\nEmployees receive 27 days of paid leave per year.\n\n"
        "## Carry-over\n\nUp to 5 unused days carry over into the next calendar year.\n"
    ),
    "guide/oncall.md": (
        "# On-call\n\nThe on-call rotation changes every Tuesday at 10:00.\n\n"
        "## Paging\n\nA page must be acknowledged within 15 minutes or it escalates to the secondary.\n"
    ),
    "notes/coffee.txt": "The espresso machine on the third floor is descaled every Friday by facilities.\n",
    "web/security.html": (
        "<html><head><title>Security policy</title><style>.x{color:red}</style></head><body>"
        "<h1>Security policy</h1><p>Laptops use full-disk encryption.</p>"
        "<h2>Passwords</h2><p>Passwords have at least 14 characters.</p>"
        "<script>var zzqscriptmarker = 1;</script></body></html>"
    ),
}

KB_RECORDS = [
    {
        "_id": "kb-1",
        "title": "Webhook retries",
        "text": "Failed webhooks are retried 8 times with backoff.",
        "metadata": {"product": "track"},
    },
    {
        "_id": "kb-2",
        "title": "API limits",
        "text": "The public API allows 600 requests per minute per token.",
        "metadata": {"product": "track", "tier": "pro"},
    },
]


def write_corpus(root: Path, docs: dict[str, str] | None = None, *, with_jsonl: bool = True) -> Path:
    """Write the small known corpus (or ``docs``) under ``root`` and return ``root``."""
    for rel, text in (docs or DOCS).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    if with_jsonl:
        lines = "\n".join(json.dumps(r) for r in KB_RECORDS) + "\n"
        (root / "kb.jsonl").write_text(lines, encoding="utf-8")
    return root


def corpus_document_count() -> int:
    """Documents :func:`write_corpus` produces by default."""
    return len(DOCS) + len(KB_RECORDS)
