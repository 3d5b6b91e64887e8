"""A ledger app for integration, chaos and benchmark runs: every effect is a row we can count.

``ledger.credit`` adds to an account's balance and appends one row to ``ledger_effects`` in
the handler's transaction, so "exactly once" is checked by counting rows per idempotency key.
The handler fails transiently on the first attempts of commands whose ``flaky`` is set, and
with the domain error ``fail`` names, after writing, when that is set; ``fail="NUL_OUTPUT"``
instead returns an output holding U+0000 (which the runner must fail, not try to store), and
``fail="DEFERRED_FK"`` writes a row whose deferred foreign key fails only at COMMIT: an
outcome the store refuses every time, which no check before it can see.
``batched`` is the same app with ``credit_many``, the batch form of ``credit``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from bench.app import LEDGER_SCHEMA
from runner import (
    IO,
    Meta,
    Model,
    OperationContext,
    OperationError,
    OperationRegistry,
    Policy,
    PolicyContext,
    Rule,
    define_command,
    define_query,
    install_op,
)
from runner.types import NonEmptyString, PositiveAmount

SCHEMA = LEDGER_SCHEMA  # the benchmark's tables: both count effects the same way


class CreditInput(Model):
    account_id: NonEmptyString
    amount: PositiveAmount
    flaky: int = 0
    fail: str | None = None
    delay: float = 0.0  # seconds the handler takes, for tests that crash mid-command


class CreditOutput(Model):
    account_id: str
    balance: str


Credit = define_command(
    meta=Meta(key="ledger.credit", version="1.0.0", description="Credit an account"),
    io=IO(input=CreditInput, output=CreditOutput, errors={"DECLINED": "The account refuses the credit"}),
    policy=Policy(
        auth="user",
        rules=[Rule(resource="account", action="credit", condition="owner", id_field="account_id")],
    ),
    partition_key="account_id",
)


async def credit(value: CreditInput, ctx: OperationContext) -> CreditOutput:
    if value.delay:
        await asyncio.sleep(value.delay)
    if ctx.attempt <= value.flaky:
        raise ConnectionError(f"flaky attempt {ctx.attempt}")
    balance = await ctx.db.fetchval(
        "UPDATE ledger_accounts SET balance = balance + $2 WHERE id = $1 RETURNING balance",
        value.account_id,
        value.amount,
    )
    await ctx.db.execute(
        "INSERT INTO ledger_effects (idempotency_key, account_id, amount) VALUES ($1, $2, $3)",
        ctx.idempotency_key,
        value.account_id,
        value.amount,
    )
    if value.fail == "DEFERRED_FK":
        await ctx.db.execute("INSERT INTO ledger_holds (account_id) VALUES ('no-such-account')")
        return CreditOutput(account_id=value.account_id, balance=str(balance))
    if value.fail == "NUL_OUTPUT":
        return CreditOutput(account_id=value.account_id, balance="\x00")
    if value.fail:
        raise OperationError(value.fail, "asked to fail after writing")
    return CreditOutput(account_id=value.account_id, balance=str(balance))


async def credit_many(items: Sequence[tuple[CreditInput, OperationContext]]) -> list[CreditOutput]:
    """``credit`` for a batch in one statement. Raises (the batch falls back to ``credit``)
    when any command is flaky, or when an amount is 13 — after writing, to show the batch's
    writes roll back."""
    if any(ctx.attempt <= value.flaky for value, ctx in items):
        raise ConnectionError("a flaky command in the batch")
    rows = await items[0][1].db.fetch(
        """WITH x AS (SELECT * FROM unnest($1::text[], $2::numeric[], $3::text[]) AS x(id, amount, key)),
                up AS (UPDATE ledger_accounts AS a SET balance = a.balance + x.amount
                       FROM x WHERE a.id = x.id RETURNING a.id, a.balance),
                ef AS (INSERT INTO ledger_effects (idempotency_key, account_id, amount)
                       SELECT key, id, amount FROM x)
           SELECT id, balance FROM up""",
        [value.account_id for value, _ in items],
        [value.amount for value, _ in items],
        [ctx.idempotency_key for _, ctx in items],
    )
    if any(value.amount == 13 for value, _ in items):
        raise ValueError("unlucky")
    balances = {row["id"]: row["balance"] for row in rows}
    return [CreditOutput(account_id=v.account_id, balance=str(balances[v.account_id])) for v, _ in items]


async def load_account(account_id: str, ctx: PolicyContext) -> Any:
    return await ctx.db.fetchrow("SELECT owner_id, tenant_id FROM ledger_accounts WHERE id = $1", account_id)


class BalanceInput(Model):
    account_id: NonEmptyString


Balance = define_query(
    meta=Meta(key="ledger.balance", version="1.0.0", description="An account's balance"),
    io=IO(input=BalanceInput, output=CreditOutput, errors={"NOT_FOUND": "No such account"}),
    policy=Policy(
        auth="user",
        rules=[Rule(resource="account", action="read", condition="owner", id_field="account_id")],
    ),
)


async def balance(value: BalanceInput, ctx: OperationContext) -> CreditOutput:
    found = await ctx.db.fetchval("SELECT balance FROM ledger_accounts WHERE id = $1", value.account_id)
    if found is None:
        raise OperationError("NOT_FOUND", f"no account {value.account_id}")
    return CreditOutput(account_id=value.account_id, balance=str(found))


class PayInput(Model):
    account_id: NonEmptyString
    amount: PositiveAmount
    receipt_delay: float = 0.0  # seconds the receipt's handler takes, for crash tests


class ReceiptInput(Model):
    account_id: NonEmptyString
    amount: PositiveAmount
    delay: float = 0.0


class ReceiptOutput(Model):
    account_id: str
    receipt_key: str


Pay = define_command(
    meta=Meta(key="ledger.pay", version="1.0.0", description="Credit an account and ask for a receipt"),
    io=IO(input=PayInput, output=CreditOutput),
    policy=Policy(
        auth="user",
        rules=[Rule(resource="account", action="credit", condition="owner", id_field="account_id")],
    ),
    partition_key="account_id",
)
Receipt = define_command(
    meta=Meta(key="ledger.receipt", version="1.0.0", description="Write a payment's receipt"),
    io=IO(input=ReceiptInput, output=ReceiptOutput),
    policy=Policy(auth="service"),
    partition_key="account_id",
)


async def pay(value: PayInput, ctx: OperationContext) -> CreditOutput:
    """``credit``, then a follow-up: the receipt is written only if the credit commits."""
    out = await credit(CreditInput(account_id=value.account_id, amount=value.amount), ctx)
    data = {"accountId": value.account_id, "amount": str(value.amount), "delay": value.receipt_delay}
    await ctx.send(Receipt, data, key="receipt")
    return out


async def receipt(value: ReceiptInput, ctx: OperationContext) -> ReceiptOutput:
    if value.delay:
        await asyncio.sleep(value.delay)
    await ctx.db.execute(
        "INSERT INTO ledger_effects (idempotency_key, account_id, amount) VALUES ($1, $2, 0)",
        ctx.idempotency_key,
        value.account_id,
    )
    return ReceiptOutput(account_id=value.account_id, receipt_key=ctx.idempotency_key)


registry = OperationRegistry()
install_op(registry, Credit, credit)
install_op(registry, Balance, balance)
install_op(registry, Pay, pay)
install_op(registry, Receipt, receipt)
registry.add_resource("account", load_account)

batched = OperationRegistry()
install_op(batched, Credit, credit, batch=credit_many)
batched.add_resource("account", load_account)
