"""Loaders: text, headings and titles extracted; bad files skipped with a reason."""

from __future__ import annotations

import io
import json

import pytest
from pypdf import PdfWriter

from ingest.loaders import LoadResult, load_bytes
from tests.utils.corpus import DOCS
from tests.utils.pdf import text_pdf


def _one(source: str, data: bytes) -> LoadResult:
    results = list(load_bytes(source, data))
    assert len(results) == 1
    return results[0]


def test_markdown_keeps_heading_path_and_title() -> None:
    doc = _one("guide/pto.md", DOCS["guide/pto.md"].encode()).document
    assert doc is not None
    assert doc.title == "Paid time off"
    offset = doc.text.index("Up to 5 unused days")
    assert doc.section_at(offset) == ("Paid time off", "Carry-over")
    assert doc.section_at(doc.text.index("27 days")) == ("Paid time off",)


@pytest.mark.timeout(30)  # the old heading pattern backtracked for minutes on a run of '#'
@pytest.mark.parametrize(
    "line",
    ["# " + "a" * 100_000, "# a" + "#" * 100_000 + "x", "## " + "word " * 20_000, "# a " + "# " * 50_000 + "x"],
    ids=["one-word", "hash-run", "words", "hash-pairs"],
)
def test_an_over_long_heading_line_is_body_text_not_a_section(line: str) -> None:
    doc = _one("hostile.md", f"{line}\n\n# Real heading\n\nBody text.\n".encode()).document
    assert doc is not None
    assert doc.title == "Real heading"  # the first heading that is one
    assert [s.path for s in doc.sections] == [("Real heading",)]
    assert line.split(" ", 1)[1].strip()[:1000] in doc.text  # the long line is kept, as text


@pytest.mark.parametrize(
    ("line", "heading"),
    [("# Title #", "Title"), ("## C# ##", "C#"), ("### a # b", "a # b"), ("# ##", "#"), ("#no-space", None)],
)
def test_markdown_heading_closing_sequences(line: str, heading: str | None) -> None:
    doc = _one("h.md", f"{line}\n\nBody.\n".encode()).document
    assert doc is not None
    assert [s.path[-1] for s in doc.sections] == ([heading] if heading else [])


def test_markdown_ignores_hashes_inside_code_fences() -> None:
    doc = _one("a.md", b"# Title\n\n```bash\n# not a heading\n```\ntext\n").document
    assert doc is not None
    assert [s.path for s in doc.sections] == [("Title",)]


def test_html_drops_scripts_and_styles_and_keeps_headings() -> None:
    doc = _one("web/security.html", DOCS["web/security.html"].encode()).document
    assert doc is not None
    assert doc.title == "Security policy"
    assert "zzqscriptmarker" not in doc.text
    assert "color:red" not in doc.text
    assert doc.section_at(doc.text.index("14 characters")) == ("Security policy", "Passwords")


def test_html_table_cells_are_separated() -> None:
    html = b"<html><body><table><tr><td>Gold</td><td>99 USD</td></tr></table></body></html>"
    doc = _one("t.html", html).document
    assert doc is not None
    assert "Gold | 99 USD" in doc.text


def test_jsonl_beir_records_become_documents_and_bad_lines_are_reported() -> None:
    lines = [
        json.dumps({"_id": "a1", "title": "Alpha", "text": "first text", "metadata": {"lang": "en"}}),
        "{not json",
        json.dumps({"_id": "a2", "title": "Beta", "text": ""}),
        json.dumps({"title": "no id", "text": "x"}),
        json.dumps({"_id": "a1", "title": "dup", "text": "again"}),
        json.dumps({"_id": 7, "text": "numeric id"}),
    ]
    results = list(load_bytes("kb.jsonl", "\n".join(lines).encode()))
    docs = [r.document for r in results if r.document]
    assert [d.source for d in docs] == ["kb.jsonl#a1", "kb.jsonl#7"]
    assert docs[0].metadata == {"lang": "en", "doc_id": "a1"}
    reasons = [r.skip_reason for r in results if r.skip_reason]
    assert len(reasons) == 4
    assert any("line 2: invalid JSON" in r for r in reasons)
    assert any("duplicate _id" in r for r in reasons)


def test_pdf_text_is_extracted_per_page() -> None:
    doc = _one("manual.pdf", text_pdf("Backups run nightly at 02:00")).document
    assert doc is not None
    assert "Backups run nightly at 02:00" in doc.text
    assert doc.section_at(0) == ("page 1",)


def _blank_pdf() -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(width=72, height=72)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("source", "data", "reason"),
    [
        ("empty.md", b"", "empty file"),
        ("blank.txt", b"  \n\t\n", "empty file"),
        ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary content"),
        ("latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1"), "not valid UTF-8"),
        ("broken.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 9 0 R >> garbage", "PDF"),
        ("zip.pdf", b"PK\x03\x04" + b"\x00" * 40, "corrupt PDF"),
        ("scan.pdf", _blank_pdf(), "no extractable text"),
        ("script-only.html", b"<html><script>x()</script></html>", "no visible text"),
        ("data.xlsx", b"whatever", "unsupported file type"),
    ],
)
def test_bad_files_are_skipped_with_a_reason(source: str, data: bytes, reason: str) -> None:
    result = _one(source, data)
    assert result.document is None
    assert result.skip_reason is not None
    assert reason in result.skip_reason


def test_content_hash_changes_with_text_only() -> None:
    a = _one("a.md", b"# T\n\nsame text").document
    b = _one("a.md", b"# T\n\nsame text").document
    c = _one("a.md", b"# T\n\nother text").document
    assert a and b and c
    assert a.content_hash == b.content_hash != c.content_hash
