-- A Kafka command's offset is its outbox (DESIGN.md, step 8): its result and audit events
-- are published by the consumer after the commit, not written to oprunner_outbox. They are
-- kept with the run instead, so that a redelivery (a crash between commit and offset commit)
-- publishes the same events again, their ids included.
ALTER TABLE oprunner_runs ADD COLUMN result_event bytea, ADD COLUMN audit_event bytea;
