-- Outbox rows Kafka refuses for good (e.g. too large) are parked, not retried forever: they
-- would block every row behind them. Parked rows stay for an operator to inspect.
ALTER TABLE oprunner_outbox ADD COLUMN failed_at timestamptz, ADD COLUMN error text;
