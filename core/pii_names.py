"""Which of the spaCy model's entities are personal names: the tidy-up pipe of the PII engine.

spaCy's small model reads capitalization more than meaning. In documents it calls headings, table
cells, product and tool names, codes and street names persons ("Refresh cycle", "Email and chat",
"managed in Toggler", ``CUSTOMS_HOLD``, "18 Foundry Lane"), and it labels many unfamiliar personal
names ORG. This pipe corrects both: a name-shaped ORG becomes PERSON, and a PERSON span that has a
reading under which it cannot be a name (below, :func:`_not_a_name`) is dropped. Each reading is
about the span's shape or its place in the text, never a list of particular words of one collection;
a span with none of them stays a PERSON, so a real name in a heading, a list or a sentence's first
word is still found.
"""

from __future__ import annotations

import bisect
import re
from functools import cached_property
from typing import TYPE_CHECKING

from core.tables import is_table_row, table_cells

if TYPE_CHECKING:
    from spacy.tokens import Doc, Span

_NAME_WORD = re.compile(r"^(?:Mc|Mac|O['’])?[A-Z][a-z]+(?:[-'’][A-Za-z][a-z]+)*$")
_NAME_PARTICLES = frozenset(
    "al bin da das de del della den der di dos du el ibn la le ten ter van von".split()
)  # fmt: skip
ORGANIZATION_WORDS = frozenset(
    # legal forms and kinds of organization
    """ag agency airlines airways association authority bank board bv co college commission committee company
    corp corporation council court department foundation fund gmbh group holdings hospital inc institute
    insurance llc ltd ministry partners plc police sa school securities society team trust union university
    academy administration church clinic club museum office"""
    # business functions: team names read like two capitalized words ("People Operations")
    """ analytics care compliance customer customers data design development engineering facilities finance
    infrastructure legal marketing operations payroll people platform procurement product quality relations
    reliability research resources sales security service services success support"""
    # sites, products, programmes and events
    """ airport app capital center centre cloud conference connect depot desk energy express federal foods
    freight global handbook harbor harbour hotel hub initiative international labs logistics media motors
    national network news pharma policy port portal press program programme project quay revenue shipping
    software solutions summit systems technologies technology track transport warehouse week""".split()
)
_POSSESSIVE = frozenset({"'s", "’s", "'", "’"})
# What ends a street name after a house number ("18 Foundry Lane"), and what numbers a unit ("Suite 900").
_STREET_WORDS = frozenset(
    """alley ave avenue blvd boulevard close court crescent ct dr drive gardens hwy highway lane ln parkway pl place
    plaza quay rd road row sq square st street terrace walk way wharf""".split()
)
_UNIT_WORDS = frozenset("apartment apt building floor level room suite unit".split())
# A word before the span that makes it a thing: "the Eyrie", "our Compass plan", "managed in Toggler".
# Not "that" or "this": they also join clauses ("now that Ewan MacLeod left").
_DETERMINERS = frozenset("a an each every its our the their your".split())
_THING_PREPOSITIONS = frozenset("in inside into using via".split())
# Kinds of field that never hold a person: a table column or a "Label: value" under one of these
# holds no name ("Support channels: Email and chat", "Room | Office" over "Osprey | Port Aldane").
_THING_FIELDS = frozenset(
    """address addresses building buildings category channel channels city code codes country currency event
    events feature features field fields floor format kind language languages location locations model office
    offices plan plans platform price product products region room rooms service services site sites status
    street system systems tier tool tools type types version""".split()
)
# Letters after a name that are not an acronym's: "Helen Okafor MD" is still a person.
_NAME_SUFFIXES = frozenset("cpa dds esq ii iii iv jr md mba phd rn sr".split())
_CODE_SHAPE = re.compile(r"[_/@\\]|[a-z0-9]\.[a-z]")  # snake_case, paths, handles, file names (".html")
_MARKUP = "*_`\"'“”‘’([{"
_TABLE_RULE = re.compile(r"[\s|:-]*-[\s|:-]*")
_LOOK_BACK = 200  # characters of a line read before a span for its label or previous word (a label is short)


def looks_like_name(words: Span) -> bool:
    """Two to four capitalized words, name particles allowed, none of them an organization word."""
    if not 2 <= len(words) <= 4 or words[0].lower_ in _NAME_PARTICLES or words[-1].lower_ in _NAME_PARTICLES:
        return False
    return all(
        w.lower_ in _NAME_PARTICLES or (_NAME_WORD.match(w.text) is not None and w.lower_ not in ORGANIZATION_WORDS)
        for w in words
    )


def tidy_entities(doc: Doc) -> Doc:
    """Possessives off entity ends (so "Kestrel Freight's" meets the allow list); name-shaped ORG -> PERSON;
    PERSON spans split at line breaks and free-standing punctuation, and dropped where :func:`_not_a_name`."""
    from spacy.tokens import Span

    layout = _Layout(doc)
    tidy = []
    for ent in doc.ents:
        end = ent.end
        while end > ent.start + 1 and doc[end - 1].lower_ in _POSSESSIVE:
            end -= 1
        words = doc[ent.start : end]
        label = "PERSON" if ent.label_ == "ORG" and looks_like_name(words) else ent.label_
        if label != "PERSON":
            tidy.append(Span(doc, ent.start, end, label=label))
            continue
        for piece in _pieces(doc[ent.start : end]):
            if not _not_a_name(piece, layout):
                tidy.append(Span(doc, piece.start, piece.end, label="PERSON"))
    doc.ents = tidy
    return doc


def _pieces(span: Span) -> list[Span]:
    """A span cut at line breaks and at punctuation standing between spaces ("KESTREL FREIGHT - EXPENSES"):
    a name never crosses either."""
    doc = span.doc
    pieces, start = [], span.start
    for i in range(span.start, span.end + 1):
        cut = i == span.end or "\n" in doc[i].text or (doc[i].is_punct and doc[i].whitespace_ and i > 0
                                                       and doc[i - 1].whitespace_)  # fmt: skip
        if cut:
            words = doc[start:i]
            while len(words) and words[-1].is_punct:
                words = doc[words.start : words.end - 1]
            if len(words) and any(t.is_alpha for t in words):
                pieces.append(words)
            start = i + 1
    return pieces


class _Layout:
    """What the readings need of a whole text, computed once per text and only when asked.

    Entities are looked up by offset (bisect), so a long text with many entities costs linear time.
    """

    def __init__(self, doc: Doc) -> None:
        self.doc = doc
        self.text = doc.text  # spaCy joins its tokens anew on every read of Doc.text: read it once
        self._pipes: dict[int, tuple[list[int], bool]] = {}  # per row: where its pipes are, and a leading one

    @cached_property
    def lowercase(self) -> set[str]:
        """The words the text writes in lowercase."""
        return {t.lower_ for t in self.doc if t.is_lower}

    @cached_property
    def starts(self) -> list[int]:
        """Where each line starts."""
        return [0] + [m.end() for m in re.finditer("\n", self.text)]

    def line_of(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset) - 1

    def line(self, i: int) -> str:
        end = self.starts[i + 1] - 1 if i + 1 < len(self.starts) else len(self.text)
        return self.text[self.starts[i] : end]

    @cached_property
    def rows(self) -> list[bool]:
        """Per line: whether it is a table row."""
        return [is_table_row(self.line(i)) for i in range(len(self.starts))]

    @cached_property
    def headers(self) -> list[int | None]:
        """Per line: the line holding its table's header row, when the line is a table row and the text shows it.

        The first row of a block of table rows is its header when a line precedes the block or a
        Markdown rule (``|---|``) follows that row; a block at the very start of a chunk may have lost it.
        """
        headers: list[int | None] = []
        header: int | None = None
        in_block = False
        for i, row in enumerate(self.rows):
            if not row:
                in_block = False
                headers.append(None)
                continue
            if not in_block:
                in_block = True
                follows = self.line(i + 1) if i + 1 < len(self.starts) else ""
                header = i if i > 0 or _TABLE_RULE.fullmatch(follows) else None
            headers.append(header)
        return headers

    def column(self, i: int, offset: int) -> int:
        """Which cell of row ``i`` holds ``offset``."""
        if i not in self._pipes:
            line = self.line(i)
            self._pipes[i] = ([m.start() for m in re.finditer(r"\|", line)], line.lstrip().startswith("|"))
        pipes, outer = self._pipes[i]
        return bisect.bisect_right(pipes, offset - self.starts[i]) - outer


def _not_a_name(span: Span, layout: _Layout) -> bool:
    """Whether a span the model calls PERSON has a reading under which it is not a person's name."""
    words = [t for t in span if not t.is_punct]
    if not words:
        return True
    doc = span.doc
    if any(_CODE_SHAPE.search(t.text) for t in span) or layout.text[span.start_char - 1 : span.start_char] == "`":
        return True  # code, a path or a file name
    last = words[-1]
    if len(words) == 1 and len(last.text) >= 2 and last.text.isupper():
        return True  # an acronym or a shouted heading word ("GB", "IC", "CONTINUOUS")
    if len(words) > 1 and last.lower_ in ORGANIZATION_WORDS:
        return True  # "Customer Support", "Engineering Handbook", "Recharge Week"
    if len(words) > 1 and last.text.isupper() and len(last.text) >= 2 and last.lower_ not in _NAME_SUFFIXES:
        return True  # a name followed by an acronym names a thing ("Clearwater EAP")
    if _is_address(span):
        return True
    line = layout.line_of(span.start_char)
    before = layout.text[max(layout.starts[line], span.start_char - _LOOK_BACK) : span.start_char]
    previous = _last_word(before)
    if previous in _DETERMINERS:
        return True
    following = doc[span.end].lower_ if span.end < len(doc) else ""
    if previous in _THING_PREPOSITIONS and following not in _POSSESSIVE:
        return True
    if _field_holds_no_person(span, layout, line, before):
        return True
    # A single word the text also writes in lowercase ("Drill results ..." beside "a restore drill")
    # is a common noun at the start of a sentence or in a heading.
    return len(words) == 1 and bool(_forms(last.lower_) & layout.lowercase)


def _forms(word: str) -> set[str]:
    """A word and its plain plural or singular."""
    forms = {word, word + "s", word + "es"}
    if word.endswith("s"):
        forms.add(word[:-1])
    if word.endswith("es"):
        forms.add(word[:-2])
    return forms


def _last_word(before: str) -> str:
    """The last word of the text before a span, lowercased, past markup ("in **Toggler**" -> "in")."""
    words = before.rstrip().rstrip(_MARKUP).split()
    return words[-1].lower() if words else ""


def _is_address(span: Span) -> bool:
    """A street after a house number ("18 Foundry Lane"), or a unit word before a number ("Suite 900")."""
    doc = span.doc
    after = doc[span.end] if span.end < len(doc) else None
    numbered = span.start > 0 and doc[span.start - 1].like_num
    if numbered and (span[-1].lower_ in _STREET_WORDS or (after is not None and after.lower_ in _STREET_WORDS)):
        return True
    return len(span) == 1 and span[0].lower_ in _UNIT_WORDS and after is not None and after.like_num


def _field_holds_no_person(span: Span, layout: _Layout, line: int, before: str) -> bool:
    """The span is a table cell under a column, or a value after a label, that names a kind of thing."""
    if layout.rows[line]:
        header = layout.headers[line]
        if header is None:
            return False  # the table's header row is not in this text: nothing known of the column
        if header == line:
            return True  # a header cell names a column, not a person
        cells = table_cells(layout.line(header))
        column = layout.column(line, span.start_char)
        return 0 <= column < len(cells) and _names_things(cells[column])
    if ";" not in before and layout.starts[line] < span.start_char - _LOOK_BACK:
        return False  # more than a short label precedes the span on its line
    label = before.rsplit(";", 1)[-1].strip(" \t-•" + _MARKUP)
    return label.endswith(":") and len(label.split()) <= 4 and _names_things(label[:-1])


def _names_things(label: str) -> bool:
    return bool({w.lower() for w in re.findall(r"[A-Za-z]+", label)} & _THING_FIELDS)
