-- Staged rollouts: a candidate (configuration, prompt, index version) against the live versions of
-- one collection, moving from the offline gate through shadow and canary to promoted or rolled back.

-- An eval gate run recorded by `ragops rollout gate|start`: a rollout starts only from a passed one.
CREATE TABLE rollout_gates (
    id              bigserial PRIMARY KEY,
    candidate       jsonb NOT NULL,               -- {config, prompt, index_version}: what was evaluated
    passed          boolean NOT NULL,
    verdict         text NOT NULL,
    report_sha256   text NOT NULL,                -- sha256 of the candidate's eval report
    versions        jsonb NOT NULL DEFAULT '{}',  -- the report's versions (config, prompt, index, model)
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rollouts (
    id              bigserial PRIMARY KEY,
    collection      text NOT NULL,
    status          text NOT NULL CHECK (status IN ('shadow', 'canary', 'promoted', 'rolled_back', 'aborted')),
    live            jsonb NOT NULL,               -- {config, prompt, index_version}: what answered before
    candidate       jsonb NOT NULL,               -- {config, prompt, index_version}: any subset changed
    gate_id         bigint REFERENCES rollout_gates(id) ON DELETE SET NULL,
    guards          jsonb NOT NULL,               -- the configuration's rollout section when it started
    reason          text,                         -- why it ended (a guard's breach, an operator's abort)
    decision        jsonb,                        -- the sequential test's state when it ended a stage
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    stage_started_at timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- At most one active rollout per collection.
CREATE UNIQUE INDEX rollouts_one_active_per_collection ON rollouts (collection) WHERE status IN ('shadow', 'canary');

-- Live questions waiting to be answered again on the other side, in the worker. Only PII-filtered
-- text, deleted as soon as it is answered (or when its rollout ends).
CREATE TABLE rollout_queue (
    id              bigserial PRIMARY KEY,
    rollout_id      bigint NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    stage           text NOT NULL CHECK (stage IN ('shadow', 'canary')),
    request_id      text NOT NULL,
    served_side     text NOT NULL CHECK (served_side IN ('live', 'candidate')),
    question        text NOT NULL,                -- PII-filtered
    served          jsonb NOT NULL,               -- the measures of the answer the user got
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rollout_queue_rollout ON rollout_queue (rollout_id, id);

-- One paired comparison: the measures of both sides' answers to one question (no text).
CREATE TABLE rollout_samples (
    id              bigserial PRIMARY KEY,
    rollout_id      bigint NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    stage           text NOT NULL CHECK (stage IN ('shadow', 'canary')),
    request_id      text NOT NULL,
    live            jsonb NOT NULL,
    candidate       jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rollout_samples_rollout ON rollout_samples (rollout_id, stage, id);

-- Which rollout and side answered a request: 'live' or 'candidate' (canary), 'shadow' (the worker's
-- re-answer, billed to the operator: key_id stays NULL).
ALTER TABLE ledger ADD COLUMN rollout_id bigint;
ALTER TABLE ledger ADD COLUMN rollout_side text CHECK (rollout_side IN ('live', 'candidate', 'shadow'));
CREATE INDEX ledger_rollout ON ledger (rollout_id) WHERE rollout_id IS NOT NULL;
