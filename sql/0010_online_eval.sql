-- Tracing and online evaluation.
--
-- ledger.trace_id and ledger.span_id link a request's ledger row (and so any feedback on it) to its
-- OpenTelemetry trace and the request's root span (W3C hex ids); NULL when tracing is off.
--
-- A sampled share of answers is queued for the worker (online_eval_queue): one small row written
-- with the ledger row, after the response. The worker claims rows with FOR UPDATE SKIP LOCKED and,
-- in the same transaction, adds their measures to online_quality and deletes them: a restart rolls
-- an unfinished claim back into the queue, so nothing is lost or counted twice. The only text kept
-- is the PII-filtered answer (NULL when the configuration does not filter answers), and only until
-- it is evaluated.

ALTER TABLE ledger ADD COLUMN trace_id text;
ALTER TABLE ledger ADD COLUMN span_id text;
CREATE INDEX ledger_trace_id ON ledger (trace_id) WHERE trace_id IS NOT NULL;

CREATE TABLE online_eval_queue (
    id               bigserial PRIMARY KEY,
    request_id       text NOT NULL UNIQUE,
    collection       text NOT NULL,
    config_version   text NOT NULL,
    prompt_version   text NOT NULL,
    index_version    text NOT NULL,
    index_version_id integer,                       -- where the cited chunks' text and vectors are
    answered_on      date NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')::date,
    answer           text,                          -- PII-filtered; NULL: the configuration does not filter answers
    chunk_ids        bigint[] NOT NULL DEFAULT '{}', -- the citations offered, best first
    scores           double precision[] NOT NULL DEFAULT '{}',  -- their retrieval scores
    refused          boolean NOT NULL,
    cited            integer NOT NULL,              -- citations the answer refers to ([n])
    pii_entities     integer NOT NULL DEFAULT 0,    -- entities filtered in the question, context and answer
    latency_ms       double precision NOT NULL,
    cost_usd         numeric(18, 9) NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- Sums and counts per collection x configuration x prompt x index version x day: additive, so a
-- batch of evaluations is folded in with one upsert per group, and means are sum / n.
CREATE TABLE online_quality (
    day              date NOT NULL,
    collection       text NOT NULL,
    config_version   text NOT NULL,
    prompt_version   text NOT NULL,
    index_version    text NOT NULL,
    answers          integer NOT NULL DEFAULT 0,
    refused          integer NOT NULL DEFAULT 0,
    cited_sum        integer NOT NULL DEFAULT 0,
    pii_entities_sum integer NOT NULL DEFAULT 0,
    top_score_sum    double precision NOT NULL DEFAULT 0,
    top_score_n      integer NOT NULL DEFAULT 0,
    margin_sum       double precision NOT NULL DEFAULT 0,
    margin_n         integer NOT NULL DEFAULT 0,
    support_sum      double precision NOT NULL DEFAULT 0,
    support_n        integer NOT NULL DEFAULT 0,
    latency_ms_sum   double precision NOT NULL DEFAULT 0,
    cost_usd_sum     numeric(18, 9) NOT NULL DEFAULT 0,
    -- The LLM judge's ragas scores and spend, for a judge in the worker (not wired yet: stay 0).
    faithfulness_sum double precision NOT NULL DEFAULT 0,
    faithfulness_n   integer NOT NULL DEFAULT 0,
    relevancy_sum    double precision NOT NULL DEFAULT 0,
    relevancy_n      integer NOT NULL DEFAULT 0,
    judge_cost_usd   numeric(18, 9) NOT NULL DEFAULT 0,  -- what the judge spent: its daily cap is enforced from this
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, collection, config_version, prompt_version, index_version)
);
CREATE INDEX online_quality_collection_day ON online_quality (collection, day);
