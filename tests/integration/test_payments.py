"""Payments for real: ``oprunner serve`` (the bundled billing app) against localstripe, Tansu
and Postgres; commands from a plain aiokafka producer, webhooks signed as Stripe signs them."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import stripe

from handlers import load_invoice
from handlers.billing.capture_payment import capture_payment
from infra.postgres import PostgresStore
from infra.stripe import TRANSIENT_ERRORS, make_client
from runner import Executor, JwtAuthenticator, OperationRegistry, install_op
from specs.billing import CapturePayment
from tests.support import SECRET, Reader, ServeProcess, Topics, auth, cloudevent, produce, token

WEBHOOK_SECRET = "whsec_test_" + "s" * 24
API_KEY = "sk_test_oprunner"


@pytest.fixture
async def billing(clean_db: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    await clean_db.execute("TRUNCATE billing_refunds, billing_payments, billing_invoices")
    yield clean_db


async def invoice(
    db: asyncpg.Pool, owner: str = "alice", amount: str = "25.00", currency: str = "eur"
) -> str:
    invoice_id = f"inv_{uuid.uuid4().hex[:10]}"
    await db.execute(
        """INSERT INTO billing_invoices (id, owner_id, tenant_id, amount, currency)
           VALUES ($1, $2, 't1', $3, $4)""",
        invoice_id,
        owner,
        Decimal(amount),
        currency,
    )
    return invoice_id


@pytest.fixture
async def stripe_client(stripe_url: str) -> stripe.StripeClient:
    return make_client(API_KEY, api_base=stripe_url)


async def intents_for(client: stripe.StripeClient, invoice_id: str) -> list[Any]:
    """Every PaymentIntent of the invoice, over all pages (a session makes more than one)."""
    listed = await client.v1.payment_intents.list_async({"limit": 100})
    return [
        pi async for pi in listed.auto_paging_iter() if pi.metadata.to_dict().get("invoice_id") == invoice_id
    ]


@pytest.fixture
def server(topics: Topics, database_url: str, stripe_url: str, billing: Any, serving: Any) -> ServeProcess:
    return serving(
        topics,
        database_url,
        app="handlers:registry",
        OPRUNNER_STRIPE_API_KEY=API_KEY,
        OPRUNNER_STRIPE_API_BASE=stripe_url,
        OPRUNNER_STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )


def capture(
    invoice_id: str, amount: str = "25.00", currency: str = "EUR", pm: str = "pm_card_visa", **ext: Any
) -> bytes:
    data = {"invoiceId": invoice_id, "amount": amount, "currency": currency, "paymentMethodId": pm}
    return cloudevent("billing.capturePayment", data, **ext)


async def results_for(
    bootstrap: str, topic: str, ids: set[str], n: int | None = None
) -> dict[str, list[dict[str, Any]]]:
    async with Reader(bootstrap, topic) as reader:

        def enough(messages: list[Any]) -> bool:
            causes = [orjson.loads(m.value)["causationid"] for m in messages]
            return set(causes) >= ids and (n is None or len([c for c in causes if c in ids]) >= n)

        await reader.until(enough, timeout=45)
    grouped: dict[str, list[dict[str, Any]]] = {}
    for event in reader.events():
        grouped.setdefault(event["causationid"], []).append(event)
    return grouped


async def test_capture_succeeds_and_the_invoice_is_paid(
    server: ServeProcess,
    topics: Topics,
    kafka_bootstrap: str,
    billing: asyncpg.Pool,
    stripe_client: stripe.StripeClient,
) -> None:
    inv = await invoice(billing)
    await produce(kafka_bootstrap, topics.commands, [(inv.encode(), capture(inv, id=f"cap-{inv}"), auth())])
    [result] = (await results_for(kafka_bootstrap, topics.results, {f"cap-{inv}"}))[f"cap-{inv}"]
    assert result["data"]["status"] == "succeeded", result
    output = result["data"]["output"]
    assert output["status"] == "succeeded" and output["transactionId"].startswith("pi_")
    assert "receiptUrl" not in output  # localstripe has none: absent, not null
    row = await billing.fetchrow("SELECT status, transaction_id FROM billing_invoices WHERE id = $1", inv)
    assert row["status"] == "paid" and row["transaction_id"] == output["transactionId"]
    [pi] = await intents_for(stripe_client, inv)
    assert pi.amount == 2500 and pi.currency == "eur"


async def test_declined_card_fails_and_the_invoice_stays_unpaid(
    server: ServeProcess, topics: Topics, kafka_bootstrap: str, billing: asyncpg.Pool
) -> None:
    inv = await invoice(billing)
    await produce(
        kafka_bootstrap,
        topics.commands,
        [(inv.encode(), capture(inv, pm="pm_card_chargeCustomerFail", id=f"dec-{inv}"), auth())],
    )
    [result] = (await results_for(kafka_bootstrap, topics.results, {f"dec-{inv}"}))[f"dec-{inv}"]
    assert result["data"]["status"] == "failed"
    assert result["data"]["error"]["code"] == "CARD_DECLINED"
    assert result["data"]["error"]["details"]["declineCode"] == "card_declined"
    assert await billing.fetchval("SELECT status FROM billing_invoices WHERE id = $1", inv) == "open"


async def test_the_same_command_three_times_creates_one_payment_intent(
    server: ServeProcess,
    topics: Topics,
    kafka_bootstrap: str,
    billing: asyncpg.Pool,
    stripe_client: stripe.StripeClient,
) -> None:
    inv = await invoice(billing)
    message = (inv.encode(), capture(inv, id=f"same-{inv}"), auth())
    await produce(kafka_bootstrap, topics.commands, [message, message, message])
    grouped = await results_for(kafka_bootstrap, topics.results, {f"same-{inv}"}, n=3)
    assert [r["data"]["status"] for r in grouped[f"same-{inv}"]] == ["succeeded"] * 3
    assert len(await intents_for(stripe_client, inv)) == 1


async def test_someone_elses_invoice_is_denied_and_stripe_is_never_called(
    server: ServeProcess,
    topics: Topics,
    kafka_bootstrap: str,
    billing: asyncpg.Pool,
    stripe_client: stripe.StripeClient,
) -> None:
    inv = await invoice(billing, owner="bob")
    await produce(
        kafka_bootstrap, topics.commands, [(inv.encode(), capture(inv, id=f"deny-{inv}"), auth("alice"))]
    )
    [result] = (await results_for(kafka_bootstrap, topics.results, {f"deny-{inv}"}))[f"deny-{inv}"]
    assert result["data"]["status"] == "denied" and result["data"]["error"]["code"] == "FORBIDDEN"
    assert await intents_for(stripe_client, inv) == []


async def test_domain_failures_and_refunds(
    server: ServeProcess, topics: Topics, kafka_bootstrap: str, billing: asyncpg.Pool
) -> None:
    paid = await invoice(billing, amount="40.00")
    await produce(
        kafka_bootstrap, topics.commands, [(paid.encode(), capture(paid, "40.00", id="pay-r"), auth())]
    )
    await results_for(kafka_bootstrap, topics.results, {"pay-r"})
    refund = lambda amount, id: cloudevent(  # noqa: E731
        "billing.refundPayment", {"invoiceId": paid, **({"amount": amount} if amount else {})}, id=id
    )
    await produce(
        kafka_bootstrap,
        topics.commands,
        [
            (paid.encode(), capture(paid, "40.00", id="again"), auth()),
            (b"nope", capture("inv_missing", id="missing"), auth()),
            (paid.encode(), refund("50", "too-much"), auth()),
            (paid.encode(), refund("15", "partial"), auth()),
            (paid.encode(), refund(None, "rest"), auth("root", kind="admin")),
            (paid.encode(), refund("1", "after-full"), auth()),
        ],
    )
    ids = {"again", "missing", "too-much", "partial", "rest", "after-full"}
    grouped = await results_for(kafka_bootstrap, topics.results, ids)
    got = {
        k: (v[0]["data"]["status"], (v[0]["data"].get("error") or {}).get("code"))
        for k, v in grouped.items()
        if k in ids
    }
    assert got == {
        "again": ("failed", "ALREADY_PAID"),
        "missing": ("failed", "INVOICE_NOT_FOUND"),
        "too-much": ("failed", "REFUND_EXCEEDS_PAYMENT"),
        "partial": ("succeeded", None),
        "rest": ("succeeded", None),
        "after-full": ("failed", "REFUND_EXCEEDS_PAYMENT"),
    }
    assert grouped["rest"][0]["data"]["output"]["amount"] == "25.00"
    row = await billing.fetchrow("SELECT status, amount_refunded FROM billing_invoices WHERE id = $1", paid)
    assert row["status"] == "refunded" and row["amount_refunded"] == Decimal("40.00")


async def test_crash_after_stripe_answered_then_retry_leaves_one_payment_intent(
    billing: asyncpg.Pool, stripe_client: stripe.StripeClient
) -> None:
    """The handler's transaction dies after Stripe charged (as a crash before commit would);
    the retry reaches Stripe with the same idempotency keys and finds the same PaymentIntent."""
    crashes = {"left": 1}

    async def crash_before_commit(value: Any, ctx: Any) -> Any:
        output = await capture_payment(value, ctx)
        if crashes["left"]:
            crashes["left"] -= 1
            raise ConnectionError("connection lost before commit")
        return output

    registry = OperationRegistry()
    install_op(registry, CapturePayment, crash_before_commit)
    registry.add_resource("invoice", load_invoice)
    executor = Executor(
        registry,
        PostgresStore(billing),
        JwtAuthenticator(secret=SECRET),
        clients={"stripe": stripe_client},
        transient_errors=TRANSIENT_ERRORS,
    )
    inv = await invoice(billing)
    outcome = await executor.execute(capture(inv, id=f"crash-{inv}"), token=token("alice", tenant="t1"))
    assert outcome.status == "succeeded" and outcome.audit["data"]["attempt"] == 2
    assert crashes["left"] == 0
    assert len(await intents_for(stripe_client, inv)) == 1
    assert await billing.fetchval("SELECT count(*) FROM billing_payments WHERE invoice_id = $1", inv) == 1
    assert await billing.fetchval("SELECT status FROM billing_invoices WHERE id = $1", inv) == "paid"


# -- webhooks -------------------------------------------------------------------------------


def sign(body: bytes, secret: str = WEBHOOK_SECRET, at: int | None = None) -> str:
    stamp = int(time.time()) if at is None else at
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def event_body(invoice_id: str, *, event_id: str | None = None, pi: str = "pi_external") -> bytes:
    return orjson.dumps(
        {
            "id": event_id or f"evt_{uuid.uuid4().hex[:12]}",
            "object": "event",
            "type": "payment_intent.succeeded",
            "data": {
                "object": {
                    "id": pi,
                    "object": "payment_intent",
                    "amount": 2500,
                    "amount_received": 2500,
                    "currency": "eur",
                    "metadata": {"invoice_id": invoice_id},
                }
            },
        }
    )


async def post(server: ServeProcess, body: bytes, signature: str | None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if signature is not None:
        headers["stripe-signature"] = signature
    async with httpx.AsyncClient() as client:
        return await client.post(f"{server.url}/webhooks/stripe", content=body, headers=headers, timeout=20)


async def test_webhook_from_localstripe_becomes_a_record_payment_result(
    server: ServeProcess, topics: Topics, kafka_bootstrap: str, billing: asyncpg.Pool, stripe_url: str
) -> None:
    async with httpx.AsyncClient() as client:
        hook = await client.post(
            f"{stripe_url}/_config/webhooks/{topics.suffix}",
            data={
                "url": f"{server.url}/webhooks/stripe",
                "secret": WEBHOOK_SECRET,
                "events[]": "payment_intent.succeeded",
            },
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert hook.status_code == 200, hook.text
    inv = await invoice(billing)
    await produce(
        kafka_bootstrap, topics.commands, [(inv.encode(), capture(inv, id=f"hooked-{inv}"), auth())]
    )
    async with Reader(kafka_bootstrap, topics.results) as reader:
        await reader.until(
            lambda ms: any(orjson.loads(m.value)["type"] == "billing.recordPayment.result" for m in ms),
            timeout=45,
        )
    [recorded] = [e for e in reader.events() if e["type"] == "billing.recordPayment.result"]
    assert recorded["data"]["status"] == "succeeded"
    assert recorded["idempotencykey"].startswith("stripe:evt_")
    assert recorded["data"]["output"]["invoiceId"] == inv


async def test_webhook_replay_forgery_and_limits(
    server: ServeProcess, topics: Topics, kafka_bootstrap: str, billing: asyncpg.Pool
) -> None:
    inv = await invoice(billing)
    body = event_body(inv, event_id="evt_replayed")
    first = await post(server, body, sign(body))
    assert first.status_code == 200 and first.json()["command"] == "billing.recordPayment"
    again = await post(server, body, sign(body))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    forged = await post(server, event_body(inv), sign(event_body(inv), secret="whsec_wrong"))
    assert forged.status_code == 400 and "signature" in forged.json()["error"]
    assert (await post(server, body, None)).status_code == 400
    future = await post(server, event_body(inv), sign(event_body(inv), at=int(time.time()) + 3600))
    assert future.status_code == 400
    past = await post(server, event_body(inv), sign(event_body(inv), at=int(time.time()) - 3600))
    assert past.status_code == 400
    not_json = b"{not json"
    assert (await post(server, not_json, sign(not_json))).status_code == 400
    huge = b"x" * (1024 * 1024 + 1)
    assert (await post(server, huge, sign(huge))).status_code == 413
    many = ",".join([f"t={int(time.time())}"] + ["v1=" + "0" * 64] * 1000)
    assert (await post(server, body, many)).status_code == 400
    # exactly one command was published for all of that, and it ran once
    async with Reader(kafka_bootstrap, topics.results) as reader:
        await reader.until(lambda ms: len(ms) >= 1, timeout=30)
    async with Reader(kafka_bootstrap, topics.commands) as commands:
        await commands.until(lambda ms: len(ms) >= 1, timeout=10)
    assert len(commands.messages) == 1 and commands.messages[0].key == inv.encode()
    assert (
        await billing.fetchval(
            "SELECT count(*) FROM oprunner_webhook_inbox WHERE verified AND event_id = 'evt_replayed'"
        )
        == 1
    )
    assert await billing.fetchval("SELECT count(*) FROM oprunner_webhook_inbox WHERE NOT verified") == 0
