-- The billing app's tables. Until the app had migrations of its own, the engine's 0002
-- created them: IF NOT EXISTS leaves a database from then as it is.
-- Invoices: what the billing operations act on. Amounts in major units (numeric).
CREATE TABLE IF NOT EXISTS billing_invoices (
    id                 text        PRIMARY KEY,
    owner_id           text        NOT NULL,
    tenant_id          text,
    amount             numeric     NOT NULL CHECK (amount > 0),
    currency           text        NOT NULL,
    status             text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'paid', 'refunded')),
    paid_at            timestamptz,
    transaction_id     text,
    amount_refunded    numeric     NOT NULL DEFAULT 0,
    last_failure       text,
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS billing_payments (
    id                 bigserial   PRIMARY KEY,
    invoice_id         text        NOT NULL REFERENCES billing_invoices (id),
    payment_intent_id  text        NOT NULL UNIQUE,
    amount             numeric     NOT NULL,
    currency           text        NOT NULL,
    status             text        NOT NULL,
    source             text        NOT NULL,  -- 'capture' or 'webhook'
    recorded_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS billing_refunds (
    id                 bigserial   PRIMARY KEY,
    invoice_id         text        NOT NULL REFERENCES billing_invoices (id),
    refund_id          text        NOT NULL UNIQUE,
    amount             numeric     NOT NULL CHECK (amount > 0),
    reason             text,
    created_at         timestamptz NOT NULL DEFAULT now()
);
