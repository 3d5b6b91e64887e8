-- Runs: one row per idempotency key. The claim, the stored result and the lease live here.
CREATE TABLE oprunner_runs (
    idempotency_key text PRIMARY KEY,
    op              text        NOT NULL,
    version         text        NOT NULL,
    input_hash      text        NOT NULL,
    command_id      text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('running', 'completed')),
    outcome         text,
    result          jsonb,
    attempts        integer     NOT NULL DEFAULT 0,
    lease_owner     text,
    lease_until     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz
);
CREATE INDEX oprunner_runs_created ON oprunner_runs (created_at);

-- Outbox: events committed with their outcome, deleted once Kafka has them.
CREATE TABLE oprunner_outbox (
    id         bigserial   PRIMARY KEY,
    topic      text        NOT NULL,
    key        bytea,
    value      bytea       NOT NULL,
    headers    jsonb       NOT NULL DEFAULT '[]',
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Audit log: append-only; UPDATE and DELETE are refused by a trigger.
CREATE TABLE oprunner_audit (
    id          bigserial   PRIMARY KEY,
    command_id  text        NOT NULL,
    op          text        NOT NULL,
    version     text,
    status      text        NOT NULL,
    decision    text,
    actor_id    text,
    data        jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX oprunner_audit_command ON oprunner_audit (command_id);

CREATE FUNCTION oprunner_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'oprunner_audit is append-only';
END $$;
CREATE TRIGGER oprunner_audit_append_only BEFORE UPDATE OR DELETE ON oprunner_audit
    FOR EACH ROW EXECUTE FUNCTION oprunner_audit_append_only();

-- Webhook inbox: every delivery with its verification result; a verified event id once.
CREATE TABLE oprunner_webhook_inbox (
    id           bigserial   PRIMARY KEY,
    provider     text        NOT NULL,
    event_id     text,
    event_type   text,
    payload      bytea       NOT NULL,
    verified     boolean     NOT NULL,
    error        text,
    received_at  timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE UNIQUE INDEX oprunner_webhook_inbox_event ON oprunner_webhook_inbox (provider, event_id) WHERE verified;
