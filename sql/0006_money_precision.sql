-- Budgets to the nano-dollar, like the spend they cap (key_spend, budget_holds, ledger: numeric(18, 9)).
-- numeric(14, 6) stored a budget of $0.0000002 as 0, which then refused every priced request.
-- Widening keeps every stored value exactly; NULL stays "no budget", distinct from 0.
ALTER TABLE api_keys
    ALTER COLUMN budget_usd_day TYPE numeric(18, 9),
    ALTER COLUMN budget_usd_month TYPE numeric(18, 9);
