"""Billing operations."""

from .capture_payment import CapturePayment, CapturePaymentInput, PaymentResult
from .record_payment import (
    RecordPayment,
    RecordPaymentFailure,
    RecordPaymentFailureInput,
    RecordPaymentInput,
    RecordPaymentResult,
)
from .refund_payment import RefundPayment, RefundPaymentInput, RefundResult

__all__ = [
    "CapturePayment",
    "CapturePaymentInput",
    "PaymentResult",
    "RecordPayment",
    "RecordPaymentFailure",
    "RecordPaymentFailureInput",
    "RecordPaymentInput",
    "RecordPaymentResult",
    "RefundPayment",
    "RefundPaymentInput",
    "RefundResult",
]
