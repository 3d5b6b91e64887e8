"""The bundled billing app: ``handlers:app`` is what ``oprunner serve`` runs by default
(``handlers:registry`` names the same app).

Each operation is a spec (``specs/billing/...``), a handler beside it here, and one
``install_op`` line below. The ``App`` at the end declares the rest: the billing tables
(``handlers/migrations``), the Stripe client handlers reach as ``ctx.stripe`` and the Stripe
webhook source (both from ``OPRUNNER_STRIPE_*``), and the invoices ``oprunner dev`` starts with.
"""

from decimal import Decimal
from typing import Any

from infra import stripe as stripe_infra
from infra.stripe_webhooks import source_from
from runner import App, OperationRegistry, PolicyContext, install_op
from specs.billing import CapturePayment, RecordPayment, RecordPaymentFailure, RefundPayment

from .billing.capture_payment import capture_payment
from .billing.record_payment import record_payment, record_payment_failure
from .billing.refund_payment import refund_payment

registry = OperationRegistry()
install_op(registry, CapturePayment, capture_payment)
install_op(registry, RefundPayment, refund_payment)
install_op(registry, RecordPayment, record_payment)
install_op(registry, RecordPaymentFailure, record_payment_failure)


@registry.resource("invoice")
async def load_invoice(invoice_id: str, ctx: PolicyContext) -> Any:
    """Who owns an invoice, for the ``owner`` and ``tenant`` rules."""
    return await ctx.db.fetchrow("SELECT owner_id, tenant_id FROM billing_invoices WHERE id = $1", invoice_id)


DEV_INVOICES = [  # id, owner, tenant, amount, currency: what `oprunner dev` and its demo use
    ("inv_demo_paid", "alice", "acme", "25.00", "eur"),
    ("inv_demo_bob", "bob", "acme", "10.00", "eur"),
    ("inv_demo_decline", "alice", "acme", "12.00", "eur"),
    ("inv_demo_webhook", "alice", "acme", "30.00", "usd"),
]


async def seed(pool: Any) -> None:
    await pool.executemany(
        """INSERT INTO billing_invoices (id, owner_id, tenant_id, amount, currency)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING""",
        [(i, o, t, Decimal(a), c) for i, o, t, a, c in DEV_INVOICES],
    )


app = App(
    registry=registry,
    name="billing",
    migrations="handlers.migrations",
    clients={"stripe": stripe_infra.client_from},
    transient_errors=stripe_infra.TRANSIENT_ERRORS,
    webhooks={"stripe": source_from},
    seed=seed,
)
