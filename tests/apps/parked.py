"""``billing.capturePayment`` (the bundled spec, sensitive ``paymentMethodId`` and all) with a
handler whose write fails at COMMIT every time, as ``ledger.credit``'s ``DEFERRED_FK`` does: its
commands are parked on the dead-letter topic whole, as a real capture's would be."""

from __future__ import annotations

from handlers import load_invoice
from runner import OperationContext, OperationRegistry, install_op
from specs.billing import CapturePayment, CapturePaymentInput, PaymentResult


async def never_commits(value: CapturePaymentInput, ctx: OperationContext) -> PaymentResult:
    await ctx.db.execute("INSERT INTO ledger_holds (account_id) VALUES ('no-such-account')")
    return PaymentResult(transaction_id="pi_never", status="succeeded")


registry = OperationRegistry()
install_op(registry, CapturePayment, never_commits)
registry.add_resource("invoice", load_invoice)
