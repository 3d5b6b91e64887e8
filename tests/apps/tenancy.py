"""An app for the tenancy of follow-ups (issue 26): ``tenancy.ask`` is public, so an anonymous
caller or a user without a tenant may run it, and it sends ``tenancy.touch`` for the account
named, whose rule is the one the README recommends for a follow-up's target: the account's
owner, or a service. Each touch that runs writes one ``ledger_effects`` row."""

from __future__ import annotations

from runner import (
    IO,
    Meta,
    Model,
    OperationContext,
    OperationRegistry,
    Policy,
    Rule,
    define_command,
    install_op,
)
from runner.types import NonEmptyString

from .ledger import SCHEMA, load_account

__all__ = ["SCHEMA", "registry"]


class AskInput(Model):
    account_id: NonEmptyString


class AskOutput(Model):
    touch_id: str


class TouchOutput(Model):
    account_id: str


Ask = define_command(
    meta=Meta(key="tenancy.ask", version="1.0.0", description="Ask for an account to be touched"),
    io=IO(input=AskInput, output=AskOutput),
    policy=Policy(auth="public"),
)
Touch = define_command(
    meta=Meta(key="tenancy.touch", version="1.0.0", description="Touch an account"),
    io=IO(input=AskInput, output=TouchOutput),
    policy=Policy(
        auth="service",
        rules=[
            Rule(resource="account", action="touch", condition=("owner", "service"), id_field="account_id")
        ],
    ),
)


async def ask(value: AskInput, ctx: OperationContext) -> AskOutput:
    return AskOutput(touch_id=await ctx.send(Touch, {"accountId": value.account_id}, key="touch"))


async def touch(value: AskInput, ctx: OperationContext) -> TouchOutput:
    await ctx.db.execute(
        "INSERT INTO ledger_effects (idempotency_key, account_id, amount) VALUES ($1, $2, 0)",
        ctx.idempotency_key,
        value.account_id,
    )
    return TouchOutput(account_id=value.account_id)


registry = OperationRegistry()
install_op(registry, Ask, ask)
install_op(registry, Touch, touch)
registry.add_resource("account", load_account)
