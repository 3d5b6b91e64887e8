"""Refund all or part of a paid invoice through Stripe."""

from __future__ import annotations

import stripe

from infra.stripe import to_minor
from runner import OperationContext, OperationError, RetryableError
from specs.billing import RefundPaymentInput, RefundResult


async def refund_payment(value: RefundPaymentInput, ctx: OperationContext) -> RefundResult:
    invoice = await ctx.db.fetchrow(
        """SELECT amount, currency, status, transaction_id, amount_refunded
           FROM billing_invoices WHERE id = $1 FOR UPDATE""",
        value.invoice_id,
    )
    if invoice is None or invoice["transaction_id"] is None:
        raise OperationError("NOT_PAID", f"invoice {value.invoice_id} has no payment")
    left = invoice["amount"] - invoice["amount_refunded"]
    amount = value.amount if value.amount is not None else left
    if amount > left or amount <= 0:
        raise OperationError(
            "REFUND_EXCEEDS_PAYMENT", f"at most {left} can be refunded", details={"refundable": str(left)}
        )
    client: stripe.StripeClient = ctx.stripe
    try:
        refund = await client.v1.refunds.create_async(
            {
                "payment_intent": invoice["transaction_id"],
                "amount": to_minor(amount, invoice["currency"]),
                "metadata": {"invoice_id": value.invoice_id, "reason": value.reason or ""},
            },
            {"idempotency_key": ctx.external_key("refund")},
        )
    except stripe.APIConnectionError as exc:
        raise RetryableError(f"Stripe unreachable: {exc.user_message or exc}") from exc
    except stripe.InvalidRequestError as exc:
        raise OperationError("REFUND_REFUSED", exc.user_message or "Stripe refused the refund") from None
    refunded = invoice["amount_refunded"] + amount
    await ctx.db.execute(
        """UPDATE billing_invoices SET amount_refunded = $2,
               status = CASE WHEN $2 >= amount THEN 'refunded' ELSE status END
           WHERE id = $1""",
        value.invoice_id,
        refunded,
    )
    await ctx.db.execute(
        "INSERT INTO billing_refunds (invoice_id, refund_id, amount, reason) VALUES ($1, $2, $3, $4)",
        value.invoice_id,
        refund.id,
        amount,
        value.reason,
    )
    return RefundResult(
        refund_id=refund.id, status=refund.status or "succeeded", amount=amount, amount_refunded=refunded
    )
