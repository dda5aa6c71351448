-- Background jobs (reindex builds) and index rebuilds beside the live version.
--
-- Workers claim the oldest queued job with FOR UPDATE SKIP LOCKED, so several workers never
-- run the same job; a running job writes its counts and a heartbeat at least every 2 s. A job
-- whose heartbeat went stale (its worker died) is queued again or failed, by whichever worker
-- notices first. Re-running a build is safe: documents already written carry their content
-- hash in index_documents and are skipped.

CREATE TABLE jobs (
    id               bigserial PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('reindex')),
    params           jsonb NOT NULL DEFAULT '{}',
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    docs_done        integer NOT NULL DEFAULT 0,
    docs_total       integer,
    chunks_done      integer NOT NULL DEFAULT 0,
    errors           jsonb NOT NULL DEFAULT '[]',  -- per document: [{source, reason}]
    error            text,                         -- why the job failed, or what recovery did
    result           jsonb,                        -- the ingest report's counts and timings
    index_version_id integer REFERENCES index_versions(id) ON DELETE SET NULL,
    created_version  boolean NOT NULL DEFAULT false,  -- a full build made its version: drop it if it never completes
    activated        boolean NOT NULL DEFAULT false,
    worker_id        text,
    attempts         integer NOT NULL DEFAULT 0,
    cancel_requested boolean NOT NULL DEFAULT false,
    run_after        timestamptz NOT NULL DEFAULT now(),  -- a job put back because its version was busy waits a bit
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    heartbeat_at     timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_queued ON jobs (id) WHERE status = 'queued';
CREATE INDEX jobs_running_heartbeat ON jobs (heartbeat_at) WHERE status = 'running';
-- One running build per index version (the per-version advisory lock also covers CLI ingests).
CREATE UNIQUE INDEX jobs_one_running_build_per_version ON jobs (index_version_id) WHERE status = 'running';

-- A full reindex builds a fresh version beside the live one even when the settings are the
-- same (a rebuild), so one settings hash may now name several versions; lookups prefer the
-- active one, then the newest.
ALTER TABLE index_versions DROP CONSTRAINT index_versions_settings_hash_key;
CREATE INDEX index_versions_settings_hash ON index_versions (settings_hash);
