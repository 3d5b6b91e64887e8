"""The two baselines oprunner is compared against, each run as its own process:

    python -m bench.pipelines bare         aiokafka: consume, produce a reply; nothing else
    python -m bench.pipelines handwritten  what a team writes first without oprunner: a
                                           FastStream subscriber that parses, validates with
                                           pydantic, runs one asyncpg transaction per message
                                           and awaits the publish of its result
    python -m bench.pipelines batched      what a team writes for speed: FastStream's batch
                                           subscriber, one transaction per batch (idempotency
                                           rows ON CONFLICT, one UPDATE), results published
                                           together and awaited once per batch
    python -m bench.pipelines samework     the same, doing what oprunner does per command: a
                                           JWT checked (verified tokens cached), the owner
                                           rule's resolver query, keys ON CONFLICT, the
                                           update, an audit row, a result and an audit event

Configured by the same OPRUNNER_* variables as ``serve``; prints "ready" once subscribed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from decimal import Decimal
from typing import Any

import asyncpg
import jwt
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import BaseModel, ConfigDict, Field

from runner.client import PacedFetch

BOOTSTRAP = os.environ["OPRUNNER_KAFKA_BOOTSTRAP"]
COMMANDS = os.environ["OPRUNNER_COMMANDS_TOPIC"]
RESULTS = os.environ["OPRUNNER_RESULTS_TOPIC"]
GROUP = os.environ["OPRUNNER_GROUP_ID"]
FETCH_WAIT = int(os.environ.get("OPRUNNER_FETCH_MAX_WAIT_MS", "500"))
FETCH_INTERVAL = int(os.environ.get("OPRUNNER_FETCH_MIN_INTERVAL_MS", "0"))


async def bare() -> None:
    consumer = AIOKafkaConsumer(
        COMMANDS,
        bootstrap_servers=BOOTSTRAP,
        group_id=GROUP,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        fetch_max_wait_ms=FETCH_WAIT,
    )
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=2)
    await consumer.start()
    await producer.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    paced = PacedFetch(consumer, FETCH_INTERVAL)
    while not stop.is_set():
        batches = await paced.getmany(timeout_ms=100, max_records=500)
        futures = [
            await producer.send(
                RESULTS, b'{"status":"succeeded"}', key=m.key, headers=[("causation", m.value[:64])]
            )
            for messages in batches.values()
            for m in messages
        ]
        await asyncio.gather(*futures)
    await consumer.stop()
    await producer.stop()


class Credit(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    account_id: str = Field(alias="accountId", min_length=1)
    amount: Decimal = Field(gt=0)


class Command(BaseModel):
    id: str
    type: str
    data: Credit


def faststream_app(keys: str, schema: str = "") -> tuple[KafkaBroker, FastStream, dict[str, asyncpg.Pool]]:
    """What the FastStream pipelines share: the broker, the app, a pool (in ``state``) and
    the table of idempotency keys ``keys`` (and any other tables of ``schema``), and "ready"
    printed once subscribed."""
    logging.basicConfig(level=logging.WARNING)  # per-message logs (DEBUG) filtered; errors shown
    broker = KafkaBroker(BOOTSTRAP, acks="all", log_level=logging.DEBUG)
    app = FastStream(broker)
    state: dict[str, asyncpg.Pool] = {}

    @app.on_startup
    async def connect() -> None:
        state["pool"] = await asyncpg.create_pool(os.environ["OPRUNNER_DATABASE_URL"], min_size=1, max_size=2)
        await state["pool"].execute(
            f"CREATE TABLE IF NOT EXISTS {keys} (key text PRIMARY KEY, at timestamptz DEFAULT now())"
        )
        if schema:
            await state["pool"].execute(schema)

    @app.after_startup
    async def ready() -> None:
        print("ready", flush=True)

    return broker, app, state


def handwritten() -> None:
    broker, app, state = faststream_app("bench_handwritten_keys")

    @broker.subscriber(
        COMMANDS,
        group_id=GROUP,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        fetch_max_wait_ms=FETCH_WAIT,
    )
    async def handle(command: Command) -> None:  # FastStream parses JSON and validates with pydantic
        async with state["pool"].acquire() as conn, conn.transaction():
            fresh = await conn.fetchval(
                "INSERT INTO bench_handwritten_keys (key) VALUES ($1) ON CONFLICT DO NOTHING RETURNING 1",
                command.id,
            )
            if fresh:
                await conn.execute(
                    "UPDATE ledger_accounts SET balance = balance + $2 WHERE id = $1",
                    command.data.account_id,
                    command.data.amount,
                )
        await broker.publish(
            json.dumps({"causationid": command.id, "data": {"status": "succeeded"}}).encode(),
            RESULTS,
            key=command.data.account_id.encode(),
        )

    asyncio.run(app.run())


async def credit_once(conn: asyncpg.Connection, keys: str, commands: list[Command]) -> None:
    """The batched pipelines' effect: each command's id claimed in table ``keys`` (``ON
    CONFLICT``), and the credits of those claimed now applied in one statement."""
    fresh = {
        row["key"]
        for row in await conn.fetch(
            f"INSERT INTO {keys} (key) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING RETURNING key",
            [c.id for c in commands],
        )
    }
    todo = [c for c in commands if c.id in fresh]
    await conn.execute(
        """UPDATE ledger_accounts AS a SET balance = a.balance + x.amount
           FROM (SELECT id, sum(amount) AS amount
                 FROM unnest($1::text[], $2::numeric[]) AS t(id, amount) GROUP BY id) AS x
           WHERE a.id = x.id""",
        [c.data.account_id for c in todo],
        [c.data.amount for c in todo],
    )


BATCH_SUBSCRIBER: dict[str, Any] = {
    "batch": True,
    "max_records": 256,
    "batch_timeout_ms": max(FETCH_WAIT, 1),
    "group_id": GROUP,
    "auto_offset_reset": "earliest",
    "session_timeout_ms": 6000,
    "fetch_max_wait_ms": FETCH_WAIT,
}
"""FastStream's batch subscriber as both batched pipelines use it."""


def batched() -> None:
    broker, app, state = faststream_app("bench_batched_keys")

    @broker.subscriber(COMMANDS, **BATCH_SUBSCRIBER)
    async def handle(commands: list[Command]) -> None:
        async with state["pool"].acquire() as conn, conn.transaction():
            await credit_once(conn, "bench_batched_keys", commands)
        sent = [
            await broker.publish(
                json.dumps({"causationid": c.id, "data": {"status": "succeeded"}}).encode(),
                RESULTS,
                key=c.data.account_id.encode(),
                no_confirm=True,
            )
            for c in commands
        ]
        await asyncio.gather(*sent)

    asyncio.run(app.run())


SAMEWORK_SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_samework_keys (key text PRIMARY KEY, at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS bench_samework_audit (
    id bigserial PRIMARY KEY, command_id text NOT NULL, op text NOT NULL, actor_id text,
    decision text NOT NULL, status text NOT NULL, data jsonb NOT NULL,
    at timestamptz NOT NULL DEFAULT now());
"""


def samework() -> None:
    """The batched pipeline with oprunner's work per command, written for speed: tokens
    verified once and cached until they expire, one statement per table per batch, every
    event of the batch sent before any is awaited."""
    broker, app, state = faststream_app("bench_samework_keys", SAMEWORK_SCHEMA)
    secret = os.environ["OPRUNNER_JWT_SECRET"]
    audit_topic = os.environ["OPRUNNER_AUDIT_TOPIC"]
    verified: dict[str, dict[str, object]] = {}

    def actor(headers: dict[str, str]) -> dict[str, object] | None:
        token = headers.get("authorization", "").removeprefix("Bearer ")
        claims = verified.get(token)
        if claims is None or float(str(claims["exp"])) < time.time():
            try:
                claims = jwt.decode(token, secret, algorithms=["HS256"])
            except jwt.InvalidTokenError:
                return None
            verified[token] = claims
        return claims

    @broker.subscriber(COMMANDS, **BATCH_SUBSCRIBER)
    async def handle(commands: list[Command], message: KafkaMessage) -> None:
        pool = state["pool"]
        actors = [actor(h) for h in message.batch_headers]
        async with pool.acquire() as conn, conn.transaction():
            owners = {
                row["id"]: (row["owner_id"], row["tenant_id"])
                for row in await conn.fetch(
                    "SELECT id, owner_id, tenant_id FROM ledger_accounts WHERE id = ANY($1::text[])",
                    list({c.data.account_id for c in commands}),
                )
            }
            allowed = [
                a is not None and owners.get(c.data.account_id) == (a.get("sub"), a.get("tenant"))
                for c, a in zip(commands, actors, strict=True)
            ]
            await credit_once(
                conn, "bench_samework_keys", [c for c, ok in zip(commands, allowed, strict=True) if ok]
            )
            statuses = ["succeeded" if ok else "denied" for ok in allowed]
            audits = [
                orjson.dumps(
                    {"actor": a and a.get("sub"), "input": c.data.model_dump(mode="json"), "status": s}
                ).decode()
                for c, a, s in zip(commands, actors, statuses, strict=True)
            ]
            await conn.execute(
                "INSERT INTO bench_samework_audit (command_id, op, actor_id, decision, status, data)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
                " $6::jsonb[])",
                [c.id for c in commands],
                [c.type for c in commands],
                [a and str(a.get("sub")) for a in actors],
                ["allow" if ok else "deny" for ok in allowed],
                statuses,
                audits,
            )
        sent = []
        for c, s, audit in zip(commands, statuses, audits, strict=True):
            key = c.data.account_id.encode()
            data = {"status": s, "accountId": c.data.account_id}
            result = orjson.dumps({"causationid": c.id, "data": data})
            sent.append(await broker.publish(result, RESULTS, key=key, no_confirm=True))
            sent.append(await broker.publish(audit.encode(), audit_topic, key=key, no_confirm=True))
        await asyncio.gather(*sent)

    asyncio.run(app.run())


if __name__ == "__main__":
    pipelines = {"bare": lambda: asyncio.run(bare()), "handwritten": handwritten, "batched": batched}
    {**pipelines, "samework": samework}[sys.argv[1]]()
