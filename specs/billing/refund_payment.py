"""billing.refundPayment: give back all or part of what an invoice was paid."""

from pydantic import Field

from runner import IO, Meta, Model, Policy, Retry, Rule, define_command
from runner.types import NonEmptyString, PositiveAmount


class RefundPaymentInput(Model):
    invoice_id: NonEmptyString
    amount: PositiveAmount | None = Field(default=None, description="Omit for a full refund")
    reason: NonEmptyString | None = None


class RefundResult(Model):
    refund_id: NonEmptyString
    status: str
    amount: PositiveAmount
    amount_refunded: PositiveAmount


RefundPayment = define_command(
    meta=Meta(
        key="billing.refundPayment",
        version="1.0.0",
        description="Refund a paid invoice, fully or in part",
        goal="Return funds to the customer's payment method",
        context="Called by the invoice's owner or by support staff (admin)",
        owners=["team-billing"],
        tags=["payments", "stripe", "critical"],
        stability="stable",
    ),
    io=IO(
        input=RefundPaymentInput,
        output=RefundResult,
        errors={
            "NOT_PAID": "The invoice has no payment to refund",
            "REFUND_EXCEEDS_PAYMENT": "The amount is more than what is left to refund",
        },
    ),
    policy=Policy(
        auth="user",
        rules=[
            Rule(resource="invoice", action="refund", condition=("owner", "admin"), id_field="invoice_id")
        ],
    ),
    partition_key="invoice_id",
    retry=Retry(max_attempts=10, initial_backoff=0.5, max_backoff=10.0),
)
