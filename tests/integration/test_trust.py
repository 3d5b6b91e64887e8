"""Trust boundaries, attacked as an outsider would: credentials lifted from the commands topic,
payment records forged with a valid service token, and the HTTP surface flooded by callers who
never authenticate. Against ``oprunner serve`` with Tansu, Postgres and the Stripe stand-in."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import orjson
import stripe

from tests.integration import test_payments
from tests.integration.test_payments import capture, event_body, invoice, post, results_for, sign
from tests.support import Reader, ServeProcess, Topics, auth, cloudevent, produce

# the payments suite's fixtures: the billing app served against the Stripe stand-in
billing = test_payments.billing
server = test_payments.server
stripe_client = test_payments.stripe_client


def record(invoice_id: str, pi: str, amount: str = "500.00", currency: str = "usd", **ext: Any) -> bytes:
    data = {
        "invoiceId": invoice_id,
        "paymentIntentId": pi,
        "amount": amount,
        "currency": currency,
        "eventId": f"evt_{uuid.uuid4().hex[:8]}",
    }
    return cloudevent("billing.recordPayment", data, **ext)


async def lifted_header(bootstrap: str, topic: str) -> tuple[bytes, dict[str, Any]]:
    """The ``authorization`` header and the command of the first webhook-made message."""
    async with Reader(bootstrap, topic) as reader:
        await reader.until(lambda ms: len(ms) >= 1, timeout=30)
    message = reader.messages[0]
    headers = dict(message.headers)
    return headers["authorization"], orjson.loads(message.value)


async def status_of(db: asyncpg.Pool, invoice_id: str) -> str:
    return str(await db.fetchval("SELECT status FROM billing_invoices WHERE id = $1", invoice_id))


async def test_a_token_lifted_from_the_topic_authorizes_nothing_else(
    server: ServeProcess, topics: Topics, kafka_bootstrap: str, billing: asyncpg.Pool
) -> None:
    mine = await invoice(billing, amount="25.00", currency="eur")
    theirs = await invoice(billing, owner="bob", amount="500.00", currency="usd")
    body = event_body(mine, pi="pi_made_up")
    assert (await post(server, body, sign(body))).status_code == 200
    header, sent = await lifted_header(kafka_bootstrap, topics.commands)
    assert header.startswith(b"Bearer ")
    # the credential names its one command: not a reusable service identity
    import jwt

    claims = jwt.decode(header[7:], options={"verify_signature": False})
    assert claims["cmd"] == sent["id"] and claims["ops"] == ["billing.recordPayment"]
    stolen = [("authorization", header)]
    forged_other = record(theirs, "pi_made_up_too", amount="0.01")
    same_id_other_data = cloudevent(
        "billing.recordPayment", {**sent["data"], "invoiceId": theirs}, id=sent["id"]
    )
    other_op = cloudevent("billing.refundPayment", {"invoiceId": theirs, "amount": "1.00"}, id=sent["id"])
    await produce(
        kafka_bootstrap,
        topics.commands,
        [(theirs.encode(), m, stolen) for m in (forged_other, same_id_other_data, other_op)],
    )
    ids = {orjson.loads(forged_other)["id"], sent["id"]}
    results = await results_for(kafka_bootstrap, topics.results, ids, n=4)
    [denied] = results[orjson.loads(forged_other)["id"]]
    assert denied["data"]["status"] == "denied"
    assert denied["data"]["error"]["code"] == "UNAUTHENTICATED"
    assert "another command" in denied["data"]["error"]["message"]
    statuses = sorted(e["data"]["status"] for e in results[sent["id"]])
    # the real webhook command ran (and failed: Stripe has no such PaymentIntent), the two
    # forgeries reusing its id were denied, whatever they carried
    assert statuses.count("denied") == 2, statuses
    assert await status_of(billing, theirs) == "open"
    # the denied attempts are audited with who tried, and not with what they sent
    async with Reader(kafka_bootstrap, topics.audit) as audit:
        await audit.until(lambda ms: len(ms) >= 4, timeout=30)
    for event in audit.events():
        if event["data"]["status"] == "denied":
            assert event["data"]["actor"]["id"] == "oprunner-webhooks"
            assert event["data"]["input"]["omitted"] is True and len(event["data"]["input"]["sha256"]) == 64


async def test_a_valid_service_token_cannot_mark_an_invoice_paid_that_stripe_did_not(
    server: ServeProcess,
    topics: Topics,
    kafka_bootstrap: str,
    billing: asyncpg.Pool,
    stripe_client: stripe.StripeClient,
) -> None:
    theirs = await invoice(billing, owner="bob", amount="500.00", currency="usd")
    other = await invoice(billing, owner="carol", amount="500.00", currency="usd")
    # a real, succeeded PaymentIntent of 0.01 USD that names the invoice in its metadata
    cheap = await stripe_client.v1.payment_intents.create_async(
        {
            "amount": 1,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
            "metadata": {"invoice_id": theirs},
        }
    )
    # and a real 500 USD one that belongs to another invoice
    elsewhere = await stripe_client.v1.payment_intents.create_async(
        {
            "amount": 50000,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
            "metadata": {"invoice_id": other},
        }
    )
    assert cheap.status == elsewhere.status == "succeeded"
    service = auth("billing-robot", kind="service")
    forgeries = {  # what the command claims -> the code and what the message must say
        record(theirs, "pi_does_not_exist"): ("PAYMENT_NOT_FOUND", "Stripe has no PaymentIntent"),
        record(theirs, cheap.id, amount="500.00"): ("PAYMENT_MISMATCH", "Stripe received 0.01 USD"),
        record(theirs, cheap.id, amount="0.01"): ("PAYMENT_MISMATCH", "Stripe received 0.01 USD"),
        record(theirs, elsewhere.id): ("PAYMENT_MISMATCH", f"does not belong to invoice {theirs}"),
    }
    await produce(kafka_bootstrap, topics.commands, [(theirs.encode(), m, service) for m in forgeries])
    ids = {orjson.loads(m)["id"]: expected for m, expected in forgeries.items()}
    results = await results_for(kafka_bootstrap, topics.results, set(ids))
    for command_id, (code, says) in ids.items():
        [result] = results[command_id]
        assert result["data"]["status"] == "failed", result
        assert result["data"]["error"]["code"] == code, result
        assert says in result["data"]["error"]["message"], result
    assert await status_of(billing, theirs) == "open"
    assert await billing.fetchval("SELECT count(*) FROM billing_payments WHERE invoice_id = $1", theirs) == 0
    # each refusal is in the audit table with its code
    codes = await billing.fetch(
        "SELECT data->>'error' AS code FROM oprunner_audit WHERE command_id = ANY($1::text[])", list(ids)
    )
    assert sorted(r["code"] for r in codes) == sorted(code for code, _ in ids.values())
    # the genuine payment, reported with a service token, is recorded from Stripe's figures
    genuine = await stripe_client.v1.payment_intents.create_async(
        {
            "amount": 50000,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
            "metadata": {"invoice_id": theirs},
        }
    )
    real = record(theirs, genuine.id)
    await produce(kafka_bootstrap, topics.commands, [(theirs.encode(), real, service)])
    [ok] = (await results_for(kafka_bootstrap, topics.results, {orjson.loads(real)["id"]}))[
        orjson.loads(real)["id"]
    ]
    assert ok["data"]["status"] == "succeeded", ok["data"]
    assert ok["data"]["output"]["changed"] is True
    assert await status_of(billing, theirs) == "paid"


async def test_a_token_restricted_to_operations_runs_only_those(
    server: ServeProcess, topics: Topics, kafka_bootstrap: str, billing: asyncpg.Pool
) -> None:
    inv = await invoice(billing)
    narrow = auth("alice", ops=["billing.refundPayment"])
    command = capture(inv, id=f"narrow-{inv}")
    await produce(kafka_bootstrap, topics.commands, [(inv.encode(), command, narrow)])
    [result] = (await results_for(kafka_bootstrap, topics.results, {f"narrow-{inv}"}))[f"narrow-{inv}"]
    assert result["data"]["status"] == "denied"
    assert result["data"]["error"]["code"] == "FORBIDDEN"
    assert "billing.refundPayment" in result["data"]["error"]["message"]


async def _size(db: asyncpg.Pool, table: str) -> int:
    """Bytes on disk, a partitioned table's partitions included."""
    return int(
        await db.fetchval(
            """SELECT sum(pg_total_relation_size(r)) FROM (
                   SELECT $1::regclass AS r UNION ALL
                   SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = $1::regclass) parts""",
            table,
        )
    )


async def _rows(db: asyncpg.Pool, table: str) -> int:
    return int(await db.fetchval(f"SELECT count(*) FROM {table}"))


async def test_unauthenticated_floods_leave_bounded_storage(
    server: ServeProcess, topics: Topics, kafka_bootstrap: str, billing: asyncpg.Pool
) -> None:
    inv = await invoice(billing)
    before = {
        t: (await _rows(billing, t), await _size(billing, t))
        for t in ("oprunner_webhook_inbox", "oprunner_audit")
    }
    padding = "x" * 60_000
    limits = httpx.Limits(max_connections=8)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
        gate = asyncio.Semaphore(8)

        async def unsigned(i: int) -> int:
            body = event_body(inv, event_id=f"evt_flood_{i}")
            async with gate:
                r = await client.post(
                    "/webhooks/stripe", content=body, headers={"stripe-signature": "t=1,v1=00"}
                )
            return r.status_code

        async def anonymous(i: int) -> int:
            data = {"invoiceId": inv, "amount": "25.00", "currency": "EUR", "paymentMethodId": padding}
            async with gate:
                r = await client.post(
                    "/ops/billing.capturePayment", json=data, headers={"Idempotency-Key": f"k{i}"}
                )
            return r.status_code

        hooks = await asyncio.gather(*(unsigned(i) for i in range(1000)))
        posts = await asyncio.gather(*(anonymous(i) for i in range(1000)))
    assert set(hooks) == {400}, set(hooks)
    assert set(posts) <= {400, 401}, set(posts)  # invalid or unauthenticated: never run
    inbox_rows, _ = before["oprunner_webhook_inbox"]
    assert await _rows(billing, "oprunner_webhook_inbox") == inbox_rows  # nothing kept of forgeries
    audit_rows, audit_bytes = before["oprunner_audit"]
    grown = await _size(billing, "oprunner_audit") - audit_bytes
    added = await _rows(billing, "oprunner_audit") - audit_rows
    assert added == 1000  # every decision audited...
    assert grown < 1000 * 2048, grown  # ...in under 2 KiB each, though each sent 60 KB
    leaked = await billing.fetchval(
        "SELECT count(*) FROM oprunner_audit WHERE data::text LIKE '%xxxxxxxxxx%'"
    )
    assert leaked == 0
    async with httpx.AsyncClient(base_url=server.url) as client:
        metrics = (await client.get("/metrics")).text
    assert 'oprunner_webhook_deliveries_total{outcome="rejected",provider="stripe"} 1000.0' in metrics


async def test_runs_are_shown_to_their_actor_their_tenants_admin_and_one_command_tokens_only_theirs(
    server: ServeProcess, topics: Topics, kafka_bootstrap: str, billing: asyncpg.Pool
) -> None:
    from tests.support import token

    first, second = await invoice(billing), await invoice(billing, owner="bob")
    for inv in (first, second):
        body = event_body(inv, event_id=f"evt_{inv}")
        assert (await post(server, body, sign(body))).status_code == 200
    await results_for(kafka_bootstrap, topics.results, {f"stripe:evt_{first}", f"stripe:evt_{second}"})
    async with Reader(kafka_bootstrap, topics.commands) as reader:
        await reader.until(lambda ms: len(ms) >= 2, timeout=30)
    lifted = {orjson.loads(m.value)["id"]: dict(m.headers)["authorization"].decode() for m in reader.messages}
    mine = f"stripe:evt_{first}"
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:

        async def status(run: str, bearer: str) -> int:
            r = await http.get(f"/ops/runs/{run}", headers={"authorization": bearer})
            return r.status_code

        assert await status(mine, lifted[mine]) == 200  # its own command's run
        assert await status(f"stripe:evt_{second}", lifted[mine]) == 404  # not another's
        capture_id = f"admin-view-{first}"
        done = await http.post(
            "/ops/billing.capturePayment",
            json={
                "invoiceId": first,
                "amount": "25.00",
                "currency": "EUR",
                "paymentMethodId": "pm_card_visa",
            },
            headers={"authorization": f"Bearer {token('alice', tenant='t1')}", "Idempotency-Key": capture_id},
        )
        run = done.json()["commandId"]
        assert await status(run, f"Bearer {token('alice', tenant='t1')}") == 200
        assert await status(run, f"Bearer {token('alice', tenant='t2')}") == 404  # same sub, other tenant
        assert await status(run, f"Bearer {token('ops', tenant='t1', kind='admin')}") == 200
        assert await status(run, f"Bearer {token('ops', tenant='t2', kind='admin')}") == 404
        assert await status(run, f"Bearer {token('root', kind='admin')}") == 200  # a global operator
