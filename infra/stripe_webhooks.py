"""Stripe as a ``WebhookSource``: the header's shape and age checked here, the match by the
stripe SDK, the body parsed here; event types map to billing commands."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

import orjson
import stripe

from infra.stripe import from_minor
from runner.webhooks import MappedCommand, VerifiedEvent, WebhookRejected

TOLERANCE = 300
MAX_SIGNATURE_HEADER = 8192
MALFORMED_SIGNATURE = "Stripe-Signature header is not 't=<seconds>,v1=<hex>[,...]'"
NO_MATCHING_SIGNATURE = "signature verification failed: no v1 signature matches"
_ITEM = re.compile(r"([a-z0-9]{1,8})=([^,=]+)")
_V1 = re.compile(r"[0-9a-f]{64}")
_SECONDS = re.compile(r"[0-9]{1,20}")


class StripeWebhookSource:
    name = "stripe"

    def __init__(self, secret: str, *, tolerance: int = TOLERANCE) -> None:
        self.secret = secret
        self.tolerance = tolerance

    def verify(self, body: bytes, headers: Mapping[str, str]) -> VerifiedEvent:
        """Every rejection's reason is decided here, before the SDK is asked anything: the SDK
        only says whether a ``v1`` signature matches (its own wording and its handling of odd
        headers and bodies change between releases; a 400's reason must not)."""
        signature = headers.get("stripe-signature")
        if not signature or not signature.strip():
            raise WebhookRejected("missing Stripe-Signature header")
        if len(signature) > MAX_SIGNATURE_HEADER:
            raise WebhookRejected("Stripe-Signature header too long")
        parsed = parse_signature(signature)
        if parsed is None:
            raise WebhookRejected(MALFORMED_SIGNATURE)
        stamp, v1s = parsed
        if stamp < time.time() - self.tolerance:
            raise WebhookRejected(f"signature timestamp is more than {self.tolerance} s old")
        if stamp > time.time() + self.tolerance:  # the SDK only bounds the past
            raise WebhookRejected("signature timestamp is in the future")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise WebhookRejected("body is not a JSON event") from None
        try:
            # the header as parsed here, so that the SDK's own parsing cannot disagree with it
            checked = ",".join([f"t={stamp}", *(f"v1={v1}" for v1 in v1s)])
            stripe.WebhookSignature.verify_header(text, checked, self.secret, tolerance=None)
        except Exception:  # SignatureVerificationError, or whatever a release raises instead
            raise WebhookRejected(NO_MATCHING_SIGNATURE) from None
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise WebhookRejected("body is not a JSON event") from None
        if not isinstance(event, dict):
            raise WebhookRejected("body is not a JSON event")
        event_id, event_type = event.get("id"), event.get("type")
        if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str):
            raise WebhookRejected("event has no id or type")
        if "\x00" in event_id or "\x00" in event_type or len(event_id) > 255 or len(event_type) > 255:
            raise WebhookRejected("event id or type is not storable")  # it would be retried for days
        return VerifiedEvent(event_id, event_type, event)

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
    value = secret.get_secret_value().strip() if secret is not None else ""
    return StripeWebhookSource(value) if value else None  # set but blank: unset, not a forgery


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parse_signature(header: str) -> tuple[int, list[str]] | None:
    """The ``t`` and the ``v1`` signatures of a well-formed ``Stripe-Signature`` header, or
    None when it is not one: ``name=value`` items split by commas (blanks around an item
    allowed), exactly one ``t`` (whole seconds) and at least one ``v1`` (an HMAC-SHA256 in
    lowercase hex); other schemes (``v0``) are allowed and ignored."""
    stamps: list[str] = []
    v1s: list[str] = []
    for part in header.strip().split(","):
        item = _ITEM.fullmatch(part.strip())
        if item is None:
            return None
        name, value = item.groups()
        if name == "t":
            stamps.append(value)
        elif name == "v1":
            if not _V1.fullmatch(value):
                return None
            v1s.append(value)
    if len(stamps) != 1 or not v1s or not _SECONDS.fullmatch(stamps[0]):
        return None
    return int(stamps[0]), v1s
