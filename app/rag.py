"""The RAG pipeline: question -> retrieve -> prompt -> generate, with citations, usage and versions.

One object serves the HTTP API, the CLI and the eval harness, so what CI measures is what
production serves. Retrieval finishes before the first byte of a streamed answer is sent.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from opentelemetry.trace import Span
from opentelemetry.util.types import AttributeValue
from psycopg_pool import ConnectionPool

from app import search_sql
from app.answers import (
    Answer,
    AnswerDelta,
    AnswerDone,
    AnswerUsage,
    Citation,
    Prepared,
    Question,
    Timings,
    Turn,
    json_nodes,
)
from app.generators.base import Delta, Finished, GenerationRequest, Generator, Passage, RareTerms, Usage
from app.generators.extractive import ExtractiveGenerator
from app.generators.vllm import VllmGenerator
from app.pii import PiiSession, StreamFilter, without_placeholders
from app.retrieval import RetrievalQuery, active_version, require_collection, search
from app.rollouts.routing import RolloutRouter
from app.search_sql import ChunkHit
from core.access import Grant
from core.catalog import Catalog
from core.config import MAX_TOP_K, LoadedConfig, PiiSettings
from core.embedding import Embedder, get_embedder
from core.errors import BadRequest, NotFound
from core.pii import PiiEngine, get_pii_engine
from core.prompts import Prompt
from core.settings import Settings
from core.tokens import count_tokens
from core.tracing import annotate, failed, stage, stage_under, start_stage
from ingest import pii_spans
from ingest.versions import IndexVersion, check_embedding_model, get_index_version

_SNIPPET_CHARS = 240
# Learned allow-lists are re-read this often (another process may have ingested), for this many collections.
_LEARNED_TTL_S = 10.0
_LEARNED_COLLECTIONS = 1000
# Rare question words are judged only in a collection of at least this many chunks (ExtractiveSettings.rare_term_share).
RARITY_MIN_CHUNKS = 50
# A follow-up this short ("and for contractors?") is retrieved together with the turn before it.
_FOLLOW_UP_WORDS = 8
# No token is longer than this many characters in practice (a run of dashes reaches 64): text longer
# than limit x this is refused before its tokens are counted, which for megabytes is itself slow.
CHARS_PER_TOKEN_MAX = 16


def format_context(citations: list[Citation], texts: list[str]) -> str:
    """Retrieved text, delimited as data: one <document n=...> element per chunk."""
    blocks = []
    for citation, text in zip(citations, texts, strict=True):
        safe = text.replace("</document", "&lt;/document").replace("<document", "&lt;document")
        source, title = _attribute(citation.source), _attribute(citation.title)
        blocks.append(f'<document n="{citation.n}" source="{source}" title="{title}">\n{safe}\n</document>')
    return "\n".join(blocks)


def _attribute(value: str) -> str:
    """A file name or title inside an attribute: it cannot close the attribute or open a tag."""
    return value.replace('"', "'").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def has_nul(value: Any) -> bool:
    """Whether a JSON value holds a NUL character anywhere (PostgreSQL's text and jsonb cannot store one)."""
    return any(isinstance(item, str) and "\x00" in item for item in json_nodes(value))


def check_history(history: tuple[Turn, ...], config: LoadedConfig) -> None:
    """Refuse earlier chat messages past the configuration's token limits (422), before any PII analysis.

    Characters are checked first, so a multi-megabyte history costs no tokenization.
    """
    generation = config.config.generation
    per_message, total = generation.max_message_tokens, generation.max_history_tokens
    chars = sum(len(turn.content) for turn in history)
    if chars > total * CHARS_PER_TOKEN_MAX:
        raise BadRequest(
            f"earlier messages hold {chars} characters, more than fit in the history limit of {total} tokens "
            "(generation.max_history_tokens)",
            field="messages",
        )
    tokens = 0
    for n, turn in enumerate(history):
        if len(turn.content) > per_message * CHARS_PER_TOKEN_MAX or (count := count_tokens(turn.content)) > per_message:
            raise BadRequest(
                f"messages[{n}] is longer than the limit of {per_message} tokens per earlier message "
                "(generation.max_message_tokens)",
                field="messages",
            )
        tokens += count
    if tokens > total:
        raise BadRequest(
            f"earlier messages have {tokens} tokens; the history limit is {total} tokens "
            "(generation.max_history_tokens)",
            field="messages",
        )


def retrieval_text(question: Question) -> str:
    """The latest user turn, plus the previous one when the latest is a short follow-up.

    PII placeholders are left out: ``<PERSON_1>`` would only pull the query vector off topic.
    """
    text = without_placeholders(question.text)
    if len(text.split()) >= _FOLLOW_UP_WORDS:
        return text
    previous = [without_placeholders(t.content) for t in question.history if t.role == "user"]
    return f"{previous[-1]}\n{text}" if previous else text


def filtered_question(question: Question, pii: PiiSession) -> Question:
    """The question and its history through the PII policy, before retrieval and the model (blocked types raise)."""
    if not pii.applies("question"):
        return question
    return dataclasses.replace(
        question,
        text=pii.filter_question(question.text),
        history=tuple(Turn(t.role, pii.filter_question(t.content)) for t in question.history),
    )


def filtered_hits(hits: list[ChunkHit], pii: PiiSession) -> list[ChunkHit]:
    """Retrieved chunks through the context policy: the text the model reads and every citation field."""
    if not pii.applies("context"):
        return hits
    return [
        dataclasses.replace(
            hit,
            text=pii.filter_context(hit.text),
            title=pii.filter_context(hit.title),
            source=pii.filter_context(hit.source, prose=False),
            section=pii.filter_context(hit.section),
        )
        for hit in hits
    ]


def retrieved_texts(hits: list[ChunkHit]) -> set[str]:
    """Every text of the hits that reaches the model or a citation (what the context filter reads)."""
    return {text for hit in hits for text in (hit.text, hit.title, hit.section, hit.source) if text.strip()}


def fit_context(hits: list[ChunkHit], budget: int) -> tuple[list[Citation], list[Passage]]:
    """The hits that fit in ``budget`` tokens, best first, numbered ``[1]``, ``[2]``... for citation."""
    citations: list[Citation] = []
    passages: list[Passage] = []
    for hit in hits:
        cost = count_tokens(hit.text) + 24  # the <document> wrapper
        if cost > budget:
            break
        budget -= cost
        n = len(citations) + 1
        snippet = hit.text if len(hit.text) <= _SNIPPET_CHARS else hit.text[: _SNIPPET_CHARS - 1] + "…"
        citations.append(
            Citation(
                n=n,
                document_id=hit.document_id,
                source=hit.source,
                title=hit.title,
                section=hit.section,
                chunk_id=hit.chunk_id,
                score=round(hit.score, 6),
                snippet=snippet,
            )
        )
        passages.append(Passage(n=n, hit=hit))
    return citations, passages


def generation_request(
    question: Question,
    prompt: Prompt,
    citations: list[Citation],
    passages: list[Passage],
    config: LoadedConfig,
    rare_terms: RareTerms | None = None,
) -> GenerationRequest:
    """The rendered prompt (system message, chat history, then the question with its context) and its limits."""
    context = format_context(citations, [p.hit.text for p in passages])
    rendered = prompt.render(question=question.text, context=context)
    history = [{"role": t.role, "content": t.content} for t in question.history if t.role != "system"]
    generation = config.config.generation
    return GenerationRequest(
        # What was searched for: a short follow-up ("and for the secondary one?") means nothing without the
        # turn before it, to the extractive generator's sentence scoring as much as to retrieval.
        question=retrieval_text(question),
        messages=[rendered[0], *history, *rendered[1:]],
        passages=passages,
        model=generation.model,
        max_tokens=generation.max_tokens,
        temperature=generation.temperature,
        rare_terms=rare_terms,
    )


def generation_attributes(answer: Answer) -> dict[str, AttributeValue]:
    """What the generation span records of an answer: model, tokens, citations (GenAI semantic conventions)."""
    usage = answer.usage
    attributes: dict[str, AttributeValue] = {
        "gen_ai.response.model": answer.versions.model,
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
        "gen_ai.response.finish_reasons": (answer.finish_reason,),
        "ragops.citations": len(answer.citations),
    }
    if answer.timings.ttft_ms is not None:
        attributes["ragops.ttft_ms"] = answer.timings.ttft_ms
    return attributes


def final_answer(events: Iterable[AnswerDelta | AnswerDone]) -> Answer:
    """Run an answer's event stream to its end and return the complete answer it closes with."""
    answer = None
    for event in events:
        if isinstance(event, AnswerDone):
            answer = event.answer
    if answer is None:
        raise RuntimeError("generation ended without an answer")
    return answer


class RagPipeline:
    """Answers questions from the active index with the configured generator."""

    def __init__(self, settings: Settings, catalog: Catalog, pool: ConnectionPool) -> None:
        self.settings = settings
        self.catalog = catalog
        self.pool = pool
        self._generators: dict[str, Generator] = {}
        self._learned: dict[tuple[str, str], tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()
        self.rollouts: RolloutRouter | None = None  # set by the API: routes requests of collections in a rollout

    def embedder(self, config: LoadedConfig) -> Embedder:
        """The embedder of a configuration's index settings (loaded once per process)."""
        return get_embedder(config.config.index.embedding)

    def pii_engine(self, config: LoadedConfig) -> PiiEngine | None:
        """The PII engine a configuration's policy needs (loaded once per process), or None when off."""
        policy = config.config.pii
        return get_pii_engine(policy.nlp_model) if policy.enabled else None

    def generator(self, config: LoadedConfig) -> Generator:
        """The generator a configuration asks for, built once."""
        generation = config.config.generation
        backend = generation.backend
        if backend == "auto":
            backend = "vllm" if self.settings.vllm_url else "extractive"
        key = f"{backend}:{config.name}"
        with self._lock:
            if key not in self._generators:
                self._generators[key] = self._build_generator(backend, config)
            return self._generators[key]

    def sentence_vector_counts(self) -> tuple[int, int]:
        """Extractive candidates scored with stored sentence vectors, and those embedded per answer, so far."""
        with self._lock:
            generators = [g for g in self._generators.values() if isinstance(g, ExtractiveGenerator)]
        return sum(g.vectors_stored for g in generators), sum(g.vectors_embedded for g in generators)

    def _build_generator(self, backend: str, config: LoadedConfig) -> Generator:
        if backend == "vllm":
            if not self.settings.vllm_url:
                raise BadRequest(f"configuration {config.name!r} needs vLLM but RAGOPS_VLLM_URL is not set")
            key = self.settings.vllm_api_key
            return VllmGenerator(
                self.settings.vllm_url,
                api_key=key.get_secret_value() if key else None,
                connect_timeout_s=self.settings.vllm_connect_timeout_s,
                read_timeout_s=self.settings.vllm_read_timeout_s,
            )
        return ExtractiveGenerator(self.embedder(config), config.config.generation.extractive)

    def validate(self, question: Question, config: LoadedConfig) -> None:
        """Refuse questions the configuration cannot serve (empty, too long, bad top_k, too much history)."""
        if not question.text.strip():
            raise BadRequest("question must not be empty", field="question")
        limit = config.config.generation.max_question_tokens
        if len(question.text) > limit * CHARS_PER_TOKEN_MAX:
            raise BadRequest(
                f"question has {len(question.text)} characters; the limit is {limit} tokens", field="question"
            )
        tokens = count_tokens(question.text)
        if tokens > limit:
            raise BadRequest(f"question has {tokens} tokens; the limit is {limit}", field="question")
        if question.top_k is not None and not 1 <= question.top_k <= MAX_TOP_K:
            raise BadRequest(f"top_k must be between 1 and {MAX_TOP_K}", field="top_k")
        # PostgreSQL text and jsonb cannot hold NUL: refuse it here rather than fail in the query.
        for name, value in (("question", question.text), ("collection", question.collection or "")):
            if "\x00" in value:
                raise BadRequest(f"{name} must not contain NUL characters", field=name)
        if any("\x00" in turn.content for turn in question.history):
            raise BadRequest("messages must not contain NUL characters", field="messages")
        check_history(question.history, config)

    def resolve(self, question: Question, grant: Grant) -> tuple[LoadedConfig, Question]:
        """The configuration that answers ``question`` and the question with its collection named, within ``grant``."""
        config = self.catalog.config(grant.config(question.config, self.catalog.default_config))
        config = config.with_retrieval_mode(question.mode)
        return config, dataclasses.replace(question, collection=grant.collection(question.collection))

    def prepare(self, question: Question, grant: Grant) -> Prepared:
        """Validate, embed, retrieve and render the prompt: everything before the first token.

        ``grant``: what the caller may use; the configuration and collection are checked against it
        before anything else, and retrieval reads only a granted collection.
        """
        started = time.perf_counter()
        config, question = self.resolve(question, grant)
        self.validate(question, config)
        prompt = self.catalog.prompt_for(config)
        if question.prompt is not None:
            if question.prompt not in self.catalog.prompts:
                raise NotFound(f"unknown prompt {question.prompt!r}", field="prompt")
            prompt = self.catalog.prompts[question.prompt]
        generator = self.generator(config)
        timings = Timings()
        pii = PiiSession(self.pii_engine(config), config.config.pii)
        if pii.active and config.config.pii.learn_allow_list:
            pii.also_allowed = self._learned_names(question.collection or "", config.config.pii)
        with stage("ragops.pii.question"):
            question = filtered_question(question, pii)
        query_text = retrieval_text(question)
        vector, embedding_tokens = self._embed_query(config, query_text, timings)
        sentences = generator.reads_sentence_vectors and config.config.index.sentence_vectors
        index, hits, rare = self._retrieve(
            question, grant, config, query_text, vector, timings, pii, sentences, generator.rare_term_share
        )
        with stage("ragops.pii.context"):
            hits = filtered_hits(hits, pii)
        if pii.found:  # retrieved text nobody had analyzed yet: once is enough
            with self.pool.connection() as conn:
                pii_spans.store(conn, pii.analysis, pii.found)
        timings.pii_ms = pii.elapsed_ms  # question and context: all the analysis so far
        citations, passages = fit_context(hits, config.config.generation.context_tokens)
        return Prepared(
            question=question,
            config=config,
            prompt=prompt,
            index=index,
            citations=citations,
            request=generation_request(question, prompt, citations, passages, config, rare),
            generator=generator,
            embedding_tokens=embedding_tokens,
            timings=timings,
            pii=pii,
            started=started,
            query_vector=vector,
            hit_scores=[hit.score for hit in hits],
            context=[p.hit.text for p in passages],
        )

    def _learned_names(self, collection: str, policy: PiiSettings) -> frozenset[str]:
        """The collection's own names learned at ingest (ingest.pii_spans.learn_terms), re-read every few seconds."""
        key = (collection, policy.analysis())
        now = time.monotonic()
        with self._lock:
            cached = self._learned.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        with self.pool.connection() as conn:
            terms = frozenset(t.term for t in pii_spans.load_terms(conn, collection, policy.analysis()))
        terms -= set(policy.never_allow)
        with self._lock:
            if len(self._learned) > _LEARNED_COLLECTIONS:  # any name a caller may use: bounded
                self._learned.clear()
            self._learned[key] = (now + _LEARNED_TTL_S, terms)
        return terms

    def _embed_query(self, config: LoadedConfig, text: str, timings: Timings) -> tuple[np.ndarray | None, int]:
        """The query vector and the tokens it cost; keyword mode needs none."""
        if config.config.retrieval.mode == "keyword":
            return None, 0
        embedding = config.config.index.embedding
        with stage("ragops.embed", {"gen_ai.operation.name": "embeddings", "gen_ai.request.model": embedding.model}):
            t0 = time.perf_counter()
            vector = self.embedder(config).embed_query(text)
            timings.embed_ms = (time.perf_counter() - t0) * 1000
            tokens = count_tokens(text)
            annotate({"gen_ai.usage.input_tokens": tokens})
        return vector, tokens

    def _retrieve(
        self,
        question: Question,
        grant: Grant,
        config: LoadedConfig,
        text: str,
        vector: np.ndarray | None,
        timings: Timings,
        pii: PiiSession,
        sentence_vectors: bool = False,
        rare_term_share: float = 0.0,
    ) -> tuple[IndexVersion, list[ChunkHit], RareTerms | None]:
        """The version that answers the collection (its active one unless the question pins one), its best
        hits, and the question's rare lexemes there (``rare_term_share`` > 0, else None).

        ``sentence_vectors``: the hits carry their chunks' stored sentence vectors (one more query, same connection).
        """
        with stage("ragops.search", {"ragops.retrieval.mode": config.config.retrieval.mode}):
            index, hits, rare = self._search(
                question, grant, config, text, vector, timings, pii, sentence_vectors, rare_term_share
            )
            annotate({"ragops.collection": question.collection, "ragops.index.version": index.name,
                      "ragops.retrieval.hits": len(hits),
                      "ragops.retrieval.top_score": hits[0].score if hits else None})  # fmt: skip
        return index, hits, rare

    def _search(
        self,
        question: Question,
        grant: Grant,
        config: LoadedConfig,
        text: str,
        vector: np.ndarray | None,
        timings: Timings,
        pii: PiiSession,
        sentence_vectors: bool = False,
        rare_term_share: float = 0.0,
    ) -> tuple[IndexVersion, list[ChunkHit], RareTerms | None]:
        t0 = time.perf_counter()
        rare: RareTerms | None = None
        settings = config.config.retrieval
        # Collections are namespaces: an eval run's copy of the samples must not answer users.
        collection = grant.collection(question.collection)
        query = RetrievalQuery(text, question.top_k or settings.top_k, collection, question.filters)
        with self.pool.connection() as conn:
            index = (
                get_index_version(conn, question.index_version)
                if question.index_version
                else active_version(conn, collection)
            )
            if vector is not None:
                check_embedding_model(index, config)
            # Read once for both: the extractive generator's rare words, and BM25 in keyword and hybrid modes.
            stats = (
                search_sql.term_statistics(conn, index, text, collection=collection) if rare_term_share > 0 else None
            )
            # No stored metadata can contain NUL, so such a filter matches nothing (and jsonb would refuse it).
            hits = (
                []
                if has_nul(question.filters)
                else search(conn, index, settings, query, vector, pool=self.pool, stats=stats)
            )
            if not hits:  # checked only here: a collection with hits exists
                require_collection(conn, collection, grant)
            if sentence_vectors:
                hits = search_sql.with_sentence_vectors(conn, index, hits)
            # Too few chunks to tell a rare word from one the documents happen to use once.
            if stats is not None and hits and stats.chunks >= RARITY_MIN_CHUNKS:
                tsconfig = index.settings.get("text_search_config", "english")
                rare = RareTerms(stats.rare(rare_term_share), tsconfig)
            if pii.applies("context"):  # their entity spans, found at ingest: no analysis per query
                pii.stored = pii_spans.load(conn, pii.analysis, retrieved_texts(hits))
        timings.retrieve_ms = (time.perf_counter() - t0) * 1000
        return index, hits, rare

    def stream(self, prepared: Prepared, *, incremental: bool = True) -> Iterator[AnswerDelta | AnswerDone]:
        """Generate, yielding filtered deltas, then the complete :class:`Answer`.

        ``incremental=False`` (nobody reads the deltas) filters the output once, at the end.
        """
        t0 = time.perf_counter()
        parts: list[str] = []
        output = prepared.pii.stream(incremental=incremental)
        span = start_stage("ragops.generate", {"gen_ai.operation.name": "chat",
                                               "gen_ai.request.model": prepared.request.model})  # fmt: skip
        try:
            for event in prepared.generator.stream(prepared.request):
                prepared.generation_started = True
                if isinstance(event, Delta):
                    prepared.generated.append(event.text)
                    text = output.feed(event.text)
                elif isinstance(event, Finished):
                    text = self._flush(output, prepared, span)
                else:
                    continue
                if text:
                    if prepared.timings.ttft_ms is None:
                        prepared.timings.ttft_ms = (time.perf_counter() - prepared.started) * 1000
                        if span is not None:
                            span.add_event("gen_ai.first_token", {"ragops.ttft_ms": prepared.timings.ttft_ms})
                    parts.append(text)
                    yield AnswerDelta(text)
                if isinstance(event, Finished):
                    answer = self._answer(prepared, "".join(parts), event.usage, event.model, event.finish_reason, t0)
                    if span is not None:
                        span.set_attributes(generation_attributes(answer))
                    yield AnswerDone(answer)
        except BaseException as exc:
            if span is not None:
                failed(span, exc)
            raise
        finally:
            if span is not None:
                span.end()

    def _flush(self, output: StreamFilter, prepared: Prepared, parent: Span | None) -> str:
        """The output filter's last piece (for a whole answer, all of its work), in its own span."""
        if parent is None:
            return output.flush()
        with stage_under(parent, "ragops.pii.answer") as span:
            text = output.flush()
            span.set_attribute("ragops.pii.answer_ms", prepared.pii.elapsed_ms - prepared.timings.pii_ms)
        return text

    def answer(self, question: Question, grant: Grant) -> Answer:
        """Prepare and generate a whole answer."""
        return final_answer(self.stream(self.prepare(question, grant), incremental=False))

    def _answer(
        self, prepared: Prepared, text: str, usage: Usage, model: str, finish_reason: str, generate_started: float
    ) -> Answer:
        prepared.timings.generate_ms = (time.perf_counter() - generate_started) * 1000
        prepared.timings.pii_answer_ms = prepared.pii.elapsed_ms - prepared.timings.pii_ms
        prepared.timings.total_ms = (time.perf_counter() - prepared.started) * 1000
        return Answer(
            text=text,
            citations=prepared.citations,
            usage=AnswerUsage(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                embedding_tokens=prepared.embedding_tokens,
                cached_tokens=usage.cached_tokens,
            ),
            versions=prepared.versions(model),
            timings=prepared.timings,
            finish_reason=finish_reason,
            pii=prepared.pii.report(),
        )
