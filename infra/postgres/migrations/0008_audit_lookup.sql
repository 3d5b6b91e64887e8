-- The runs list (GET /ops/runs) reads the audit log: one entry per outcome, newest first by
-- id, filtered by who acted (a user sees their own, a tenant's admin the tenant's), by
-- correlation id, and shown with the trace it belongs to. Entries from before this migration
-- have no correlation or trace id: they are listed, but not found by correlation id.
ALTER TABLE oprunner_audit ADD COLUMN correlation_id text, ADD COLUMN trace_id text;
CREATE INDEX oprunner_audit_by_actor ON oprunner_audit (actor_id, id);
CREATE INDEX oprunner_audit_by_tenant ON oprunner_audit (((data -> 'actor') ->> 'tenant'), id);
CREATE INDEX oprunner_audit_by_correlation ON oprunner_audit (correlation_id) WHERE correlation_id IS NOT NULL;
