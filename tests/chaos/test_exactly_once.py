"""Exactly-once mode (``OPRUNNER_KAFKA_EXACTLY_ONCE``): a SIGKILL between writing a
partition's events in its transaction and committing it, counted by a ``read_committed``
reader of the topics, which must see each result and audit event exactly once.

It needs a broker with transactions, so it runs on noida-db (or Kafka), not Tansu; noida-db
keeps a SIGKILLed member in its group forever, so both ``serve`` processes use one static
member id (KIP-345), which hands the partitions to the restarted one at once.

The readers start once every offset is committed. A reader that is already reading when the
crash's transaction is aborted misses committed events on noida-db 0.2.3: its fetches past
the abort marker still list the aborted transaction, and the fenced producer keeps its
producer id (only the epoch moves), so aiokafka skips that producer's later, committed
batches as aborted (Kafka lists only aborted transactions that end at or after the fetch
offset). A reader from the beginning sees the marker and reads them all."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from infra.devservices import Postgres
from tests.chaos.test_gaps import credits
from tests.support import Reader, Topics, ledger_check, produce

pytestmark = pytest.mark.needs_transactions

EXACTLY_ONCE = {"OPRUNNER_KAFKA_EXACTLY_ONCE": "1", "OPRUNNER_KAFKA_GROUP_INSTANCE_ID": "eos-serve"}


def per_command(messages: list[Any]) -> Counter[str]:
    """Command id -> how many events were read for it."""
    return Counter(orjson.loads(m.value)["causationid"] for m in messages)


async def drained(bootstrap: str, topics: Topics, n: int, timeout: float = 60) -> None:
    """Wait until the group committed every offset of the commands topic (its ``n`` commands):
    no transaction of it is still to come."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=topics.group, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [
            TopicPartition(topics.commands, p) for p in consumer.partitions_for_topic(topics.commands) or ()
        ]
        deadline = time.monotonic() + timeout
        while True:
            done = sum([await consumer.committed(tp) or 0 for tp in parts])
            if done >= n:
                return
            assert time.monotonic() < deadline, f"offsets committed for {done} of {n} commands"
            await asyncio.sleep(0.1)
    finally:
        await consumer.stop()


async def test_a_sigkill_inside_a_transaction_shows_read_committed_each_result_once(
    kafka_bootstrap: str, own_postgres: tuple[Postgres, asyncpg.Pool], serving: Any
) -> None:
    server, db = own_postgres
    topics = Topics()
    await topics.create(kafka_bootstrap)
    ids = {f"x-{i}" for i in range(400)}
    await produce(kafka_bootstrap, topics.commands, credits("x", 400))
    crashing = serving(
        topics,
        server.dsn,
        app="tests.apps.crashing:registry",
        OPRUNNER_TEST_CRASH_AT="in-transaction",
        OPRUNNER_BATCH_SIZE="16",
        wait=False,
        **EXACTLY_ONCE,
    )
    assert crashing.wait(60) == -9, crashing.output()[-2000:]
    serving(topics, server.dsn, **EXACTLY_ONCE)
    await drained(kafka_bootstrap, topics, len(ids))  # every offset committed: all is decided
    async with (
        Reader(kafka_bootstrap, topics.results, isolation_level="read_committed") as results,
        Reader(kafka_bootstrap, topics.audit, isolation_level="read_committed") as audit,
        Reader(kafka_bootstrap, topics.results) as everything,
    ):
        for reader in (results, audit, everything):
            await reader.to_end()
    await ledger_check(db, results, ids)
    assert set(per_command(audit.messages)) >= ids
    doubled = {k: n for k, n in per_command(results.messages).items() if n != 1}
    assert not doubled, f"read_committed saw results more than once: {doubled}"
    doubled = {k: n for k, n in per_command(audit.messages).items() if n != 1}
    assert not doubled, f"read_committed saw audit events more than once: {doubled}"
    # the crash did cut a transaction: its events are on the topic, aborted, and a
    # read_uncommitted reader sees them twice
    assert any(n > 1 for n in per_command(everything.messages).values())
