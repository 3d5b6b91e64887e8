"""Record what Stripe says happened. Late, repeated and reordered events change nothing.

The command only names a PaymentIntent: whoever can write to the commands topic (or lift a
credential from it) could claim anything in the rest of it. So the handler fetches the
PaymentIntent from Stripe with the app's own key and records Stripe's status, amount and
currency, for the invoice Stripe's ``metadata.invoice_id`` names. Anything that disagrees
with the invoice, or with what the command claims, is a ``PAYMENT_MISMATCH`` failure
(audited like every outcome), never a paid invoice.
"""

from __future__ import annotations

from typing import Any

import stripe

from infra.stripe import TRANSIENT_ERRORS, from_minor
from runner import OperationContext, OperationError, RetryableError
from specs.billing import RecordPaymentFailureInput, RecordPaymentInput, RecordPaymentResult

from .invoices import mark_paid


async def fetch_intent(ctx: OperationContext, invoice_id: str, payment_intent_id: str) -> Any:
    """The PaymentIntent as Stripe has it, and only if it belongs to ``invoice_id``."""
    client: stripe.StripeClient = ctx.stripe
    try:
        intent = await client.v1.payment_intents.retrieve_async(payment_intent_id)
    except TRANSIENT_ERRORS as exc:
        raise RetryableError(f"Stripe unreachable: {exc}") from exc
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404:
            raise OperationError(
                "PAYMENT_NOT_FOUND", f"Stripe has no PaymentIntent {payment_intent_id}"
            ) from None
        raise
    metadata = getattr(intent, "metadata", None)
    owner = metadata.to_dict().get("invoice_id") if isinstance(metadata, stripe.StripeObject) else None
    if owner != invoice_id:
        raise OperationError(
            "PAYMENT_MISMATCH",
            f"PaymentIntent {payment_intent_id} does not belong to invoice {invoice_id}",
            details={"paymentIntentId": payment_intent_id, "stripeInvoiceId": owner},
        )
    return intent


async def record_payment(value: RecordPaymentInput, ctx: OperationContext) -> RecordPaymentResult:
    invoice = await ctx.db.fetchrow(
        "SELECT status, transaction_id, amount, currency FROM billing_invoices WHERE id = $1 FOR UPDATE",
        value.invoice_id,
    )
    if invoice is None:
        raise OperationError("INVOICE_NOT_FOUND", f"no invoice {value.invoice_id}")
    if invoice["transaction_id"] == value.payment_intent_id:
        # Already recorded from Stripe (by the capture, or an earlier delivery): nothing to add.
        return RecordPaymentResult(invoice_id=value.invoice_id, status=invoice["status"], changed=False)
    intent = await fetch_intent(ctx, value.invoice_id, value.payment_intent_id)
    if intent.status != "succeeded":
        raise OperationError(
            "PAYMENT_NOT_SUCCEEDED",
            f"Stripe reports PaymentIntent {intent.id} as {intent.status}",
            details={"paymentIntentId": intent.id, "stripeStatus": intent.status},
        )
    currency = str(intent.currency).lower()
    received = from_minor(int(getattr(intent, "amount_received", 0) or 0), currency)
    stripe_says = {"amount": str(received), "currency": currency}
    if (received, currency) != (invoice["amount"], invoice["currency"]):
        raise OperationError(
            "PAYMENT_MISMATCH",
            f"Stripe received {received} {currency.upper()}; "
            f"the invoice is {invoice['amount']} {invoice['currency'].upper()}",
            details={
                "stripe": stripe_says,
                "invoice": {"amount": str(invoice["amount"]), "currency": invoice["currency"]},
            },
        )
    if (value.amount, value.currency) != (received, currency):
        raise OperationError(
            "PAYMENT_MISMATCH",
            f"the command says {value.amount} {value.currency.upper()}; "
            f"Stripe received {received} {currency.upper()}",
            details={"stripe": stripe_says},
        )
    if invoice["transaction_id"] is not None:
        raise OperationError(
            "PAID_BY_ANOTHER_PAYMENT",
            f"invoice {value.invoice_id} was paid by {invoice['transaction_id']}; refund this payment",
            details={"paymentIntentId": value.payment_intent_id},
        )
    await mark_paid(ctx.db, value.invoice_id, intent.id, received, currency, "webhook")
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
    intent = await fetch_intent(ctx, value.invoice_id, value.payment_intent_id)
    if intent.status == "succeeded":  # a retried payment went through after this failure
        return RecordPaymentResult(invoice_id=value.invoice_id, status="open", changed=False)
    error = getattr(intent, "last_payment_error", None)
    code = getattr(error, "decline_code", None) or getattr(error, "code", None) if error else None
    message = getattr(error, "message", None) if error else None
    failure = code or message or "payment_failed"  # Stripe's words, not the command's
    await ctx.db.execute(
        "UPDATE billing_invoices SET last_failure = $2 WHERE id = $1", value.invoice_id, failure
    )
    return RecordPaymentResult(invoice_id=value.invoice_id, status="open", changed=True)
