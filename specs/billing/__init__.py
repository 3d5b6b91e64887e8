"""Billing operations."""

from .capture_payment import CapturePayment, CapturePaymentInput, PaymentResult

__all__ = ["CapturePayment", "CapturePaymentInput", "PaymentResult"]
