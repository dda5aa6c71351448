-- Questions refused because they carried personal data of a blocked type, per collection and
-- configuration: the "PII blocks" drift signal. A blocked question is never embedded or answered, so it
-- has no drift observation; this row (no text, no request id) is all that is kept of it.
CREATE TABLE drift_blocks (
    id          bigserial PRIMARY KEY,
    collection  text NOT NULL,
    config      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX drift_blocks_window ON drift_blocks (collection, config, created_at);
