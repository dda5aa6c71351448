"""Loaders: text, headings and titles extracted; bad files skipped with a reason."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from pypdf import PdfWriter

from core.config import ChunkingSettings
from ingest.chunking import Chunker
from ingest.loaders import LoadResult, load_bytes, load_html
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


@pytest.mark.parametrize("main_content", [True, False])
def test_html_text_after_the_closing_tags_is_content_and_the_head_is_not(main_content: bool) -> None:
    """Browsers show text written after </body> or </html>; the head's title is the title, not body text."""
    page = b"<html><head><title>Security</title></head><body><p>Passwords need 14 characters.</p></body></html>"
    doc = load_html("s.html", page + b"\nAppendix: revised on 2026-11-01.\n", main_content=main_content)
    assert doc.title == "Security" and doc.text == "Passwords need 14 characters.\nAppendix: revised on 2026-11-01."


def test_html_table_cells_are_separated() -> None:
    html = b"<html><body><table><tr><td>Gold</td><td>99 USD</td></tr></table></body></html>"
    doc = _one("t.html", html).document
    assert doc is not None
    assert "Gold | 99 USD" in doc.text


HTML_FIXTURES = Path(__file__).parent / "fixtures" / "html"


@pytest.mark.parametrize(
    ("page", "content", "chrome", "section"),
    [
        (
            # PostgreSQL's DocBook layout: Prev | Up | Chapter | Home | Next tables above and below, a TOC.
            "docbook_chapter_section.html",
            [
                "A covering filter answers a query from the filter alone, without visiting the table.",
                "CREATE FILTER orders_cover ON orders (customer_id)\nINCLUDE (total);",
                "included columns | 32",
                "See Section 7.5 for how the planner estimates the cost.",
            ],
            ["Prev", "Up", "Home", "Next", "Chapter 7. Filters", "7.3. Filters on Expressions",
             "7.5. Filter Statistics", "Table of Contents", "Quarrydb 3.2 Documentation"],
            ("thirty-two", ("7.4. Covering Filters", "7.4.2. Limits")),
        ),
        (
            # Read the Docs theme: side menu, search, breadcrumbs, Previous/Next buttons, copyright footer.
            "sphinx_rtd_page.html",
            [
                "Tideline retries a failed job with exponential backoff: the first retry waits two seconds "
                "and every later retry doubles the wait.",
                "max_retries = 7",
            ],
            ["Installing Tideline", "Working with queues", "Changelog", "User guide", "View page source",
             "Previous", "Next", "Copyright", "Built with", "\u00b6"],
            ("dead-letter queue", ("Configuring retries", "Retry limits")),
        ),
        (
            # Sphinx classic theme: "related" bars, a sidebar of topics, a footer div.
            "sphinx_classic_page.html",
            ["A snapshot freezes a volume at one instant so that a backup can copy it while writers go on."],
            ["Navigation", "previous", "next", "Table of Contents", "Previous topic", "Storage layout",
             "Restoring", "Copyright", "Created using", "\u00b6"],
            ("copy-on-write", ("Snapshots",)),
        ),
        (
            # A blog: site header menu, breadcrumb, share links, tag footer, aside, link cloud, no class hints.
            "plain_article.html",
            [
                "Rye dough ferments faster in a warm kitchen, so our bakers start the sourdough at four in the "
                "morning.",
                "Fewer returns of stale bread",
                "Read our earlier post on flour for the milling details.",
            ],
            ["Crumb & Co", "Home", "Shop", "Contact", "Blog", "Popular posts", "Ten sourdough myths", "Facebook",
             "Mastodon", "Tagged", "Opening hours", "Gift cards"],
            ("five days", ("Why our bakery switched to rye", "What customers noticed")),
        ),
    ],
)  # fmt: skip
def test_html_chunks_keep_the_content_and_never_the_navigation(
    page: str, content: list[str], chrome: list[str], section: tuple[str, tuple[str, ...]]
) -> None:
    doc = _one(page, (HTML_FIXTURES / page).read_bytes()).document
    assert doc is not None
    chunks = Chunker(ChunkingSettings(chunk_size=64, chunk_overlap=8)).split(doc)
    texts = [chunk.embed_text for chunk in chunks]
    for phrase in content:  # whole sentences: the HTML's own line breaks did not survive inside them
        assert any(phrase in text for text in texts), phrase
    for phrase in chrome:
        assert not any(re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) for text in texts), phrase
    marker, path = section
    assert doc.section_at(doc.text.index(marker)) == path
    assert " > ".join(path) in {chunk.section for chunk in chunks}


def test_html_without_main_content_extraction_keeps_the_chrome() -> None:
    """The benchmark's "before": the same loader with extraction off still sees the navigation."""
    doc = load_html("page.html", (HTML_FIXTURES / "docbook_chapter_section.html").read_bytes(), main_content=False)
    assert "Prev | Up | Chapter 7. Filters | Home | Next" in doc.text


def test_html_page_of_links_keeps_its_links() -> None:
    html = (
        b"<html><head><title>Site map</title></head><body><ul>"
        b'<li><a href="/a">Alpha guide</a></li><li><a href="/b">Beta guide</a></li>'
        b'<li><a href="/c">Gamma guide</a></li></ul></body></html>'
    )
    doc = _one("sitemap.html", html).document
    assert doc is not None
    assert doc.text.split("\n") == ["Alpha guide", "Beta guide", "Gamma guide"]


def test_html_deeply_nested_page_loads() -> None:
    depth = 20_000  # bs4 edits of a tree this deep used to be quadratic; the walk is iterative
    html = b"<html><body>" + b"<div>" * depth + b"deep text" + b"</div>" * depth + b"</body></html>"
    doc = _one("deep.html", html).document
    assert doc is not None and doc.text == "deep text"


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
        (
            "chrome-only.html",
            b'<html><body><header>Acme</header><nav><a href="/">Home</a> <a href="/docs">Docs</a></nav>'
            b'<div class="sidebar">Related</div><footer>(c) 2026 Acme</footer></body></html>',
            "no main content: only navigation",
        ),
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
