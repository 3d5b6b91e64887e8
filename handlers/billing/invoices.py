"""Invoice writes shared by the billing handlers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal


async def mark_paid(
    db: Any,
    invoice_id: str,
    payment_intent_id: str,
    amount: Decimal,
    currency: str,
    source: Literal["capture", "webhook"],
) -> None:
    """Mark the invoice paid by this PaymentIntent and record the payment (once per intent:
    a capture and the webhook reporting the same payment record it once)."""
    await db.execute(
        """UPDATE billing_invoices
           SET status = 'paid', paid_at = now(), transaction_id = $2, last_failure = NULL
           WHERE id = $1""",
        invoice_id,
        payment_intent_id,
    )
    await db.execute(
        """INSERT INTO billing_payments (invoice_id, payment_intent_id, amount, currency, status, source)
           VALUES ($1, $2, $3, $4, 'succeeded', $5) ON CONFLICT (payment_intent_id) DO NOTHING""",
        invoice_id,
        payment_intent_id,
        amount,
        currency,
        source,
    )
