"""Crash and restart: the runner keeps working and loses nothing.

Each test ends with the same ledger check: every command has a result, every effect happened
exactly once. The CI profile is smaller than the full one (``--chaos-full``).
Each test runs its own Postgres (or Stripe stand-in) so it can stop it without harming
other tests.
"""

from __future__ import annotations

import asyncio
import random
import time
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest

from infra.devservices import (
    Broker,
    ObjectStore,
    Postgres,
    StripeStandIn,
)
from infra.postgres import connect_pool
from tests.support import (
    Reader,
    ServeProcess,
    Topics,
    auth,
    caused,
    cloudevent,
    ledger_check,
    produce,
    store_state,
)


def credit_stream(
    prefix: str, n: int, accounts: int = 100
) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    headers = auth()
    return [
        (
            f"acc-{i % accounts}".encode(),
            cloudevent(
                "ledger.credit", {"accountId": f"acc-{i % accounts}", "amount": "1"}, id=f"{prefix}-{i}"
            ),
            headers,
        )
        for i in range(n)
    ]


@pytest.mark.sigkills_a_member
async def test_five_sigkills_across_two_processes(
    kafka_bootstrap: str, own_postgres: tuple[Postgres, asyncpg.Pool], serving: Any, chaos_full: bool
) -> None:
    server, db = own_postgres
    total, kills = (10_000, 5) if chaos_full else (3_000, 3)
    topics = Topics()
    await topics.create(kafka_bootstrap)
    procs = [serving(topics, server.dsn), serving(topics, server.dsn)]
    ids = {f"k-{i}" for i in range(total)}
    await produce(kafka_bootstrap, topics.commands, credit_stream("k", total))
    rng = random.Random(7)
    async with Reader(kafka_bootstrap, topics.results) as results:
        for kill in range(kills):
            target = len(ids) * (kill + 1) // (kills + 2)
            await results.until(lambda ms, t=target: len(caused(ms)) >= t, timeout=180)
            victim = rng.randrange(len(procs))
            procs[victim].signal(9)
            procs[victim].wait(10)
            procs[victim] = serving(topics, server.dsn, wait=False)
        await results.until(lambda ms: caused(ms) >= ids, timeout=300)
    await ledger_check(db, results, ids)


async def test_postgres_down_for_a_while_mid_stream(
    kafka_bootstrap: str, own_postgres: tuple[Postgres, asyncpg.Pool], serving: Any, chaos_full: bool
) -> None:
    server, db = own_postgres
    total, outage = (5_000, 10.0) if chaos_full else (1_500, 4.0)
    topics = Topics()
    await topics.create(kafka_bootstrap)
    proc = serving(topics, server.dsn)
    ids = {f"p-{i}" for i in range(total)}
    await produce(kafka_bootstrap, topics.commands, credit_stream("p", total))
    async with (
        Reader(kafka_bootstrap, topics.results) as results,
        httpx.AsyncClient(base_url=proc.url) as http,
    ):
        await results.until(lambda ms: len(ms) >= total // 5, timeout=120)
        server.stop(remove=False)
        deadline = time.monotonic() + 30
        while (await http.get("/readyz", timeout=10)).status_code != 503:
            assert time.monotonic() < deadline, "readyz never said not ready"
            await asyncio.sleep(0.1)
        answered_during = len(results.messages)
        await asyncio.sleep(outage)  # the outage itself: the scenario, not a wait for readiness
        await results.until(lambda ms: True, timeout=1)
        assert len(results.messages) - answered_during < 300  # at most what was already committed
        server.start_existing()
        assert proc.proc is not None and proc.proc.poll() is None, "serve died during the outage"
        await results.until(lambda ms: caused(ms) >= ids, timeout=240)
        deadline = time.monotonic() + 30
        while (await http.get("/readyz", timeout=10)).status_code != 200:
            assert time.monotonic() < deadline, "readyz never recovered"
            await asyncio.sleep(0.1)
    await db.close()
    fresh = await connect_pool(server.dsn, min_size=1, max_size=2)
    try:
        await ledger_check(fresh, results, ids)
    finally:
        await fresh.close()


@pytest.fixture
async def billing_db(clean_db: asyncpg.Pool) -> asyncpg.Pool:
    await clean_db.execute("TRUNCATE billing_refunds, billing_payments, billing_invoices")
    return clean_db


async def test_stripe_down_during_captures_then_back(
    kafka_bootstrap: str, database_url: str, billing_db: asyncpg.Pool, serving: Any, chaos_full: bool
) -> None:
    from infra.stripe import make_client
    from tests.integration.test_payments import API_KEY, capture, intents_for

    stripe = StripeStandIn().start()
    try:
        topics = Topics()
        await topics.create(kafka_bootstrap)
        count = 10 if chaos_full else 4
        invoices = [f"inv_chaos_{i}_{topics.suffix}" for i in range(count)]
        await billing_db.executemany(
            """INSERT INTO billing_invoices (id, owner_id, tenant_id, amount, currency)
               VALUES ($1, 'alice', 't1', $2, 'eur')""",
            [(inv, Decimal("25.00")) for inv in invoices],
        )
        proc = serving(
            topics,
            database_url,
            app="handlers:registry",
            wait=False,
            OPRUNNER_STRIPE_API_KEY=API_KEY,
            OPRUNNER_STRIPE_API_BASE=stripe.url,
        )
        try:
            proc.wait_serving()
            stripe.stop()
            await produce(
                kafka_bootstrap,
                topics.commands,
                [(inv.encode(), capture(inv, id=f"cap-{inv}"), auth()) for inv in invoices],
            )
            await asyncio.sleep(3.0)  # the outage: captures are failing and retrying meanwhile
            stripe.start()
            ids = {f"cap-{inv}" for inv in invoices}
            async with Reader(kafka_bootstrap, topics.results) as results:
                await results.until(lambda ms: caused(ms) >= ids, timeout=120)
            statuses = {e["causationid"]: e["data"]["status"] for e in results.events()}
            assert all(statuses[i] == "succeeded" for i in ids), statuses
            client = make_client(API_KEY, api_base=stripe.url)
            for inv in invoices:
                assert len(await intents_for(client, inv)) == 1
            paid = await billing_db.fetchval(
                "SELECT count(*) FROM billing_invoices WHERE id = ANY($1) AND status = 'paid'", invoices
            )
            assert paid == count
        finally:
            proc.stop()
    finally:
        stripe.stop()


async def test_broker_restarted_mid_stream(
    own_postgres: tuple[Postgres, asyncpg.Pool], serving: Any, chaos_full: bool
) -> None:
    """Tansu SIGKILLed mid-stream and started again on its data, kept on S3 (a local moto
    server); ``serve`` reconnects by itself. Tansu whatever ``OPRUNNER_DEV_BROKER`` says:
    noida-db 0.2.3 loses writes it acknowledged when it is killed (228 of 1,500 results gone
    after a SIGKILL, with every outbox row published), so on it no runner could pass this.

    Fetches wait Kafka's default 500 ms here: at 5 ms, every empty fetch from Tansu is a round
    of S3 requests, the single-threaded S3 stand-in saturates a core and the broker answers
    nothing (0 results in 120 s, every run)."""
    server, db = own_postgres
    total, down = (5_000, 5.0) if chaos_full else (1_500, 2.0)
    store = ObjectStore().start()
    broker = Broker(storage=f"s3://{store.bucket}/", env=store.broker_env()).start()
    proc: ServeProcess | None = None
    try:
        topics = Topics()
        await topics.create(broker.bootstrap)
        proc = serving(
            topics,
            server.dsn,
            bootstrap=broker.bootstrap,
            OPRUNNER_FETCH_MAX_WAIT_MS="500",
            OPRUNNER_KAFKA_IDEMPOTENT_PRODUCER="false",  # Tansu has no idempotent producer
        )
        ids = {f"b-{i}" for i in range(total)}
        await produce(broker.bootstrap, topics.commands, credit_stream("b", total), idempotent=False)
        async with Reader(broker.bootstrap, topics.results) as results:
            await results.until(lambda ms: len(ms) >= total // 4, timeout=120)
        broker.kill()
        await asyncio.sleep(down)  # the outage itself
        broker.start()
        async with Reader(broker.bootstrap, topics.results) as results:
            try:
                await results.until(lambda ms: caused(ms) >= ids, timeout=240)
            except AssertionError as exc:
                missing = sorted(ids - caused(results.messages))
                raise AssertionError(f"{exc}; missing {missing[:10]}…; {await store_state(db)}") from None
        assert proc.proc is not None and proc.proc.poll() is None, "serve died with the broker"
        await ledger_check(db, results, ids)
    finally:
        if proc is not None:
            proc.stop()
        broker.stop()
        store.stop()
