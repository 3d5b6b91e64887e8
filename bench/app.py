"""The operation the benchmark runs through oprunner: a ledger credit, one row update, an
owner policy, JWT-authenticated — the same work as the hand-written consumer's, plus what
oprunner adds (claim, policy, result and audit events)."""

from __future__ import annotations

from collections.abc import Mapping
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


registry = OperationRegistry()
install_op(registry, Credit, credit)


@registry.resources("account")
async def load_accounts(ids: list[str], ctx: PolicyContext) -> Mapping[str, Any]:
    rows = await ctx.db.fetch(
        "SELECT id, owner_id, tenant_id FROM ledger_accounts WHERE id = ANY($1::text[])", ids
    )
    return {row["id"]: row for row in rows}
