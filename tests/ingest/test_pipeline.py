"""The ingest pipeline against the real embedded PostgreSQL and the real embedding model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg import sql

from app import search_sql
from core.access import DEFAULT_COLLECTION
from core.config import LoadedConfig, RagConfig
from core.embedding import Embedder
from core.errors import IndexVersionError, IngestBusy, SourceError
from ingest import documents, versions
from ingest.chunking import Chunker
from ingest.loaders import load_file
from ingest.pipeline import IngestPipeline, IngestReport
from ingest.sentences import passage_candidates
from tests.utils.corpus import DOCS, corpus_document_count, write_corpus


def make_config(chunk_size: int = 200, overlap: int = 30, name: str = "test") -> LoadedConfig:
    """A configuration object as if loaded from configs/<name>.yaml."""
    config = RagConfig.model_validate({"index": {"chunking": {"chunk_size": chunk_size, "chunk_overlap": overlap}}})
    return LoadedConfig(name=name, path=Path(f"{name}.yaml"), sha256="0" * 64, git_commit=None, config=config)


def ingest(conn: psycopg.Connection, embedder: Embedder, root: Path, **kwargs: object) -> IngestReport:
    config = kwargs.pop("config", None) or make_config()
    pipeline = IngestPipeline(conn, config, embedder, batch_documents=3)  # type: ignore[arg-type]
    return pipeline.run(root, **kwargs)  # type: ignore[arg-type]


def chunk_rows(conn: psycopg.Connection, version: versions.IndexVersion) -> dict[str, list[tuple[int, str]]]:
    """Chunk ids and hashes per document source."""
    rows = conn.execute(
        sql.SQL(
            "SELECT d.source, c.id, c.content_hash FROM {} c JOIN documents d ON d.id = c.document_id ORDER BY c.id"
        ).format(version.table)
    ).fetchall()
    result: dict[str, list[tuple[int, str]]] = {}
    for source, chunk_id, chash in rows:
        result.setdefault(source, []).append((chunk_id, chash))
    return result


def test_first_ingest_stores_every_document_and_activates(
    conn: psycopg.Connection, embedder: Embedder, tmp_path: Path
) -> None:
    report = ingest(conn, embedder, write_corpus(tmp_path))
    assert report.added == corpus_document_count()
    assert report.skipped == []
    assert report.texts_embedded == report.chunks_written > 0
    assert report.activated and report.index_version.is_active and report.index_version.status == "ready"
    chunks = chunk_rows(conn, report.index_version)
    assert set(chunks) == {*DOCS, "kb.jsonl#kb-1", "kb.jsonl#kb-2"}
    run = conn.execute("SELECT status, counts->>'added' FROM ingest_runs WHERE id = %s", (report.run_id,)).fetchone()
    assert run == ("succeeded", str(corpus_document_count()))


def test_reingest_of_unchanged_documents_embeds_nothing(
    conn: psycopg.Connection, embedder: Embedder, tmp_path: Path
) -> None:
    root = write_corpus(tmp_path)
    first = ingest(conn, embedder, root)
    before = chunk_rows(conn, first.index_version)
    calls = embedder.calls
    again = ingest(conn, embedder, root)
    assert again.unchanged == corpus_document_count()
    assert again.added == again.updated == again.chunks_written == 0
    assert again.texts_embedded == 0 and embedder.calls == calls
    assert chunk_rows(conn, first.index_version) == before


def test_editing_one_file_replaces_only_its_chunks(
    conn: psycopg.Connection, embedder: Embedder, tmp_path: Path
) -> None:
    root = write_corpus(tmp_path)
    first = ingest(conn, embedder, root)
    before = chunk_rows(conn, first.index_version)
    (root / "notes/coffee.txt").write_text("The espresso machine is descaled every Monday.\n")
    report = ingest(conn, embedder, root)
    assert (report.updated, report.added, report.unchanged) == (1, 0, corpus_document_count() - 1)
    after = chunk_rows(conn, first.index_version)
    assert report.texts_embedded == len(after["notes/coffee.txt"]) == 1
    for source in before:
        if source != "notes/coffee.txt":
            assert after[source] == before[source], source
    assert after["notes/coffee.txt"] != before["notes/coffee.txt"]
    hits = search_sql.search_keyword(conn, first.index_version, "descaled Monday", 3, collection=DEFAULT_COLLECTION)
    assert hits[0].source == "notes/coffee.txt" and "Monday" in hits[0].text


def test_changed_document_reuses_vectors_of_unchanged_chunks(
    conn: psycopg.Connection, embedder: Embedder, tmp_path: Path
) -> None:
    paragraphs = [f"Paragraph {i} says the quota for team {i} is {i * 7} tickets per week." for i in range(40)]
    root = write_corpus(tmp_path, {"long.md": "# Quotas\n\n" + "\n\n".join(paragraphs)}, with_jsonl=False)
    config = make_config(chunk_size=40, overlap=0)
    first = ingest(conn, embedder, root, config=config)
    assert first.chunks_written > 5
    paragraphs[-1] = "Paragraph 39 now says something entirely different about parking."
    (root / "long.md").write_text("# Quotas\n\n" + "\n\n".join(paragraphs))
    second = ingest(conn, embedder, root, config=config)
    assert second.updated == 1
    assert 1 <= second.texts_embedded <= 2
    assert second.chunks_reused == second.chunks_written - second.texts_embedded


# 200 cl100k tokens of twelve-digit numbers are about 300 word pieces: more than MiniLM reads.
LEDGER = "# Ledger\n\n" + "\n\n".join(
    f"Batch {i}: " + " ".join(str(100_000_000_000 + 7_919 * (i * 40 + j) ** 2) for j in range(40)) for i in range(3)
)


def test_the_summary_counts_the_chunks_the_embedder_cut(
    conn: psycopg.Connection, embedder: Embedder, tmp_path: Path
) -> None:
    """Ingest fits every chunk to the model (0 cut); a chunker that did not would be caught by the count."""
    fitted_root = write_corpus(tmp_path / "fitted", {"ledger.md": LEDGER}, with_jsonl=False)
    report = ingest(conn, embedder, fitted_root)
    assert report.chunks_written > 0 and report.chunks_truncated == 0
    assert report.counts["chunks_truncated"] == 0

    config = make_config()
    unfitted = IngestPipeline(conn, config, embedder)
    unfitted.chunker = Chunker(config.config.index.chunking)  # the rule before: cl100k tokens only
    root = write_corpus(tmp_path / "unfitted", {"ledger-copy.md": LEDGER}, with_jsonl=False)
    chunks = [c for r in load_file(root / "ledger-copy.md", "ledger-copy.md") if r.document
              for c in unfitted.chunker.split(r.document)]  # fmt: skip
    over = sum(1 for n in embedder.count_tokens([c.embed_text for c in chunks]) if n > 256)
    assert over > 0
    cut = unfitted.run(root)
    assert cut.chunks_truncated == over and cut.texts_embedded == len(chunks)
    stored = conn.execute("SELECT counts->>'chunks_truncated' FROM ingest_runs WHERE id = %s", (cut.run_id,))
    assert stored.fetchone() == (str(over),)


def test_sync_removes_documents_whose_source_disappeared(
    conn: psycopg.Connection, embedder: Embedder, tmp_path: Path
) -> None:
    root = write_corpus(tmp_path)
    first = ingest(conn, embedder, root)
    (root / "guide/oncall.md").unlink()
    without_sync = ingest(conn, embedder, root)
    assert without_sync.deleted == 0
    report = ingest(conn, embedder, root, sync=True)
    assert report.deleted == 1
    assert "guide/oncall.md" not in chunk_rows(conn, first.index_version)
    assert conn.execute("SELECT count(*) FROM documents WHERE source = 'guide/oncall.md'").fetchone() == (0,)
    hits = search_sql.search_keyword(
        conn, first.index_version, "on-call rotation Tuesday", 5, collection=DEFAULT_COLLECTION
    )
    assert all(h.source != "guide/oncall.md" for h in hits)


def test_sync_keeps_documents_of_a_file_that_became_unreadable(
    conn: psycopg.Connection, embedder: Embedder, tmp_path: Path
) -> None:
    root = write_corpus(tmp_path)
    ingest(conn, embedder, root)
    (root / "guide/pto.md").write_bytes(b"\x00\x01binary now")
    report = ingest(conn, embedder, root, sync=True)
    assert report.deleted == 0
    assert [s["source"] for s in report.skipped] == ["guide/pto.md"]
    assert conn.execute("SELECT count(*) FROM documents WHERE source = 'guide/pto.md'").fetchone() == (1,)


def test_new_chunk_size_builds_a_new_version_beside_the_active_one(
    conn: psycopg.Connection, embedder: Embedder, tmp_path: Path
) -> None:
    root = write_corpus(tmp_path)
    first = ingest(conn, embedder, root)
    second = ingest(conn, embedder, root, config=make_config(chunk_size=32, overlap=0))
    assert second.index_version.id != first.index_version.id
    assert second.added == corpus_document_count()  # the new version embeds everything once
    assert not second.activated and not second.index_version.is_active
    active = versions.active_index_version(conn)
    assert active is not None and active.id == first.index_version.id
    assert chunk_rows(conn, first.index_version)  # untouched
    versions.activate_index_version(conn, second.index_version.id)
    active = versions.active_index_version(conn)
    assert active is not None and active.id == second.index_version.id
    with pytest.raises(IndexVersionError, match="is active"):
        versions.drop_index_version(conn, second.index_version.id)
    versions.drop_index_version(conn, first.index_version.id)
    assert [v.id for v, _, _ in versions.list_index_versions(conn)] == [second.index_version.id]
    assert conn.execute("SELECT to_regclass(%s)", (f"chunks_v{first.index_version.id}",)).fetchone() == (None,)


def test_bad_files_are_reported_and_the_run_goes_on(
    conn: psycopg.Connection, embedder: Embedder, tmp_path: Path
) -> None:
    root = write_corpus(tmp_path)
    (root / "empty.md").write_bytes(b"")
    (root / "blob.txt").write_bytes(b"\x00\x01\x02\x03" * 100)
    (root / "latin1.txt").write_bytes("na\xefve".encode("latin-1"))
    (root / "broken.pdf").write_bytes(b"%PDF-1.7\nthis is not really a pdf")
    (root / "sheet.xlsx").write_bytes(b"PK\x03\x04")
    (root / "more.jsonl").write_text('{"_id": "ok", "text": "Fine record about forklifts."}\n{broken\n')
    report = ingest(conn, embedder, root)
    reasons = {s["source"]: s["reason"] for s in report.skipped}
    assert set(reasons) == {"empty.md", "blob.txt", "latin1.txt", "broken.pdf", "sheet.xlsx", "more.jsonl:2"}
    assert report.added == corpus_document_count() + 1
    stored = conn.execute("SELECT skipped FROM ingest_runs WHERE id = %s", (report.run_id,)).fetchone()
    assert stored is not None and len(stored[0]) == 6


def test_missing_source_is_a_clear_error(conn: psycopg.Connection, embedder: Embedder, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        ingest(conn, embedder, tmp_path / "nope")


def test_a_crash_mid_batch_leaves_no_partial_document(
    conn: psycopg.Connection, embedder: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_corpus(tmp_path)
    first = ingest(conn, embedder, root)
    version = first.index_version
    for rel in DOCS:
        (root / rel).write_text((root / rel).read_text() + "\n\nAppendix: revised on 2026-11-01.\n")
    original = documents.copy_chunks

    def copy_then_crash(*args: object, **kwargs: object) -> None:
        original(*args, **kwargs)  # type: ignore[arg-type]
        raise RuntimeError("simulated crash after COPY, before commit")

    monkeypatch.setattr(documents, "copy_chunks", copy_then_crash)
    before = chunk_rows(conn, version)
    hashes_before = dict(conn.execute("SELECT source, content_hash FROM documents").fetchall())
    with pytest.raises(RuntimeError, match="simulated crash"):
        ingest(conn, embedder, root)
    assert chunk_rows(conn, version) == before
    assert dict(conn.execute("SELECT source, content_hash FROM documents").fetchall()) == hashes_before
    assert conn.execute("SELECT status FROM ingest_runs ORDER BY id DESC LIMIT 1").fetchone() == ("failed",)
    monkeypatch.setattr(documents, "copy_chunks", original)
    retry = ingest(conn, embedder, root)
    assert retry.updated == len(DOCS)
    after = chunk_rows(conn, version)
    assert all(len(after[rel]) == len({h for _, h in after[rel]}) for rel in DOCS)  # no duplicates


def test_a_second_writer_on_the_same_version_is_refused(
    database: object, conn: psycopg.Connection, embedder: Embedder, tmp_path: Path
) -> None:
    root = write_corpus(tmp_path)
    first = ingest(conn, embedder, root)
    with database.connect() as other:  # type: ignore[attr-defined]
        assert versions.try_lock_version(other, first.index_version.id)
        with pytest.raises(IngestBusy, match="another ingest"):
            ingest(conn, embedder, root)
        versions.unlock_version(other, first.index_version.id)


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("How many paid leave days do employees get each year?", "guide/pto.md"),
        ("When does the on-call rotation change?", "guide/oncall.md"),
        ("How long must passwords be?", "web/security.html"),
        ("How often are failed webhooks retried?", "kb.jsonl#kb-1"),
        ("Who cleans the coffee machine?", "notes/coffee.txt"),
    ],
)
def test_vector_and_keyword_search_find_the_right_document(
    conn: psycopg.Connection, embedder: Embedder, tmp_path: Path, question: str, expected: str
) -> None:
    version = ingest(conn, embedder, write_corpus(tmp_path)).index_version
    vector_hits = search_sql.search_vector(
        conn, version, embedder.embed_query(question), 3, collection=DEFAULT_COLLECTION
    )
    assert vector_hits[0].source == expected
    keyword_hits = search_sql.search_keyword(conn, version, question, 3, collection=DEFAULT_COLLECTION)
    assert expected in [h.source for h in keyword_hits]


def test_metadata_filters_restrict_results(conn: psycopg.Connection, embedder: Embedder, tmp_path: Path) -> None:
    version = ingest(conn, embedder, write_corpus(tmp_path)).index_version
    vector = embedder.embed_query("API requests per minute")
    hits = search_sql.search_vector(conn, version, vector, 5, metadata={"tier": "pro"}, collection=DEFAULT_COLLECTION)
    assert [h.source for h in hits] == ["kb.jsonl#kb-2"]
    assert (
        search_sql.search_keyword(conn, version, "webhooks", 5, metadata={"tier": "pro"}, collection=DEFAULT_COLLECTION)
        == []
    )


def sentence_vectors(
    conn: psycopg.Connection, version: versions.IndexVersion
) -> dict[str, tuple[bytes | None, str, str]]:
    """Each chunk's stored sentence vectors (raw bytes), text and section, by content hash."""
    rows = conn.execute(
        sql.SQL("SELECT content_hash, sentence_vectors, text, section FROM {}").format(version.table)
    ).fetchall()
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


QUOTAS = [f"Paragraph {i} says the quota for team {i} is {i * 7} tickets per week." for i in range(40)]


def test_each_chunk_stores_a_vector_per_quotable_sentence(
    conn: psycopg.Connection, embedder: Embedder, tmp_path: Path
) -> None:
    report = ingest(conn, embedder, write_corpus(tmp_path))
    stored = sentence_vectors(conn, report.index_version)
    assert len(stored) == report.chunks_written
    for data, text, section in stored.values():
        vectors = documents.unpack_sentence_vectors(data, embedder.dimension)
        assert vectors is not None and len(vectors) == len(passage_candidates(text, 1, section)), text
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_sentence_vectors_survive_an_incremental_reingest(
    conn: psycopg.Connection, embedder: Embedder, tmp_path: Path
) -> None:
    """Unchanged chunks of an edited document keep their sentence vectors; the new chunk gets its own."""
    root = write_corpus(tmp_path, {"long.md": "# Quotas\n\n" + "\n\n".join(QUOTAS)}, with_jsonl=False)
    config = make_config(chunk_size=40, overlap=0)
    first = ingest(conn, embedder, root, config=config)
    before = sentence_vectors(conn, first.index_version)
    edited = [*QUOTAS[:-1], "Paragraph 39 now says something entirely different about parking."]
    (root / "long.md").write_text("# Quotas\n\n" + "\n\n".join(edited))
    second = ingest(conn, embedder, root, config=config)
    assert second.updated == 1 and second.chunks_reused == second.chunks_written - second.texts_embedded > 5
    after = sentence_vectors(conn, first.index_version)
    kept = before.keys() & after.keys()
    assert len(kept) == second.chunks_reused
    assert all(after[h][0] == before[h][0] is not None for h in kept)
    new = [after[h] for h in after.keys() - before.keys()]
    assert new and all(documents.unpack_sentence_vectors(data, embedder.dimension) is not None for data, _, _ in new)


def test_a_full_rebuild_pools_the_same_sentence_vectors(
    conn: psycopg.Connection, embedder: Embedder, tmp_path: Path
) -> None:
    root = write_corpus(tmp_path)
    config = make_config()
    first = ingest(conn, embedder, root, config=config)
    rebuild = versions.ensure_index_version(conn, config.config.index, embedder.dimension, config.version, fresh=True)
    second = ingest(conn, embedder, root, config=config, version=rebuild)
    assert second.index_version.id != first.index_version.id and second.texts_embedded == second.chunks_written
    before, after = sentence_vectors(conn, first.index_version), sentence_vectors(conn, second.index_version)
    assert before.keys() == after.keys()
    for content_hash, (data, _, _) in before.items():
        old = documents.unpack_sentence_vectors(data, embedder.dimension)
        new = documents.unpack_sentence_vectors(after[content_hash][0], embedder.dimension)
        assert old is not None and new is not None and np.allclose(old, new, atol=1e-5)


def test_with_sentence_vectors_off_chunks_store_none_and_the_next_ingest_with_them_on_fills_them(
    conn: psycopg.Connection, embedder: Embedder, tmp_path: Path
) -> None:
    """Off: nothing stored. On: the next run embeds the documents lacking them once (unchanged or not), then none."""
    root = write_corpus(tmp_path)
    off = RagConfig.model_validate({"index": {"sentence_vectors": False}})
    off_config = LoadedConfig(name="off", path=Path("off.yaml"), sha256="1" * 64, git_commit=None, config=off)
    first = ingest(conn, embedder, root, config=off_config)
    assert all(data is None for data, _, _ in sentence_vectors(conn, first.index_version).values())
    second = ingest(conn, embedder, root)
    assert second.index_version.id == first.index_version.id  # the setting is not part of the index identity
    assert second.updated == corpus_document_count() and second.chunks_reused == 0
    assert second.texts_embedded == second.chunks_written == first.chunks_written
    assert all(data is not None for data, _, _ in sentence_vectors(conn, first.index_version).values())
    third = ingest(conn, embedder, root)
    assert third.unchanged == corpus_document_count() and third.texts_embedded == 0
