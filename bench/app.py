"""The operation the benchmark runs through oprunner: a ledger credit, one row update, an
owner policy, JWT-authenticated — the same work as the hand-written consumer's, plus what
oprunner adds (claim, policy, result and audit events).

``credit_many`` is its batch form: the rows of a whole batch of credits in one statement.
``BENCH_NO_BATCH_HANDLER=1`` installs the plain handler alone, to compare."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from runner import (
    IO,
    Meta,
    Model,
    OperationContext,
    OperationRegistry,
    Policy,
    PolicyContext,
    Rule,
    define_command,
    install_op,
)
from runner.types import NonEmptyString, PositiveAmount

LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_accounts (
    id text PRIMARY KEY, owner_id text NOT NULL, tenant_id text, balance numeric NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS ledger_effects (
    id bigserial PRIMARY KEY, idempotency_key text NOT NULL, account_id text NOT NULL,
    amount numeric NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS ledger_holds (
    account_id text NOT NULL REFERENCES ledger_accounts (id) DEFERRABLE INITIALLY DEFERRED);
"""
"""The ledger's tables, for the benchmark and the tests' ledger app (``tests/apps/ledger.py``)."""


class CreditInput(Model):
    account_id: NonEmptyString
    amount: PositiveAmount


class CreditOutput(Model):
    account_id: str


Credit = define_command(
    meta=Meta(key="ledger.credit", version="1.0.0", description="Credit an account"),
    io=IO(input=CreditInput, output=CreditOutput),
    policy=Policy(
        auth="user",
        rules=[Rule(resource="account", action="credit", condition="owner", id_field="account_id")],
    ),
    partition_key="account_id",
)


async def credit(value: CreditInput, ctx: OperationContext) -> CreditOutput:
    await ctx.db.execute(
        "UPDATE ledger_accounts SET balance = balance + $2 WHERE id = $1", value.account_id, value.amount
    )
    return CreditOutput(account_id=value.account_id)


async def credit_many(items: Sequence[tuple[CreditInput, OperationContext]]) -> list[CreditOutput]:
    db = items[0][1].db
    await db.execute(
        """UPDATE ledger_accounts AS a SET balance = a.balance + x.amount
           FROM unnest($1::text[], $2::numeric[]) AS x(id, amount) WHERE a.id = x.id""",
        [value.account_id for value, _ in items],
        [value.amount for value, _ in items],
    )
    return [CreditOutput(account_id=value.account_id) for value, _ in items]


registry = OperationRegistry()
install_op(registry, Credit, credit, batch=None if os.environ.get("BENCH_NO_BATCH_HANDLER") else credit_many)


@registry.resources("account")
async def load_accounts(ids: list[str], ctx: PolicyContext) -> Mapping[str, Any]:
    rows = await ctx.db.fetch(
        "SELECT id, owner_id, tenant_id FROM ledger_accounts WHERE id = ANY($1::text[])", ids
    )
    return {row["id"]: row for row in rows}
