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
_HTML_BLOCKS = frozenset(
    {
        "p", "div", "section", "article", "main", "header", "footer", "aside", "nav", "li", "ul", "ol", "table",
        "tr", "pre", "blockquote", "dt", "dd", "dl", "figcaption", "br", "hr", "form", "textarea",
    }
)  # fmt: skip
_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_HEADING_MARK = "\ue000"  # private-use: never in real text, not whitespace to str.strip()
_PRE_TAGS = ("pre", "textarea")
_WHITESPACE_RUN = re.compile(r"\s+")
# Page chrome, not content: semantic tags, ARIA landmarks, and the class/id words documentation
# generators use (DocBook's navheader/navfooter/toc, Sphinx's related/sphinxsidebar, Read the Docs' wy-nav-*).
_CHROME_TAGS = ("nav", "aside", "footer", "header")
_CHROME_ROLES = frozenset({"navigation", "banner", "contentinfo", "complementary", "search", "menu", "menubar"})
_CHROME_WORDS = frozenset(
    {
        "nav", "navbar", "navigation", "navheader", "navfooter", "navlinks", "sidenav", "sidebar",
        "sphinxsidebar", "sphinxsidebarwrapper", "breadcrumb", "breadcrumbs", "menu", "menubar", "toc",
        "toctree", "related", "footer", "masthead", "pagination", "pager", "skiplink", "headerlink",
    }
)  # fmt: skip
_CLASS_WORD_SPLIT = re.compile(r"[\s_-]+")
# A block of several links that make up most of its text is a menu; one holding a heading is content.
_LINK_DENSITY, _MIN_LINKS = 0.5, 3
_LINK_BLOCKS = frozenset({"div", "section", "ul", "ol", "dl", "table", "p", "menu", "td"})
_TEXT, _LINKED, _LINKS, _HEADS = range(4)


def _subtree_stats(root: Any) -> dict[int, list[int]]:
    """Per element (by id): visible characters, characters inside links, links, headings below it.

    One bottom-up pass, iterative: hostile nesting must neither recurse nor be searched once per element.
    """
    from bs4 import CData, NavigableString, Tag

    stats: dict[int, list[int]] = {}
    for node in reversed([root, *root.descendants]):
        if isinstance(node, Tag):
            own = stats.setdefault(id(node), [0, 0, 0, 0])
            if node.name == "a" and node.has_attr("href"):
                own[_LINKED], own[_LINKS] = own[_TEXT], own[_LINKS] + 1
            elif node.name in _HEADINGS:
                own[_HEADS] += 1
        elif type(node) in (NavigableString, CData):
            own = [len(node) - sum(1 for c in node if c.isspace()), 0, 0, 0]
        else:
            continue
        if node is not root and node.parent is not None:
            parent = stats.setdefault(id(node.parent), [0, 0, 0, 0])
            for i, value in enumerate(own):
                parent[i] += value
    return stats


def _is_chrome(tag: Any, stats: dict[int, list[int]]) -> bool:
    """Navigation, header, footer, sidebar or menu: by tag, ARIA role, or class/id words."""
    if tag.name in _CHROME_TAGS:
        # A header that carries a heading (an HTML5 article's header) is content.
        return not (tag.name == "header" and stats.get(id(tag), (0, 0, 0, 0))[_HEADS])
    attrs = tag.attrs
    if attrs.get("role") in _CHROME_ROLES or "breadcrumb" in str(attrs.get("aria-label", "")).lower():
        return True
    names = [*(attrs.get("class") or []), attrs.get("id") or ""]
    return any(word in _CHROME_WORDS for name in names for word in _CLASS_WORD_SPLIT.split(str(name).lower()))


def _is_link_dense(tag: Any, stats: dict[int, list[int]]) -> bool:
    """Several links that make up most of the block's text, and no heading: a menu."""
    if tag.name not in _LINK_BLOCKS:
        return False
    text, linked, links, headings = stats.get(id(tag), (0, 0, 0, 0))
    return links >= _MIN_LINKS and not headings and text > 0 and linked / text >= _LINK_DENSITY


def _prune(root: Any, doomed: Callable[[Any], bool]) -> None:
    """Remove every element under ``root`` that ``doomed`` picks, top down (a removed subtree is not visited)."""
    from bs4 import Tag

    stack = [root]
    while stack:
        for child in list(stack.pop().children):
            if isinstance(child, Tag):
                if doomed(child):
                    child.extract()
                else:
                    stack.append(child)


def _main_region(soup: Any) -> Any | None:
    """The page's marked main region (``<main>``, ``role=main``, a lone ``<article>``) if it has text."""
    articles = soup.find_all("article", limit=2)
    for candidate in (
        soup.find("main"),
        soup.find(attrs={"role": "main"}),
        articles[0] if len(articles) == 1 else None,
    ):
        if candidate is not None and candidate.get_text(strip=True):
            return candidate
    return None


def _render_lines(root: Any) -> list[tuple[int, str]]:
    """(level, line) pairs: a line per block, a heading line per h1-h6, table cells joined by " | ".

    The HTML's own line breaks and indentation are not text: collapsed except in preformatted blocks.
    One iterative walk, no edits to the tree (inserting markers into a deep tree is quadratic in bs4).
    """
    from bs4 import CData, NavigableString, Tag

    out: list[str] = []
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        if leaving:
            out.append(" | " if node.name in ("td", "th") else "\n")
        elif isinstance(node, Tag):
            if node.name in _HEADINGS:
                out.append(f"\n{_HEADING_MARK}{node.name[1]}{' '.join(node.get_text(' ').split())}\n")
            elif node.name in _PRE_TAGS:
                out.append(f"\n{node.get_text()}\n")
            else:
                if node.name in _HTML_BLOCKS:
                    out.append("\n")
                    stack.append((node, True))
                elif node.name in ("td", "th"):
                    stack.append((node, True))
                stack.extend((child, False) for child in reversed(node.contents))
        elif type(node) in (NavigableString, CData):
            out.append(_WHITESPACE_RUN.sub(" ", node))
    lines: list[tuple[int, str]] = []
    for line in _normalize_space("".join(out)).split("\n"):
        if line.startswith(_HEADING_MARK):
            level, heading = int(line[1]), line[2:].strip()
            if heading:
                lines.append((level, heading))
        elif line.strip(" |"):
            lines.append((0, line.strip(" |").strip()))
    return lines


def _html_lines(raw: str, *, main_content: bool, link_density: bool) -> tuple[str, list[tuple[int, str]], bool]:
    """Title, (level, line) pairs, and whether the page had visible text before chrome was removed."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(raw, "html.parser")
    title_tag = soup.find("title")
    title = " ".join(title_tag.get_text(" ").split()) if title_tag else ""
    for tag in soup.find_all(_HTML_DROP):
        tag.extract()
    if soup.head is not None:  # the title is read; the rest of the head is never content
        soup.head.extract()
    had_text = bool(soup.get_text(strip=True))
    root: Any = soup
    if main_content:
        main = _main_region(soup)
        # The main region and what encloses it are never chrome, whatever their class names say
        # (Read the Docs wraps the whole page in "wy-body-for-nav" and the content in "wy-nav-content").
        keep = {id(tag) for tag in (main, *main.parents)} if main is not None else set()
        stats = _subtree_stats(soup)
        _prune(soup, lambda tag: id(tag) not in keep and _is_chrome(tag, stats))
        # Not the body alone: browsers show text written after </body> or </html> as part of the page.
        root = main if main is not None and main.get_text(strip=True) else soup
    if link_density:
        stats = _subtree_stats(root)  # again: densities change once the chrome is gone
        _prune(root, lambda tag: _is_link_dense(tag, stats))
    return title, _render_lines(root), had_text


def load_html(source: str, data: bytes, *, main_content: bool = True) -> Document:
    """HTML: the main content's text and the title; h1-h6 become the section path.

    Scripts and styles are always dropped; with ``main_content`` (the default) so are navigation,
    headers, footers, sidebars and link-dense menus. A page that is all links keeps its links; a
    page with nothing but chrome is skipped with that reason, never stored empty.
    """
    raw = read_text(data)
    title, lines, had_text = _html_lines(raw, main_content=main_content, link_density=main_content)
    if main_content and not any(level == 0 for level, _ in lines):
        # Only headings survived: a page of links (a site map, an index) whose links are its content.
        title, lines, had_text = _html_lines(raw, main_content=True, link_density=False)
    body, sections = _with_headings(lines)
    if not body.strip():
        if had_text:
            raise SkipFile("HTML has no main content: only navigation, header, footer, sidebar or menu text")
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
