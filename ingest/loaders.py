"""Loaders: files -> :class:`Document` (text, title, heading sections, metadata, content hash).

Each loader raises :class:`SkipFile` with a human reason for a file it cannot use (empty,
binary, undecodable, corrupt); the pipeline reports it and goes on with the next file.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED_SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".jsonl")
SECTION_SEPARATOR = " > "
_BINARY_PROBE = 8192


class SkipFile(Exception):
    """A file (or one record of it) that cannot be ingested; the message is the reason."""


@dataclass(frozen=True)
class Section:
    """A heading path that applies from character ``start`` of the document's text on."""

    start: int
    path: tuple[str, ...]


@dataclass
class Document:
    """One loaded document, before chunking."""

    source: str
    title: str
    text: str
    sections: list[Section] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        """sha256 over everything that shapes the chunks: title, text, headings, metadata."""
        digest = hashlib.sha256()
        payload = {
            "title": self.title,
            "text": self.text,
            "sections": [[s.start, list(s.path)] for s in self.sections],
            "metadata": self.metadata,
        }
        digest.update(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode())
        return digest.hexdigest()

    def section_at(self, offset: int) -> tuple[str, ...]:
        """The heading path in force at character ``offset``."""
        current: tuple[str, ...] = ()
        for section in self.sections:
            if section.start > offset:
                break
            current = section.path
        return current


@dataclass(frozen=True)
class LoadResult:
    """What one record of a file became: a document, or the reason it was skipped."""

    source: str
    document: Document | None = None
    skip_reason: str | None = None


def read_text(data: bytes) -> str:
    """Decode bytes as UTF-8 text, rejecting empty, binary and undecodable content."""
    if not data.strip():
        raise SkipFile("empty file")
    if b"\x00" in data[:_BINARY_PROBE]:
        raise SkipFile("binary content (NUL bytes), not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SkipFile(f"not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise SkipFile("empty file")
    return text


def _normalize_space(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t\f\v]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# Linear on any line: no lazy group followed by optional runs (that backtracked quadratically on
# a long run of '#'); the closing sequence is stripped in Python instead.
_MD_HEADING = re.compile(r"(#{1,6})\s+(\S.*)")
# A longer "heading" is a paragraph behind a '#': as a section path it would be copied into the
# embedded text and the row of every chunk below it.
MAX_HEADING_CHARS = 300


def _md_heading(line: str) -> tuple[int, str] | None:
    """(level, text) of an ATX heading line, without its closing ``#`` sequence; None for other lines."""
    match = _MD_HEADING.match(line)
    if match is None:
        return None
    text = match.group(2).rstrip()
    return len(match.group(1)), text.rstrip("#").rstrip() or text[:1]


def _with_headings(lines: Iterator[tuple[int, str]] | list[tuple[int, str]]) -> tuple[str, list[Section]]:
    """Join (level, line) pairs (level 0 = body) into text and heading sections; over-long headings stay body."""
    parts: list[str] = []
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    offset = 0
    for level, line in lines:
        if level and len(line) <= MAX_HEADING_CHARS:
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, line))
            sections.append(Section(start=offset, path=tuple(title for _, title in stack)))
        parts.append(line)
        offset += len(line) + 1
    return "\n".join(parts), sections


def load_markdown(source: str, data: bytes) -> Document:
    """Markdown: headings become the section path; the first H1 is the title."""
    text = _normalize_space(read_text(data))
    lines: list[tuple[int, str]] = []
    in_fence = False
    for line in text.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        heading = None if in_fence else _md_heading(line)
        lines.append(heading if heading and len(heading[1]) <= MAX_HEADING_CHARS else (0, line))
    body, sections = _with_headings(lines)
    title = next((s.path[0] for s in sections if len(s.path) == 1), "") or _title_from_source(source)
    return Document(source=source, title=title, text=body, sections=sections)


def load_text(source: str, data: bytes) -> Document:
    """Plain text: the file name is the title."""
    return Document(source=source, title=_title_from_source(source), text=_normalize_space(read_text(data)))


_HTML_DROP = ("script", "style", "noscript", "template", "svg", "head", "iframe", "object")
_HTML_BLOCKS = (
    "p",
    "div",
    "section",
    "article",
    "main",
    "header",
    "footer",
    "aside",
    "nav",
    "li",
    "ul",
    "ol",
    "table",
    "tr",
    "pre",
    "blockquote",
    "dt",
    "dd",
    "dl",
    "figcaption",
    "br",
    "hr",
    "form",
)
_HEADING_MARK = "\ue000"  # private-use: never in real text, not whitespace to str.strip()


def load_html(source: str, data: bytes) -> Document:
    """HTML: visible text and title; h1-h6 become the section path; scripts and styles dropped."""
    from bs4 import BeautifulSoup

    raw = read_text(data)
    soup = BeautifulSoup(raw, "html.parser")
    title_tag = soup.find("title")
    title = title_tag.get_text(" ", strip=True) if title_tag else ""
    for tag in soup.find_all(_HTML_DROP):
        tag.decompose()
    for tag in soup.find_all(["h1", "h2", "h3", "h4", "h5", "h6"]):
        heading = " ".join(tag.get_text(" ", strip=True).split())
        tag.replace_with(f"\n{_HEADING_MARK}{tag.name[1]}{heading}\n")
    for tag in soup.find_all(_HTML_BLOCKS):
        tag.insert_before("\n")
        tag.insert_after("\n")
    for cell in soup.find_all(["td", "th"]):
        cell.insert_after(" | ")
    lines: list[tuple[int, str]] = []
    for line in _normalize_space(soup.get_text()).split("\n"):
        if line.startswith(_HEADING_MARK):
            level, heading = int(line[1]), line[2:].strip()
            if heading:
                lines.append((level, heading))
        elif line.strip(" |"):
            lines.append((0, line.strip(" |").strip()))
    body, sections = _with_headings(lines)
    if not body.strip():
        raise SkipFile("HTML has no visible text")
    if not title:
        title = next((s.path[0] for s in sections), "") or _title_from_source(source)
    return Document(source=source, title=title, text=body, sections=sections)


def load_pdf(source: str, data: bytes) -> Document:
    """PDF via pypdf: one section per page ("page N")."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError, PyPdfError

    if not data.strip():
        raise SkipFile("empty file")
    if not data.lstrip()[:5] == b"%PDF-":
        raise SkipFile("corrupt PDF: no %PDF header")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            raise SkipFile("encrypted PDF")
        pages = [page.extract_text() or "" for page in reader.pages]
        meta_title = (reader.metadata.title if reader.metadata else None) or ""
    except SkipFile:
        raise
    except (PdfReadError, PyPdfError, ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise SkipFile(f"corrupt PDF: {type(exc).__name__}: {exc}") from None
    lines: list[tuple[int, str]] = []
    sections: list[Section] = []
    offset = 0
    for number, page_text in enumerate(pages, start=1):
        page_text = _normalize_space(page_text)
        if not page_text:
            continue
        sections.append(Section(start=offset, path=(f"page {number}",)))
        lines.append((0, page_text))
        offset += len(page_text) + 1
    text = "\n".join(line for _, line in lines)
    if not text.strip():
        raise SkipFile("PDF has no extractable text (scanned images?)")
    title = str(meta_title).strip() or _title_from_source(source)
    return Document(source=source, title=title, text=text, sections=sections)


def iter_jsonl(source: str, data: bytes) -> Iterator[LoadResult]:
    """BEIR-layout JSONL: one document per line (``_id``, ``title``, ``text``, ``metadata``)."""
    text = read_text(data)
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield LoadResult(source=where, skip_reason=f"line {number}: invalid JSON ({exc.msg})")
            continue
        if not isinstance(record, dict):
            yield LoadResult(source=where, skip_reason=f"line {number}: expected a JSON object")
            continue
        doc_id, body = record.get("_id"), record.get("text")
        if not isinstance(doc_id, str | int) or str(doc_id).strip() == "":
            yield LoadResult(source=where, skip_reason=f"line {number}: missing '_id'")
            continue
        doc_source = f"{source}#{doc_id}"
        if doc_source in seen:
            yield LoadResult(source=doc_source, skip_reason=f"line {number}: duplicate _id {doc_id!r}")
            continue
        seen.add(doc_source)
        if not isinstance(body, str) or not body.strip():
            yield LoadResult(source=doc_source, skip_reason=f"line {number}: missing or empty 'text'")
            continue
        title = record.get("title") if isinstance(record.get("title"), str) else ""
        raw_metadata = record.get("metadata")
        metadata: dict[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
        document = Document(
            source=doc_source,
            title=(title or "").strip() or str(doc_id),
            text=_normalize_space(body),
            metadata={**metadata, "doc_id": str(doc_id)},
        )
        yield LoadResult(source=doc_source, document=document)


def _title_from_source(source: str) -> str:
    stem = Path(source.split("#", 1)[0]).stem
    return re.sub(r"[_-]+", " ", stem).strip().capitalize() or source


_SINGLE_LOADERS: dict[str, Callable[[str, bytes], Document]] = {
    ".md": load_markdown,
    ".markdown": load_markdown,
    ".txt": load_text,
    ".html": load_html,
    ".htm": load_html,
    ".pdf": load_pdf,
}


def load_bytes(source: str, data: bytes) -> Iterator[LoadResult]:
    """Every document in one file's bytes; ``source`` names it (its suffix picks the loader)."""
    suffix = Path(source).suffix.lower()
    try:
        if suffix == ".jsonl":
            yield from iter_jsonl(source, data)
            return
        loader = _SINGLE_LOADERS.get(suffix)
        if loader is None:
            raise SkipFile(f"unsupported file type {suffix or '(none)'!r}")
        document = loader(source, data)
        document.metadata.setdefault("format", suffix.lstrip("."))
        yield LoadResult(source=source, document=document)
    except SkipFile as exc:
        yield LoadResult(source=source, skip_reason=str(exc))


def load_file(path: Path, source: str) -> Iterator[LoadResult]:
    """Every document in the file at ``path``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        yield LoadResult(source=source, skip_reason=f"cannot read: {exc.strerror or exc}")
        return
    yield from load_bytes(source, data)
