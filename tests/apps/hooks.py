"""The ledger as a webhook-fed app: a provider that follows Standard Webhooks asks for credits.

``ledger.deposit`` is ``ledger.credit``'s handler under a service policy, which the
one-command token of a webhook-made command (subject ``oprunner-webhooks``, kind service)
satisfies; ``ledger.credit`` itself is for an account's owner. A ``ledger.credit.requested``
event becomes a deposit; ``ledger.boom`` makes the mapping raise (recorded, answered 200,
nothing run); any other type is only recorded. The secret is
``OPRUNNER_LEDGER_WEBHOOK_SECRET``; the tables are the ledger's (``tests.support.seed_ledger``).
"""

from __future__ import annotations

from infra.standard_webhooks import standard_webhook
from runner import IO, App, Meta, OperationRegistry, Policy, define_command, install_op
from runner.webhooks import MappedCommand, VerifiedEvent
from tests.apps.ledger import CreditInput, CreditOutput, credit

Deposit = define_command(
    meta=Meta(key="ledger.deposit", version="1.0.0", description="Credit an account a provider reports"),
    io=IO(input=CreditInput, output=CreditOutput),
    policy=Policy(auth="service"),
    partition_key="account_id",
)


def ledger_event(event: VerifiedEvent) -> MappedCommand | None:
    if event.type == "ledger.boom":
        raise RuntimeError("a bug in the mapping")
    data = event.payload.get("data")
    if event.type != "ledger.credit.requested" or not isinstance(data, dict):
        return None
    account = data.get("accountId")
    command = {"accountId": account, "amount": data.get("amount")}
    return MappedCommand("ledger.deposit", command, key=account if isinstance(account, str) else None)


registry = OperationRegistry()
install_op(registry, Deposit, credit)

app = App(
    registry=registry, name="ledgerhooks", webhooks={"ledger": standard_webhook("ledger", ledger_event)}
)
