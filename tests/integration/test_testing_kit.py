"""The README's testing example, run as it is printed there (the test checks the README
still shows this very code), plus what the kit promises around it."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from infra.testing import Kit
from runner import Executor, command
from runner.testing import InMemoryStore

README = (Path(__file__).parents[2] / "README.md").read_text()


async def test_only_the_owner_may_pay(oprunner: Kit) -> None:
    await oprunner.db.execute(
        """INSERT INTO billing_invoices (id, owner_id, tenant_id, amount, currency)
           VALUES ('inv_kit', 'alice', 't1', 25, 'eur') ON CONFLICT DO NOTHING"""
    )
    data = {"invoiceId": "inv_kit", "amount": "25.00", "currency": "EUR", "paymentMethodId": "pm_card_visa"}
    denied = await oprunner.execute("billing.capturePayment", data, sub="bob", tenant="t1")
    assert denied.status == "denied" and denied.error_code == "FORBIDDEN"
    missing = {**data, "invoiceId": "inv_nobody_has"}
    failed = await oprunner.execute("billing.capturePayment", missing, sub="alice", tenant="t1")
    assert failed.status == "failed" and failed.error_code == "INVOICE_NOT_FOUND"


def test_the_readme_shows_this_example() -> None:
    assert inspect.getsource(test_only_the_owner_may_pay) in README


async def test_outcomes_are_recorded_in_the_real_store(oprunner: Kit) -> None:
    data = {"invoiceId": "inv_nobody_has", "amount": "1.00", "currency": "EUR", "paymentMethodId": "pm_x"}
    out = await oprunner.execute("billing.capturePayment", data, sub="alice", tenant="t1", id="kit-recorded")
    assert out.error_code == "INVOICE_NOT_FOUND"
    row = await oprunner.db.fetchrow("SELECT outcome FROM oprunner_runs WHERE command_id = 'kit-recorded'")
    assert row is not None and row["outcome"] == "failed"


async def test_the_in_memory_store_says_it_has_no_sql(oprunner: Kit) -> None:
    executor = Executor(oprunner.app.registry, InMemoryStore(), oprunner.executor.authenticator)
    data = {"invoiceId": "inv_kit", "amount": "25.00", "currency": "EUR", "paymentMethodId": "pm_card_visa"}
    out = await executor.execute(command("billing.capturePayment", data), token=oprunner.token(tenant="t1"))
    # the policy's resolver reads the invoice with SQL: a clear error, failing closed
    assert out.status == "denied" and "RuntimeError" in out.result["data"]["error"]["message"]
    async with InMemoryStore().transaction() as tx:
        with pytest.raises(RuntimeError, match="in-memory store has no SQL database"):
            await tx.db.fetchrow("SELECT 1")
