-- Idempotency keys belong to their caller. A run is found by its run key: the caller's tenant
-- and subject, length-prefixed so that no two callers' keys can collide, then the key itself
-- (runner.store.run_key builds the same string). The key as sent stays in idempotency_key.
-- Rows from before 0003 have no actor: they move to the anonymous scope ('n/n/<key>').
ALTER TABLE oprunner_runs ADD COLUMN run_key text;
UPDATE oprunner_runs SET run_key =
    CASE WHEN tenant_id IS NULL THEN 'n' ELSE length(tenant_id) || ':' || tenant_id END || '/' ||
    CASE WHEN actor_id IS NULL THEN 'n' ELSE length(actor_id) || ':' || actor_id END || '/' ||
    idempotency_key;
ALTER TABLE oprunner_runs ALTER COLUMN run_key SET NOT NULL;
ALTER TABLE oprunner_runs DROP CONSTRAINT oprunner_runs_pkey;
ALTER TABLE oprunner_runs ADD PRIMARY KEY (run_key);
CREATE INDEX oprunner_runs_idempotency_key ON oprunner_runs (idempotency_key);
