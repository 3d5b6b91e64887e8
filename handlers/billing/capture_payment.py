"""Capture an invoice's payment through Stripe, exactly once per command."""

from __future__ import annotations

from typing import Any

import stripe

from infra.stripe import to_minor
from runner import OperationContext, OperationError, RetryableError
from specs.billing import CapturePaymentInput, PaymentResult

from .invoices import mark_paid


async def receipt_url(client: stripe.StripeClient, latest_charge: Any) -> str | None:
    """Stripe returns ``latest_charge`` as an id or expanded; either way, its receipt URL."""
    if latest_charge is None:
        return None
    if isinstance(latest_charge, str):
        latest_charge = await client.v1.charges.retrieve_async(latest_charge)
    url = getattr(latest_charge, "receipt_url", None)
    return url if isinstance(url, str) and url else None


async def capture_payment(value: CapturePaymentInput, ctx: OperationContext) -> PaymentResult:
    invoice = await ctx.db.fetchrow(
        "SELECT amount, currency, status FROM billing_invoices WHERE id = $1 FOR UPDATE", value.invoice_id
    )
    if invoice is None:
        raise OperationError("INVOICE_NOT_FOUND", f"no invoice {value.invoice_id}")
    if invoice["status"] != "open":
        raise OperationError("ALREADY_PAID", f"invoice {value.invoice_id} is {invoice['status']}")
    if value.amount != invoice["amount"] or value.currency != invoice["currency"]:
        raise OperationError(
            "AMOUNT_MISMATCH",
            f"invoice is {invoice['amount']} {invoice['currency'].upper()}",
            details={"expected": {"amount": str(invoice["amount"]), "currency": invoice["currency"]}},
        )
    client: stripe.StripeClient = ctx.stripe
    try:
        # Keys derived from the command's: a retry after a crash finds the same PaymentIntent.
        intent = await client.v1.payment_intents.create_async(
            {
                "amount": to_minor(value.amount, value.currency),
                "currency": value.currency,
                "payment_method": value.payment_method_id,
                "metadata": {"invoice_id": value.invoice_id, "idempotency_key": ctx.idempotency_key},
            },
            {"idempotency_key": ctx.external_key("create")},
        )
        if intent.status == "requires_confirmation":
            intent = await client.v1.payment_intents.confirm_async(
                intent.id, options={"idempotency_key": ctx.external_key("confirm")}
            )
    except stripe.CardError as exc:
        error = exc.error
        decline = (error.decline_code if error else None) or exc.code or "card_declined"
        raise OperationError(
            "CARD_DECLINED", exc.user_message or "the card was declined", details={"declineCode": decline}
        ) from None
    except stripe.APIConnectionError as exc:
        raise RetryableError(f"Stripe unreachable: {exc.user_message or exc}") from exc
    if intent.status == "succeeded":
        await mark_paid(ctx.db, value.invoice_id, intent.id, value.amount, value.currency, "capture")
    return PaymentResult(
        transaction_id=intent.id,
        status=intent.status,
        receipt_url=await receipt_url(client, getattr(intent, "latest_charge", None)),
    )
