-- Commands accepted over HTTP with "Prefer: respond-async": written here before the 202, so
-- a crash after it loses nothing. The accepting process runs each at once; any process runs
-- one whose claim ran out (claimed_until). Deleted once the command's outcome is recorded.
-- The verified actor is kept, never the token.
CREATE TABLE oprunner_accepted (
    command_id    text PRIMARY KEY,
    command       bytea       NOT NULL,
    actor         jsonb,
    actor_id      text,
    tenant_id     text,
    accepted_at   timestamptz NOT NULL DEFAULT now(),
    claimed_until timestamptz NOT NULL
);
CREATE INDEX oprunner_accepted_claimed ON oprunner_accepted (claimed_until);
