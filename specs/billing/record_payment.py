"""billing.recordPayment and billing.recordPaymentFailure: what Stripe's webhooks become.

Stripe sends events late, twice and out of order: recording a payment an invoice already
has is a success that changes nothing, and a failure arriving after the payment is ignored.
The handlers record what Stripe itself reports for the PaymentIntent, not what the command
says; ``amount`` and ``currency`` must agree with Stripe's.
"""

from runner import IO, Meta, Model, Policy, Retry, define_command
from runner.types import CurrencyCode, NonEmptyString, PositiveAmount

_STRIPE_ERRORS = {
    "PAYMENT_NOT_FOUND": "Stripe has no such PaymentIntent",
    "PAYMENT_MISMATCH": "The PaymentIntent belongs to another invoice, or its amount or "
    "currency differs from the invoice's or the command's",
}


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
            "PAYMENT_NOT_SUCCEEDED": "Stripe does not report the PaymentIntent as succeeded",
            **_STRIPE_ERRORS,
        },
    ),
    policy=Policy(auth="service"),
    partition_key="invoice_id",
    retry=Retry(max_attempts=10, initial_backoff=0.5, max_backoff=10.0),  # Stripe is read
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
        errors={"INVOICE_NOT_FOUND": "No invoice", **_STRIPE_ERRORS},
    ),
    policy=Policy(auth="service"),
    partition_key="invoice_id",
    retry=Retry(max_attempts=10, initial_backoff=0.5, max_backoff=10.0),  # Stripe is read
)
