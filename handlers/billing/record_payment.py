"""Record what Stripe's webhooks report. Late, repeated and reordered events change nothing."""

from __future__ import annotations

from runner import OperationContext, OperationError
from specs.billing import RecordPaymentFailureInput, RecordPaymentInput, RecordPaymentResult

from .invoices import mark_paid


async def record_payment(value: RecordPaymentInput, ctx: OperationContext) -> RecordPaymentResult:
    invoice = await ctx.db.fetchrow(
        "SELECT status, transaction_id FROM billing_invoices WHERE id = $1 FOR UPDATE", value.invoice_id
    )
    if invoice is None:
        raise OperationError("INVOICE_NOT_FOUND", f"no invoice {value.invoice_id}")
    if invoice["transaction_id"] == value.payment_intent_id:
        return RecordPaymentResult(invoice_id=value.invoice_id, status=invoice["status"], changed=False)
    if invoice["transaction_id"] is not None:
        raise OperationError(
            "PAID_BY_ANOTHER_PAYMENT",
            f"invoice {value.invoice_id} was paid by {invoice['transaction_id']}; refund this payment",
            details={"paymentIntentId": value.payment_intent_id},
        )
    await mark_paid(
        ctx.db, value.invoice_id, value.payment_intent_id, value.amount, value.currency, "webhook"
    )
    return RecordPaymentResult(invoice_id=value.invoice_id, status="paid", changed=True)


async def record_payment_failure(
    value: RecordPaymentFailureInput, ctx: OperationContext
) -> RecordPaymentResult:
    invoice = await ctx.db.fetchrow(
        "SELECT status FROM billing_invoices WHERE id = $1 FOR UPDATE", value.invoice_id
    )
    if invoice is None:
        raise OperationError("INVOICE_NOT_FOUND", f"no invoice {value.invoice_id}")
    if invoice["status"] != "open":  # a failure reported after the payment: nothing to show
        return RecordPaymentResult(invoice_id=value.invoice_id, status=invoice["status"], changed=False)
    failure = value.failure_code or value.failure_message or "payment_failed"
    await ctx.db.execute(
        "UPDATE billing_invoices SET last_failure = $2 WHERE id = $1", value.invoice_id, failure
    )
    return RecordPaymentResult(invoice_id=value.invoice_id, status="open", changed=True)
