-- Drift monitoring: what live answers looked like (vectors and scores, never text), the pinned
-- references they are compared with, and the judged windows as time series.

-- One row per answer of a configuration whose drift section is enabled. The question's embedding is
-- the one retrieval computed; request_id joins the ledger for answer-side measures (tokens, cost, PII).
-- Deleted after drift.retention_days by the worker.
CREATE TABLE drift_observations (
    id           bigserial PRIMARY KEY,
    request_id   text NOT NULL UNIQUE,
    collection   text NOT NULL,
    config       text NOT NULL,               -- configuration name (its versions share one series)
    embedding    vector,                      -- NULL in keyword mode (no question vector)
    top_score    double precision,            -- NULL when nothing was retrieved
    score_margin double precision,            -- top-1 minus top-2, NULL with fewer than two hits
    hits         integer NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX drift_observations_window ON drift_observations (collection, config, created_at);
CREATE INDEX drift_observations_created_at ON drift_observations (created_at);

-- A reference: an eval set's questions or a pinned window of live traffic. The newest of a
-- (collection, config) is the one windows are judged against; older ones stay for the record.
CREATE TABLE drift_references (
    id           bigserial PRIMARY KEY,
    collection   text NOT NULL,
    config       text NOT NULL,
    source       text NOT NULL CHECK (source IN ('window', 'questions')),
    window_from  timestamptz,                 -- the pinned window (source 'window')
    window_to    timestamptz,
    note         text NOT NULL DEFAULT '',    -- e.g. the questions file's name and hash; never question text
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX drift_references_latest ON drift_references (collection, config, id DESC);

CREATE TABLE drift_reference_vectors (
    reference_id bigint NOT NULL REFERENCES drift_references(id) ON DELETE CASCADE,
    embedding    vector NOT NULL
);
CREATE INDEX drift_reference_vectors_ref ON drift_reference_vectors (reference_id);

-- A scalar signal's reference sample (values only).
CREATE TABLE drift_reference_values (
    reference_id bigint NOT NULL REFERENCES drift_references(id) ON DELETE CASCADE,
    signal       text NOT NULL,
    "values"     double precision[] NOT NULL,
    PRIMARY KEY (reference_id, signal)
);

-- Judged windows: one row per (collection, config, signal, window_start), so a worker that restarts
-- never counts a window twice.
CREATE TABLE drift_windows (
    collection   text NOT NULL,
    config       text NOT NULL,
    signal       text NOT NULL,
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL,
    reference_id bigint REFERENCES drift_references(id) ON DELETE SET NULL,
    state        text NOT NULL CHECK (state IN ('ok', 'drift', 'not_enough_data', 'no_reference')),
    alarm        boolean NOT NULL DEFAULT false,
    n            integer NOT NULL,
    reference_n  integer NOT NULL DEFAULT 0,
    statistic    double precision,
    p_value      double precision,
    psi          double precision,
    reference_value double precision,
    window_value double precision,
    computed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection, config, signal, window_start)
);
CREATE INDEX drift_windows_latest ON drift_windows (collection, config, signal, window_start DESC);
