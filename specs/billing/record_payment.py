"""billing.recordPayment and billing.recordPaymentFailure: what Stripe's webhooks become.

Stripe sends events late, twice and out of order: recording a payment an invoice already
has is a success that changes nothing, and a failure arriving after the payment is ignored.
"""

from runner import IO, Meta, Model, Policy, define_command
from runner.types import CurrencyCode, NonEmptyString, PositiveAmount


class RecordPaymentInput(Model):
    invoice_id: NonEmptyString
    payment_intent_id: NonEmptyString
    amount: PositiveAmount
    currency: CurrencyCode
    event_id: NonEmptyString


class RecordPaymentResult(Model):
    invoice_id: str
    status: str
    changed: bool


class RecordPaymentFailureInput(Model):
    invoice_id: NonEmptyString
    payment_intent_id: NonEmptyString
    event_id: NonEmptyString
    failure_code: str | None = None
    failure_message: str | None = None


RecordPayment = define_command(
    meta=Meta(
        key="billing.recordPayment",
        version="1.0.0",
        description="Record a payment Stripe reports for an invoice",
        goal="Keep invoices in step with Stripe, whatever order events arrive in",
        context="Produced by the Stripe webhook from payment_intent.succeeded",
        owners=["team-billing"],
        tags=["payments", "stripe", "webhook"],
    ),
    io=IO(
        input=RecordPaymentInput,
        output=RecordPaymentResult,
        errors={
            "INVOICE_NOT_FOUND": "No invoice with that id",
            "PAID_BY_ANOTHER_PAYMENT": "The invoice was paid by a different PaymentIntent",
        },
    ),
    policy=Policy(auth="service"),
    partition_key="invoice_id",
)

RecordPaymentFailure = define_command(
    meta=Meta(
        key="billing.recordPaymentFailure",
        version="1.0.0",
        description="Record a failed payment attempt Stripe reports for an invoice",
        goal="Show the customer why a payment did not go through",
        context="Produced by the Stripe webhook from payment_intent.payment_failed",
        owners=["team-billing"],
        tags=["payments", "stripe", "webhook"],
    ),
    io=IO(
        input=RecordPaymentFailureInput,
        output=RecordPaymentResult,
        errors={"INVOICE_NOT_FOUND": "No invoice"},
    ),
    policy=Policy(auth="service"),
    partition_key="invoice_id",
)
