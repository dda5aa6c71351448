-- API keys, budgets, rate windows and the request ledger.

CREATE TABLE api_keys (
    id              bigserial PRIMARY KEY,
    name            text NOT NULL,
    prefix          text NOT NULL UNIQUE,       -- public part of the key, for lookup and display
    salt            bytea NOT NULL,
    secret_hash     bytea NOT NULL,             -- sha256(salt || secret); the key itself is never stored
    scopes          text[] NOT NULL,
    budget_usd_day   numeric(14, 6) CHECK (budget_usd_day >= 0),
    budget_usd_month numeric(14, 6) CHECK (budget_usd_month >= 0),
    rpm             integer CHECK (rpm > 0),
    tpm             integer CHECK (tpm > 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);

-- Spend per key and budget period. A request first reserves its worst-case cost with a
-- conditional UPDATE (spent + reserved + cost <= budget), then settles the actual cost:
-- concurrent requests can never spend past the budget together.
CREATE TABLE key_spend (
    key_id        bigint NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    period        text NOT NULL CHECK (period IN ('day', 'month')),
    period_start  date NOT NULL,
    reserved_usd  numeric(18, 9) NOT NULL DEFAULT 0,
    spent_usd     numeric(18, 9) NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, period, period_start)
);

-- Fixed one-minute windows for requests-per-minute and tokens-per-minute limits.
CREATE TABLE rate_windows (
    key_id        bigint NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    window_start  timestamptz NOT NULL,
    requests      integer NOT NULL DEFAULT 0,
    tokens        integer NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, window_start)
);

-- One row per request, successful or not. No question or answer text: only counts.
CREATE TABLE ledger (
    id               bigserial PRIMARY KEY,
    request_id       text NOT NULL UNIQUE,
    key_id           bigint REFERENCES api_keys(id) ON DELETE SET NULL,
    key_name         text,
    route            text NOT NULL,
    status           integer NOT NULL,
    error_kind       text,
    config_version   text,
    prompt_version   text,
    index_version    text,
    model            text,
    prompt_tokens    integer NOT NULL DEFAULT 0,
    cached_tokens    integer NOT NULL DEFAULT 0,
    completion_tokens integer NOT NULL DEFAULT 0,
    embedding_tokens integer NOT NULL DEFAULT 0,
    cost_usd         numeric(18, 9) NOT NULL DEFAULT 0,
    latency_ms       jsonb NOT NULL DEFAULT '{}',
    pii_counts       jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_created_at ON ledger (created_at);
CREATE INDEX ledger_key_created_at ON ledger (key_id, created_at);
