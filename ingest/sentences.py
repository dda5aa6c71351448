"""The quotable units of a chunk: prose sentences, and list items and table rows read with their context.

One splitter for both sides of the extractive generator: ingest pools a vector for each unit from the
chunk's own forward pass (over the unit's character spans), and answering splits the retrieved,
PII-filtered text the same way and takes those vectors by ordinal. So the splitter must give the same
units for a text and for its filtered form: a placeholder such as ``<PERSON_1>`` starts a sentence
like a capitalised word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.tables import is_table_row, table_cells
from ingest.loaders import SECTION_SEPARATOR

# Bump when the splitter gives other units for the same text: vectors stored for the old units are then
# ignored (answers embed those sentences) and re-pooled when their chunk is next written.
SPLITTER_VERSION = 1

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9<])|\n+")
_MIN_SENTENCE_CHARS = 12
_LIST_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\d{1,2}[.)])\s+")
_TABLE_RULE = re.compile(r"^[\s|:-]+$")
_EMPHASIS = re.compile(r"\*\*|__|`")
_HEADING_MAX_WORDS = 10
_SHORT_ITEM_WORDS = 4

Span = tuple[int, int]


def split_sentences(text: str) -> list[str]:
    """Sentences (or list items / lines) of a passage, trimmed, without fragments."""
    return [s.strip() for s in _SENTENCE_END.split(text) if len(s.strip()) >= _MIN_SENTENCE_CHARS]


def _sentence_spans(text: str) -> list[Span]:
    """Where :func:`split_sentences`' sentences lie in ``text``, trimmed, in order."""
    spans: list[Span] = []
    start = 0
    for end, after in [(m.start(), m.end()) for m in _SENTENCE_END.finditer(text)] + [(len(text), len(text))]:
        piece = text[start:end]
        lead = len(piece) - len(piece.lstrip())
        trimmed = piece.strip()
        if len(trimmed) >= _MIN_SENTENCE_CHARS:
            spans.append((start + lead, start + lead + len(trimmed)))
        start = after
    return spans


@dataclass(frozen=True)
class Candidate:
    """A quotable sentence, list item or table row, and the text it is scored with.

    A list item or table row means little alone (``Year 1 (your first 12 months): 15 days``): it is
    scored together with the line that introduces its list, or its table's header row, and the
    heading above it, so a question about PTO finds the bullet under the PTO allowance heading.
    ``spans``: the characters of the passage text it reads (its own line first, then the context
    lines found in the same text), over which ingest pools its vector.
    """

    quote: str
    scored: str
    n: int
    spans: tuple[Span, ...] = ()


@dataclass(frozen=True)
class _Line:
    """A line of the passage without emphasis markers, and the passage offset of each of its characters."""

    text: str
    at: tuple[int, ...]

    def span(self, start: int = 0, end: int | None = None) -> Span:
        """The passage span of ``text[start:end]`` (non-empty)."""
        end = len(self.text) if end is None else end
        return self.at[start], self.at[end - 1] + 1


def _lines(text: str) -> list[_Line]:
    """The passage's lines as :meth:`str.splitlines` gives them, emphasis removed and trimmed, with offsets."""
    out: list[_Line] = []
    offset = 0
    for raw in text.splitlines(keepends=True):
        body = raw.rstrip("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
        chars: list[str] = []
        at: list[int] = []
        position = 0
        for match in _EMPHASIS.finditer(body):
            chars.extend(body[position : match.start()])
            at.extend(range(offset + position, offset + match.start()))
            position = match.end()
        chars.extend(body[position:])
        at.extend(range(offset + position, offset + len(body)))
        cleaned = "".join(chars)
        lead = len(cleaned) - len(cleaned.lstrip())
        stripped = cleaned.strip()
        out.append(_Line(stripped, tuple(at[lead : lead + len(stripped)])))
        offset += len(raw)
    return out


def _is_heading(line: str) -> bool:
    """A heading left as a line of chunk text: short, not ending like a sentence or a lead-in, one sentence at most.

    A line holding a sentence end is prose, however short: with a two-word name replaced by one
    placeholder, ``Payroll goes to Jane Doe (SSN ...). Write to jane@example.net`` would else turn
    into a heading after PII filtering and lose its sentences.
    """
    return (
        len(line.split()) <= _HEADING_MAX_WORDS
        and not line.endswith((".", "!", "?", ":", ";", ","))
        and _SENTENCE_END.search(line) is None
    )


def passage_candidates(text: str, n: int, section: str = "") -> list[Candidate]:
    """The candidates of one passage: prose sentences, and list items and table rows read with their context.

    Headings and lead-in lines (ending in ``:``) are never quoted on their own; they are the context
    of the items below them. ``section`` is the chunk's heading path, the context of its first lines.
    """
    heading = section.split(SECTION_SEPARATOR)[-1].strip()
    heading_spans: tuple[Span, ...] = ()  # the heading's line, when it is in this text
    lead = ""
    lead_spans: tuple[Span, ...] = ()
    header: list[str] = []
    header_spans: tuple[Span, ...] = ()
    out: list[Candidate] = []
    for line in _lines(text):
        if not line.text:
            header = []  # a blank line ends a table; a list keeps its lead-in across blank lines
            continue
        if is_table_row(line.text):
            if _TABLE_RULE.match(line.text):
                continue
            cells = table_cells(line.text)
            if not header:
                header, header_spans = cells, (line.span(),)
                continue
            pairs = "; ".join(f"{h}: {c}" for h, c in zip(header, cells, strict=False) if c)
            quote = pairs if len(header) == len(cells) else " | ".join(cells)
            scored = f"{heading}: {quote}" if heading else quote
            out.append(Candidate(quote, scored, n, (line.span(), *header_spans, *heading_spans)))
            continue
        header = []
        item = _LIST_ITEM.match(line.text)
        if item:
            body = line.text[item.end() :].strip()
            if body.isupper():
                heading, heading_spans, lead, lead_spans = body, (line.span(),), "", ()
                continue
            if len(body) >= 3:
                context = lead or heading
                scored = f"{context} {body}" if context else body
                # "1 minute" quoted alone answers nothing: a short item is quoted with its lead-in.
                quote = f"{lead} {body}" if lead and len(body.split()) < _SHORT_ITEM_WORDS else body
                context_spans = lead_spans if lead else heading_spans
                out.append(Candidate(quote, scored, n, (line.span(), *context_spans)))
            continue
        if _is_heading(line.text):
            heading, heading_spans, lead, lead_spans = line.text, (line.span(),), "", ()
            continue
        spans = _sentence_spans(line.text)
        lead, lead_spans = "", ()
        if line.text.endswith(":"):  # "The delays after each attempt are:" introduces the list below it
            if spans:
                start, end = spans.pop()
                lead, lead_spans = line.text[start:end], (line.span(start, end),)
            else:
                lead, lead_spans = line.text, (line.span(),)
        out.extend(
            Candidate(line.text[start:end], line.text[start:end], n, (line.span(start, end),)) for start, end in spans
        )
    return out


def sentence_spans(text: str, section: str = "", offset: int = 0) -> list[tuple[Span, ...]]:
    """Each candidate's character spans in a text that holds the passage ``text`` at ``offset``, in candidate order."""
    return [
        tuple((start + offset, end + offset) for start, end in candidate.spans)
        for candidate in passage_candidates(text, 0, section)
    ]
