-- One row per budget period a running request holds money in, so that a hold whose process died
-- (killed, crashed, the machine lost) can be found and released by the sweeper instead of freezing
-- the key's budget until the period ends. key_spend.reserved_usd stays the sum of these rows.
CREATE TABLE budget_holds (
    request_id    text NOT NULL,
    key_id        bigint NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    period        text NOT NULL CHECK (period IN ('day', 'month')),
    period_start  date NOT NULL,
    amount_usd    numeric(18, 9) NOT NULL CHECK (amount_usd >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, period)
);
CREATE INDEX budget_holds_created_at ON budget_holds (created_at);

-- Holds taken before this table existed cannot be told apart from holds of crashed processes:
-- release them (a request still running settles its spend as usual; its hold is then already gone).
UPDATE key_spend SET reserved_usd = 0 WHERE reserved_usd <> 0;
