-- Answer-side drift signals recorded beside each drift observation: numbers only, never text.
-- Computed on the request path from the answer and the cited chunks already in memory (app/drift.py);
-- NULL on rows recorded before this migration.
ALTER TABLE drift_observations
    ADD COLUMN answer_tokens integer,          -- the answer's completion tokens
    ADD COLUMN refused       boolean,          -- the answer said the documents do not hold the answer
    ADD COLUMN support_share double precision; -- share of answer sentences a cited chunk supports; NULL for a
                                               -- refusal, no citations, or a configuration that does not filter answers
