-- Documents, index versions, ingest runs.
--
-- Chunk layout: one table per index version (chunks_v<id>, created by ingest/store.py from
-- the template in sql/chunks_table.sql.tmpl), not one shared table. Versions may differ in
-- embedding dimension, and a vector(dim) column plus its own HNSW index per table keeps every
-- version's index exact-typed, small and dropped in O(1) with DROP TABLE (no bloat, no
-- long DELETE) when a version is retired. Partial HNSW indexes over a shared untyped vector
-- column would need an expression cast in every query and a VACUUM after each drop.

CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE documents (
    id            bigserial PRIMARY KEY,
    collection    text NOT NULL,
    source        text NOT NULL,              -- path relative to the ingest root, or file#id
    title         text NOT NULL DEFAULT '',
    content_hash  text NOT NULL,              -- sha256 of the extracted text and title
    metadata      jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (collection, source)
);

CREATE TABLE index_versions (
    id              serial PRIMARY KEY,
    settings_hash   text NOT NULL UNIQUE,
    settings        jsonb NOT NULL,
    embedding_model text NOT NULL,
    dimension       integer NOT NULL CHECK (dimension > 0),
    status          text NOT NULL DEFAULT 'building'
                    CHECK (status IN ('building', 'ready', 'failed')),
    is_active       boolean NOT NULL DEFAULT false,
    hnsw_built      boolean NOT NULL DEFAULT false,
    created_by      text NOT NULL DEFAULT '',  -- configuration version that first built it
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    activated_at    timestamptz
);
-- At most one active version: activation flips two rows in one transaction.
CREATE UNIQUE INDEX index_versions_one_active ON index_versions ((true)) WHERE is_active;

-- Which content of which document a version holds: an unchanged document is skipped by
-- comparing hashes here, without reading its chunks.
CREATE TABLE index_documents (
    index_version_id integer NOT NULL REFERENCES index_versions(id) ON DELETE CASCADE,
    document_id      bigint  NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    content_hash     text    NOT NULL,
    chunk_count      integer NOT NULL,
    indexed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (index_version_id, document_id)
);
CREATE INDEX index_documents_document ON index_documents (document_id);

CREATE TABLE ingest_runs (
    id               bigserial PRIMARY KEY,
    index_version_id integer REFERENCES index_versions(id) ON DELETE SET NULL,
    collection       text NOT NULL,
    source           text NOT NULL,
    config_version   text NOT NULL,
    status           text NOT NULL DEFAULT 'running'
                     CHECK (status IN ('running', 'succeeded', 'failed')),
    counts           jsonb NOT NULL DEFAULT '{}',
    skipped          jsonb NOT NULL DEFAULT '[]',   -- [{source, reason}]
    timings          jsonb NOT NULL DEFAULT '{}',
    error            text,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
