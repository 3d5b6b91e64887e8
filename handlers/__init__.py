"""The bundled billing app: ``handlers:registry`` is what ``oprunner serve`` runs by default.

Each operation is a spec (``specs/billing/...``), a handler beside it here, and one
``install_op`` line below. Handlers reach Stripe as ``ctx.stripe`` (configured from
``OPRUNNER_STRIPE_*`` by ``serve``).
"""

from typing import Any

from runner import OperationRegistry, PolicyContext, install_op
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
