"""Stripe as a ``WebhookSource``: the stripe SDK verifies, event types map to billing commands."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import stripe

from infra.stripe import from_minor
from runner.webhooks import MappedCommand, VerifiedEvent, WebhookRejected

TOLERANCE = 300
MAX_SIGNATURE_HEADER = 8192


class StripeWebhookSource:
    name = "stripe"

    def __init__(self, secret: str, *, tolerance: int = TOLERANCE) -> None:
        self.secret = secret
        self.tolerance = tolerance

    def verify(self, body: bytes, headers: Mapping[str, str]) -> VerifiedEvent:
        signature = headers.get("stripe-signature")
        if not signature:
            raise WebhookRejected("missing Stripe-Signature header")
        if len(signature) > MAX_SIGNATURE_HEADER:
            raise WebhookRejected("Stripe-Signature header too long")
        try:
            event = stripe.Webhook.construct_event(body, signature, self.secret, tolerance=self.tolerance)
        except stripe.SignatureVerificationError as exc:
            raise WebhookRejected(f"signature verification failed: {exc.user_message or exc}") from None
        except (ValueError, UnicodeDecodeError, AttributeError, TypeError, KeyError):
            # the SDK parses after verifying; JSON that is not an event object (a number, a
            # list) fails inside it with AttributeError/TypeError rather than ValueError
            raise WebhookRejected("body is not a JSON event") from None
        # The SDK only bounds the past; a timestamp far in the future is as suspect.
        stamp = _timestamp(signature)
        if stamp is None or stamp > time.time() + self.tolerance:
            raise WebhookRejected("signature timestamp is in the future")
        event_id, event_type = getattr(event, "id", None), getattr(event, "type", None)
        if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str):
            raise WebhookRejected("event has no id or type")
        if "\x00" in event_id or "\x00" in event_type or len(event_id) > 255 or len(event_type) > 255:
            raise WebhookRejected("event id or type is not storable")  # it would be retried for days
        payload = event.to_dict()
        return VerifiedEvent(event_id, event_type, payload)

    def map(self, event: VerifiedEvent) -> MappedCommand | None:
        """The billing command for a PaymentIntent event we created (it names its invoice in
        ``metadata.invoice_id``); None for anything else, whatever its shape."""
        obj = _dict(_dict(event.payload.get("data")).get("object"))
        invoice_id = _dict(obj.get("metadata")).get("invoice_id")
        if not isinstance(invoice_id, str) or not invoice_id or obj.get("object") != "payment_intent":
            return None
        if event.type == "payment_intent.succeeded":
            currency = str(obj.get("currency", "")).lower()
            minor = obj.get("amount_received") or obj.get("amount") or 0
            if not isinstance(minor, int):
                minor = 0  # the command will be rejected as invalid input, and audited
            data = {
                "invoiceId": invoice_id,
                "paymentIntentId": obj.get("id"),
                "amount": str(from_minor(minor, currency)),
                "currency": currency,
                "eventId": event.id,
            }
            return MappedCommand("billing.recordPayment", data, key=invoice_id)
        if event.type == "payment_intent.payment_failed":
            error = _dict(obj.get("last_payment_error"))
            data = {
                "invoiceId": invoice_id,
                "paymentIntentId": obj.get("id"),
                "eventId": event.id,
                "failureCode": error.get("decline_code") or error.get("code"),
                "failureMessage": error.get("message"),
            }
            return MappedCommand("billing.recordPaymentFailure", data, key=invoice_id)
        return None


def source_from(settings: Any) -> StripeWebhookSource | None:
    """Stripe's webhook source from ``OPRUNNER_STRIPE_WEBHOOK_SECRET``; None unset (the
    endpoint then answers 404)."""
    secret = settings.stripe_webhook_secret
    return StripeWebhookSource(secret.get_secret_value()) if secret is not None else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _timestamp(header: str) -> int | None:
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            try:
                return int(value)
            except ValueError:
                return None
    return None
