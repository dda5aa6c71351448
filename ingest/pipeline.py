"""The ingest pipeline: source -> documents -> changed chunks -> embeddings -> one index version.

Incremental by content hash: an unchanged document costs no embedding; a changed one re-embeds
only chunks whose text is new (vectors of unchanged chunks are reused); ``sync`` removes
documents whose source disappeared. Each batch of documents is written in one transaction.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg

from core.access import DEFAULT_COLLECTION
from core.config import LoadedConfig
from core.embedding import Embedder
from core.errors import IngestBusy
from core.pii import get_pii_engine
from ingest import documents, pii_spans, runs, versions
from ingest.chunking import Chunk, Chunker
from ingest.documents import ChunkVectors, PreparedDocument
from ingest.loaders import SUPPORTED_SUFFIXES, Document, load_file
from ingest.sentences import sentence_spans
from ingest.sources import SourceFile, scan_source
from ingest.versions import IndexVersion

log = logging.getLogger(__name__)


@dataclass
class IngestProgress:
    """Counters reported while a run goes on."""

    docs_total: int
    docs_done: int = 0
    chunks_done: int = 0
    started: float = field(default_factory=time.perf_counter)
    skipped: list[dict[str, str]] = field(default_factory=list)  # per-document errors so far: {source, reason}

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.started


@dataclass
class IngestReport:
    """What one run did; also stored as the run's row in ``ingest_runs``."""

    run_id: int
    index_version: IndexVersion
    collection: str = DEFAULT_COLLECTION
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    chunks_written: int = 0
    chunks_reused: int = 0
    texts_embedded: int = 0
    chunks_truncated: int = 0  # embedded texts the model cut at its input limit (the chunker fits them: 0)
    embed_seconds: float = 0.0
    load_seconds: float = 0.0
    write_seconds: float = 0.0
    total_seconds: float = 0.0
    activated: bool = False
    answering: bool = False  # whether the collection is now answered from this version
    pii_scrubbed: int = 0
    pii_analyzed: int = 0  # distinct texts whose entity spans were found and stored
    pii_learned: int = 0  # the collection's own names learned into its allow-list
    pii_seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        """The integer counters, for storage and display."""
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "skipped": len(self.skipped),
            "chunks_written": self.chunks_written,
            "chunks_reused": self.chunks_reused,
            "texts_embedded": self.texts_embedded,
            "chunks_truncated": self.chunks_truncated,
            "pii_scrubbed": self.pii_scrubbed,
            "pii_analyzed": self.pii_analyzed,
            "pii_learned": self.pii_learned,
        }

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per stage."""
        return {
            "embed": round(self.embed_seconds, 3),
            "load_and_chunk": round(self.load_seconds, 3),
            "write": round(self.write_seconds, 3),
            "pii_analysis": round(self.pii_seconds, 3),
            "total": round(self.total_seconds, 3),
        }


ProgressCallback = Callable[[IngestProgress], None]


class IngestPipeline:
    """Ingests sources into the index version that a configuration's index settings define."""

    def __init__(
        self,
        conn: psycopg.Connection,
        config: LoadedConfig,
        embedder: Embedder,
        *,
        collection: str = DEFAULT_COLLECTION,
        batch_documents: int = 256,
        batch_chunks: int = 512,
    ) -> None:
        self.conn = conn
        self.config = config
        self.embedder = embedder
        self.collection = collection
        self.batch_documents = batch_documents
        self.batch_chunks = batch_chunks
        self.chunker = Chunker(config.config.index.chunking, embedder)
        self.on_progress: ProgressCallback | None = None
        # Sentence vectors for the extractive generator, pooled from the pass that embeds each chunk.
        self.pools_sentences = config.config.index.sentence_vectors and embedder.pools_spans
        if config.config.index.sentence_vectors and not embedder.pools_spans:
            log.warning("embedder %s cannot pool sentence vectors: chunks are stored without them", embedder.model_name)

    def index_version(self) -> IndexVersion:
        """Get or create the version for this configuration's index settings."""
        return versions.ensure_index_version(
            self.conn, self.config.config.index, self.embedder.dimension, self.config.version
        )

    def run(
        self,
        root: Path,
        *,
        sync: bool = False,
        activate: bool | None = None,
        on_progress: ProgressCallback | None = None,
        version: IndexVersion | None = None,
    ) -> IngestReport:
        """Ingest every supported file under ``root``.

        ``activate``: True activates the version when the run succeeds, False never does, None
        activates it only when no version is active yet (the first build). ``version``: write
        into this version (e.g. a fresh rebuild) instead of the one the settings name.
        """
        files = scan_source(root)
        version = version or self.index_version()
        if not versions.try_lock_version(self.conn, version.id):
            raise IngestBusy(f"another ingest is writing to index version {version.name}; try again when it ends")
        self.on_progress = on_progress
        try:
            return self._run_locked(root, files, version, sync=sync, activate=activate, on_progress=on_progress)
        finally:
            self.on_progress = None
            versions.unlock_version(self.conn, version.id)

    def _run_locked(
        self,
        root: Path,
        files: list[SourceFile],
        version: IndexVersion,
        *,
        sync: bool,
        activate: bool | None,
        on_progress: ProgressCallback | None,
    ) -> IngestReport:
        started = time.perf_counter()
        run_id = runs.start_run(self.conn, version.id, self.collection, str(root), self.config.version)
        report = IngestReport(run_id=run_id, index_version=version, collection=self.collection)
        progress = IngestProgress(docs_total=sum(f.estimated_documents() for f in files), skipped=report.skipped)
        embedded_before = self.embedder.texts_embedded

        def finish_run(status: str, error: str | None) -> None:
            report.texts_embedded = self.embedder.texts_embedded - embedded_before
            report.total_seconds = time.perf_counter() - started
            runs.finish_run(self.conn, run_id, status=status, counts=report.counts, skipped=report.skipped,
                             timings=report.timings, error=error)  # fmt: skip

        try:
            known = documents.known_documents(self.conn, version.id, self.collection)
            if self.pools_sentences:
                known = self._lacking_sentence_vectors_as_changed(version, known)
            seen, files_with_skips = self._write_changed(files, version, known, report, progress, on_progress)
            if sync:
                report.deleted = self._delete_gone(known, seen, files_with_skips)
            version = self._finish_version(version, report, activate)
            report.index_version = version
            self._learn_pii_terms(version, report)
        except BaseException as exc:
            finish_run("failed", f"{type(exc).__name__}: {exc}"[:2000])
            raise
        finish_run("succeeded", None)
        if on_progress:
            on_progress(progress)
        return report

    def _write_changed(
        self,
        files: list[SourceFile],
        version: IndexVersion,
        known: dict[str, documents.KnownDocument],
        report: IngestReport,
        progress: IngestProgress,
        on_progress: ProgressCallback | None,
    ) -> tuple[set[str], set[str]]:
        """Write every new or changed document, batch by batch; returns the sources seen and the files with skips."""
        seen: set[str] = set()
        files_with_skips: set[str] = set()
        pending: list[tuple[Document, bool]] = []  # (document, is_update)
        pending_chunks = 0
        for document, is_update in self._changed_documents(files, known, report, seen, files_with_skips, progress):
            pending.append((document, is_update))
            pending_chunks += max(1, len(document.text) // 800)
            if len(pending) >= self.batch_documents or pending_chunks >= self.batch_chunks:
                self._write_batch(version, pending, known, report, progress)
                pending, pending_chunks = [], 0
            if on_progress:
                on_progress(progress)
        self._write_batch(version, pending, known, report, progress)
        return seen, files_with_skips

    def _lacking_sentence_vectors_as_changed(
        self, version: IndexVersion, known: dict[str, documents.KnownDocument]
    ) -> dict[str, documents.KnownDocument]:
        """``known`` with the documents whose chunks lack sentence vectors marked as changed, so this run pools them.

        Chunks written before sentence vectors (or with them off) are embedded once more, on the next
        ingest into their version: until then answers embed those chunks' sentences themselves.
        """
        lacking = documents.documents_without_sentence_vectors(self.conn, version, self.collection)
        return {
            source: dataclasses.replace(doc, indexed_hash="") if doc.id in lacking and doc.indexed_hash else doc
            for source, doc in known.items()
        }

    def _delete_gone(
        self, known: dict[str, documents.KnownDocument], seen: set[str], files_with_skips: set[str]
    ) -> int:
        """Delete the documents whose source is gone; a file with skipped entries keeps the documents it had."""
        gone = [
            doc.id
            for source, doc in known.items()
            if source not in seen and source.split("#", 1)[0] not in files_with_skips
        ]
        return documents.delete_documents(self.conn, gone)

    def _changed_documents(
        self,
        files: list[SourceFile],
        known: dict[str, documents.KnownDocument],
        report: IngestReport,
        seen: set[str],
        files_with_skips: set[str],
        progress: IngestProgress,
    ) -> Iterator[tuple[Document, bool]]:
        """Loaded documents that this version does not hold yet in their current form."""
        for file in files:
            if file.path.suffix.lower() not in SUPPORTED_SUFFIXES:
                report.skipped.append({"source": file.source, "reason": f"unsupported file type {file.path.suffix!r}"})
                files_with_skips.add(file.source)
                progress.docs_done += 1
                continue
            t0 = time.perf_counter()
            results = list(load_file(file.path, file.source))
            report.load_seconds += time.perf_counter() - t0
            for result in results:
                if result.document is None:
                    report.skipped.append({"source": result.source, "reason": result.skip_reason or "unknown"})
                    files_with_skips.add(file.source)
                    progress.docs_done += 1
                    continue
                document = result.document
                seen.add(document.source)
                existing = known.get(document.source)
                if existing is not None and existing.indexed_hash == document.content_hash:
                    report.unchanged += 1
                    progress.docs_done += 1
                    continue
                if self.config.config.index.scrub_pii:
                    document = self._scrub(document, report)
                yield document, existing is not None and existing.indexed_hash is not None

    def _scrub(self, document: Document, report: IngestReport) -> Document:
        """The document with the pii policy applied to its title, headings and text.

        Its content hash stays the source's, so an unchanged source is still recognized; the
        policy itself is part of the index version's identity.
        """
        policy = self.config.config.pii
        engine = get_pii_engine(policy.nlp_model)
        t0 = time.perf_counter()
        body = engine.scrub(document.text, policy)
        headings = {h: engine.scrub(h, policy).text for s in document.sections for h in s.path}
        report.pii_scrubbed += len(body.spans)
        report.load_seconds += time.perf_counter() - t0
        return dataclasses.replace(
            document,
            title=engine.scrub(document.title, policy).text,
            text=body.text,
            sections=[
                dataclasses.replace(s, start=body.moved(s.start), path=tuple(headings[h] for h in s.path))
                for s in document.sections
            ],
        )

    def _write_batch(
        self,
        version: IndexVersion,
        pending: list[tuple[Document, bool]],
        known: dict[str, documents.KnownDocument],
        report: IngestReport,
        progress: IngestProgress,
    ) -> None:
        """Chunk, embed what is new, and write the batch in one transaction."""
        if not pending:
            return
        t0 = time.perf_counter()
        chunked = [(doc, self.chunker.split(doc)) for doc, _ in pending]
        report.load_seconds += time.perf_counter() - t0
        updated_ids = [known[doc.source].id for doc, is_update in pending if is_update]
        reusable = documents.reusable_vectors(self.conn, version, updated_ids)
        if self.pools_sentences:  # a chunk stored without sentence vectors is embedded again to get them
            reusable = {h: v for h, v in reusable.items() if v.sentences is not None}
        chunks_before = progress.chunks_done
        vectors = self._embed_new(chunked, reusable, report, progress)
        prepared = []
        for doc, chunks in chunked:
            prepared.append(self._prepared(doc, chunks, vectors))
            report.chunks_written += len(chunks)
            report.chunks_reused += sum(1 for c in chunks if c.content_hash in reusable)
        t0 = time.perf_counter()
        documents.write_documents(self.conn, version, self.collection, prepared)
        report.write_seconds += time.perf_counter() - t0
        self._analyze_pii(chunked, report)
        updates = sum(1 for _, is_update in pending if is_update)
        report.updated += updates
        report.added += len(pending) - updates
        progress.docs_done += len(pending)
        progress.chunks_done = chunks_before + sum(len(chunks) for _, chunks in chunked)

    def _analyze_pii(self, chunked: list[tuple[Document, list[Chunk]]], report: IngestReport) -> None:
        """Store the entity spans of what queries will retrieve, so filtering it costs no analysis per query."""
        policy = self.config.config.pii
        if not (policy.enabled and policy.analyze_at_ingest and policy.apply_to.context != "off"):
            return
        t0 = time.perf_counter()
        texts = {text for doc, chunks in chunked for c in chunks for text in (c.text, c.section, c.title, doc.source)}
        report.pii_analyzed += pii_spans.analyze_missing(self.conn, get_pii_engine(policy.nlp_model), policy, texts)
        report.pii_seconds += time.perf_counter() - t0

    def _learn_pii_terms(self, version: IndexVersion, report: IngestReport) -> None:
        """Relearn the collection's own names (allowed through the PII filter) when its documents changed."""
        policy = self.config.config.pii
        changed = report.added + report.updated + report.deleted
        if not (changed and policy.enabled and policy.analyze_at_ingest and policy.learn_allow_list):
            return
        t0 = time.perf_counter()
        terms = pii_spans.learn_terms(self.conn, version, self.collection, policy)
        pii_spans.store_terms(self.conn, self.collection, policy.analysis(), terms)
        report.pii_learned = len(terms)
        report.pii_seconds += time.perf_counter() - t0

    def _embed_new(
        self,
        chunked: list[tuple[Document, list[Chunk]]],
        reusable: dict[str, ChunkVectors],
        report: IngestReport,
        progress: IngestProgress,
    ) -> dict[str, ChunkVectors]:
        """Vectors for every chunk of the batch, by content hash: stored ones reused, each new text embedded once.

        With sentence vectors on, each new chunk's sentence vectors come from the same forward pass.
        """
        to_embed: dict[str, Chunk] = {}
        for _, chunks in chunked:
            for chunk in chunks:
                if chunk.content_hash not in reusable:
                    to_embed.setdefault(chunk.content_hash, chunk)
        t0 = time.perf_counter()
        chunks_before = progress.chunks_done

        def embedded(done: int) -> None:
            progress.chunks_done = chunks_before + done
            if self.on_progress is not None:
                self.on_progress(progress)

        def truncated(count: int) -> None:
            report.chunks_truncated += count

        texts = [chunk.embed_text for chunk in to_embed.values()]
        sentences: list[np.ndarray | None] = [None] * len(texts)
        if self.pools_sentences:
            spans = [sentence_spans(c.text, c.section, len(c.embed_text) - len(c.text)) for c in to_embed.values()]
            fresh, pooled = self.embedder.embed_pooled(texts, spans, on_progress=embedded, on_truncated=truncated)
            sentences = list(pooled)
        else:
            fresh = self.embedder.embed_batch(texts, on_progress=embedded, on_truncated=truncated)
        report.embed_seconds += time.perf_counter() - t0
        keep = self.pools_sentences
        vectors = {h: ChunkVectors(v.embedding, v.sentences if keep else None) for h, v in reusable.items()}
        vectors.update(
            (h, ChunkVectors(vector, sentence_vectors))
            for h, vector, sentence_vectors in zip(to_embed.keys(), fresh, sentences, strict=True)
        )
        return vectors

    def _prepared(self, doc: Document, chunks: list[Chunk], vectors: dict[str, ChunkVectors]) -> PreparedDocument:
        """A document ready to write: its chunks and their vectors as one matrix, a row per chunk."""
        matrix = (
            np.stack([vectors[c.content_hash].embedding for c in chunks])
            if chunks
            else np.zeros((0, self.embedder.dimension), dtype=np.float32)
        )
        return PreparedDocument(
            source=doc.source,
            title=doc.title,
            content_hash=doc.content_hash,
            metadata=doc.metadata,
            chunks=chunks,
            vectors=matrix,
            sentence_vectors=[vectors[c.content_hash].sentences for c in chunks],
        )

    def _finish_version(self, version: IndexVersion, report: IngestReport, activate: bool | None) -> IndexVersion:
        """Index and mark ready after a complete build; activate when asked (or when none is active)."""
        if version.status != "ready" or not version.hnsw_built:
            version = versions.mark_version_ready(self.conn, version)
        before = versions.active_index_version(self.conn, self.collection)
        version, wanted = versions.activate_as_asked(self.conn, version, activate, self.collection)
        report.activated = wanted and (before is None or before.id != version.id)
        report.answering = wanted or (before is not None and before.id == version.id)
        return version
