-- Usage pre-aggregated per finished UTC day: what GET /v1/usage, `ragops usage` and the console's usage
-- page read instead of every ledger row of the period (app/usage.py). Today, and any day not rolled up
-- yet, is still read from the ledger itself.

-- One row per day x key x configuration x model x payer (a rollout's shadow side, or the keys).
-- Names are stored as the usage groups show them ('(none)' for a missing one).
CREATE TABLE usage_days (
    day               date NOT NULL,
    key_id            bigint,                  -- for a key's own view; no foreign key: history outlives keys
    key_name          text NOT NULL,
    config_version    text NOT NULL,
    model             text NOT NULL,
    shadow            boolean NOT NULL,
    requests          bigint NOT NULL,
    errors            bigint NOT NULL,
    prompt_tokens     bigint NOT NULL,
    cached_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    embedding_tokens  bigint NOT NULL,
    cost_usd          numeric NOT NULL,
    -- Every request's total latency (ms) in ascending order, as big-endian float8s: exact percentiles
    -- for any grouping of these rows, at 8 bytes a request.
    latencies         bytea NOT NULL,
    UNIQUE NULLS NOT DISTINCT (day, key_id, key_name, config_version, model, shadow)
);

-- The days rolled up, and the ledger's largest id when each was.
CREATE TABLE usage_rolled_days (
    day            date PRIMARY KEY,
    ledger_rows    bigint NOT NULL,
    max_ledger_id  bigint NOT NULL,
    rolled_at      timestamptz NOT NULL DEFAULT now()
);

-- Ledger rows with an id up to checked_id have been seen by the roll-up: a row above it whose day is
-- already rolled up arrived late (a request that spanned midnight) and makes that day roll up again.
CREATE TABLE usage_rollup_state (
    only_row    boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    checked_id  bigint NOT NULL
);
