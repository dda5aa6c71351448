-- The LLM judge of online evaluation (online_eval.judge in a configuration).
--
-- online_eval_queue.question: the PII-filtered question, queued only for an answer the judge's
-- sample picked (AnswerRelevancy needs it), deleted with the row once judged; never the raw text.
--
-- A judged row is measured in two short transactions with the judge calls between them, so no
-- claim holds a transaction open across slow calls: the first leases the row (judge_lease, a token,
-- until judge_lease_until) and commits; the second adds its measures and deletes it only if the
-- lease is still this worker's. A worker that dies while judging leaves the row queued: once the
-- lease expires another worker judges it again, and the row is counted once.

ALTER TABLE online_eval_queue ADD COLUMN question text;
ALTER TABLE online_eval_queue ADD COLUMN judge_lease text;
ALTER TABLE online_eval_queue ADD COLUMN judge_lease_until timestamptz;

-- Per group of online_quality: how the judge fared, by outcome ("faithfulness:timeout",
-- "answer_relevancy:bad_json", "skipped:cap", ...), additive like online_quality.
CREATE TABLE online_judge_outcomes (
    day            date NOT NULL,
    collection     text NOT NULL,
    config_version text NOT NULL,
    prompt_version text NOT NULL,
    index_version  text NOT NULL,
    outcome        text NOT NULL,
    n              integer NOT NULL DEFAULT 0,
    PRIMARY KEY (day, collection, config_version, prompt_version, index_version, outcome)
);

-- What the judge spent, per UTC day it ran on, configuration name and collection: the daily cap
-- (per configuration) is enforced from this. Written right after each judged answer, so spend on an
-- answer whose worker then died still counts against the cap.
CREATE TABLE online_judge_spend (
    day        date NOT NULL,
    config     text NOT NULL,
    collection text NOT NULL,
    usd        numeric(18, 9) NOT NULL DEFAULT 0,
    answers    integer NOT NULL DEFAULT 0,
    PRIMARY KEY (day, config, collection)
);
