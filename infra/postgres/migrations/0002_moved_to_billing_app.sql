-- Moved to the billing app (handlers/migrations/0001_billing.sql): the engine creates no
-- app's tables. Kept, empty, so the engine's numbering and databases that applied it agree.
SELECT 1;
