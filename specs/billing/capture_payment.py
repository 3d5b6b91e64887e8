"""billing.capturePayment: charge an invoice's amount to the customer's payment method."""

from typing import Literal

from pydantic import Field

from runner import IO, Meta, Model, Policy, Retry, Rule, define_command
from runner.types import CurrencyCode, NonEmptyString, PositiveAmount


class CapturePaymentInput(Model):
    invoice_id: NonEmptyString
    amount: PositiveAmount
    currency: CurrencyCode
    payment_method_id: NonEmptyString = Field(json_schema_extra={"sensitive": True})


class PaymentResult(Model):
    transaction_id: NonEmptyString
    status: Literal["succeeded", "processing", "requires_action", "requires_capture"]
    receipt_url: str | None = None


CapturePayment = define_command(
    meta=Meta(
        key="billing.capturePayment",
        version="1.0.0",
        description="Process a payment for an invoice",
        goal="Capture funds from customer payment method",
        context="Called when customer confirms purchase",
        owners=["team-billing"],
        tags=["payments", "stripe", "critical"],
        stability="stable",
    ),
    io=IO(
        input=CapturePaymentInput,
        output=PaymentResult,
        errors={
            "INVOICE_NOT_FOUND": "No invoice with that id",
            "ALREADY_PAID": "The invoice is paid already",
            "AMOUNT_MISMATCH": "Amount or currency differ from the invoice's",
            "CARD_DECLINED": "The card was declined; details.declineCode says why",
        },
    ),
    policy=Policy(
        auth="user",
        # A missing invoice is left to the handler so the caller gets INVOICE_NOT_FOUND;
        # an existing one must be the actor's own (same user, same tenant).
        rules=[
            Rule(
                resource="invoice",
                action="pay",
                condition="owner",
                id_field="invoice_id",
                if_missing="allow",
            )
        ],
    ),
    partition_key="invoice_id",
    # Stripe unreachable: keep trying for about a minute (same idempotency keys every time).
    retry=Retry(max_attempts=10, initial_backoff=0.5, max_backoff=10.0),
)
