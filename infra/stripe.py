"""The Stripe client from settings, and money in Stripe's minor units."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import stripe

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    stripe.APIConnectionError,
    stripe.RateLimitError,
    stripe.APIError,  # Stripe's own trouble (5xx); 4xx errors are other classes
)
"""Stripe errors after which the same request (same idempotency key) may succeed."""

ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())


def make_client(api_key: str, *, api_base: str | None = None, timeout: float = 20.0) -> stripe.StripeClient:
    """An async-capable client. Network retries are off: the executor retries the whole
    attempt with the same idempotency keys, so one policy governs every retry."""
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base} if api_base else None,
        http_client=stripe.HTTPXClient(timeout=timeout),
        max_network_retries=0,
    )


def client_from(settings: Any) -> stripe.StripeClient | None:
    """The app's Stripe client from ``OPRUNNER_STRIPE_API_KEY`` / ``_API_BASE``; None unset."""
    if settings.stripe_api_key is None:
        return None
    return make_client(settings.stripe_api_key.get_secret_value(), api_base=settings.stripe_api_base)


def to_minor(amount: Decimal, currency: str) -> int:
    """``Decimal("12.34"), "usd"`` -> ``1234``; refuses amounts finer than the currency allows."""
    exponent = 0 if currency in ZERO_DECIMAL else 3 if currency in THREE_DECIMAL else 2
    minor = amount.scaleb(exponent)
    if minor != minor.to_integral_value():
        raise ValueError(f"{amount} {currency.upper()} has more than {exponent} decimal places")
    return int(minor)


def from_minor(minor: int, currency: str) -> Decimal:
    exponent = 0 if currency in ZERO_DECIMAL else 3 if currency in THREE_DECIMAL else 2
    return Decimal(minor).scaleb(-exponent)
