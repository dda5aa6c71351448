-- Feedback on answers, an opt-in store of PII-filtered transcripts, and the collection of each request.

-- Feedback and quality figures are per collection: the ledger records which one a request read.
ALTER TABLE ledger ADD COLUMN collection text;
CREATE INDEX ledger_collection_created_at ON ledger (collection, created_at);

-- One rating per answer (rating again updates it). Joined to the ledger row for the config, prompt,
-- index and model versions that produced the answer. `text` is the caller's comment as the answer's
-- configuration filters PII (never the raw text); `sources` are document ids the caller says were right.
CREATE TABLE feedback (
    id          bigserial PRIMARY KEY,
    request_id  text NOT NULL UNIQUE REFERENCES ledger (request_id) ON DELETE CASCADE,
    collection  text NOT NULL,
    key_id      bigint REFERENCES api_keys (id) ON DELETE SET NULL,   -- the key that rated
    scale       text NOT NULL CHECK (scale IN ('thumbs', 'stars')),
    rating      smallint NOT NULL CHECK (
                    (scale = 'thumbs' AND rating IN (-1, 1)) OR (scale = 'stars' AND rating BETWEEN 1 AND 5)),
    negative    boolean GENERATED ALWAYS AS (rating = -1 OR (scale = 'stars' AND rating <= 2)) STORED,
    reason      text CHECK (reason IN ('wrong', 'incomplete', 'not_in_documents', 'outdated', 'other')),
    text        text,
    sources     bigint[] NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX feedback_collection_updated_at ON feedback (collection, updated_at);

-- Opt-in per configuration (feedback.transcripts.enabled): the question and answer as the PII filter
-- left them (pseudonyms never restored), the citations with filtered snippets, and the versions.
-- Written when the answer completes, before its ledger row (which is written after the response),
-- so no foreign key; a row lives until expires_at, when the worker's retention chore deletes it.
CREATE TABLE transcripts (
    request_id      text PRIMARY KEY,
    collection      text NOT NULL,
    config_version  text NOT NULL,
    prompt_version  text NOT NULL,
    index_version   text NOT NULL,
    model           text NOT NULL,
    question        text NOT NULL,
    answer          text NOT NULL,
    citations       jsonb NOT NULL DEFAULT '[]',   -- [{n, document_id, chunk_id, source, score, snippet}]
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL
);
CREATE INDEX transcripts_expires_at ON transcripts (expires_at);
CREATE INDEX transcripts_collection_created_at ON transcripts (collection, created_at);
