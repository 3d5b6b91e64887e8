-- Who asked for a run, so GET /ops/runs/{id} shows it to that actor (or an admin) only.
ALTER TABLE oprunner_runs ADD COLUMN actor_id text, ADD COLUMN tenant_id text;
CREATE INDEX oprunner_runs_command ON oprunner_runs (command_id);
