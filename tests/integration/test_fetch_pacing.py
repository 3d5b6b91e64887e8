"""``PacedFetch`` against the session's broker: a paced consumer, idle for a while, still gets
what is sent next, from every partition; a partition its caller paused is not fetched."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from runner.client import PacedFetch, assign_whole_topic


async def _until(consumer: AIOKafkaConsumer, want: int, within: float) -> list[bytes]:
    got: list[bytes] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    paced = PacedFetch(consumer, 2)
    while len(got) < want and loop.time() < deadline:
        fetched = await paced.getmany(timeout_ms=200)
        got += [m.value for messages in fetched.values() for m in messages]
    return got


async def test_a_paced_consumer_gets_what_is_sent_after_a_lull(kafka_bootstrap: str, topics: Any) -> None:
    topic = topics.commands
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    try:
        tps = await assign_whole_topic(consumer, topic)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        assert await _until(consumer, 1, 0.5) == []  # quiet: empty rounds, paused between
        assert consumer.paused() == set()  # nothing left paused by it
        for p in range(len(tps)):
            await producer.send_and_wait(topic, f"m{p}".encode(), partition=p)
        assert sorted(await _until(consumer, len(tps), 20)) == [f"m{p}".encode() for p in range(len(tps))]

        held = TopicPartition(topic, 0)
        consumer.pause(held)
        await producer.send_and_wait(topic, b"held", partition=0)
        await producer.send_and_wait(topic, b"free", partition=1)
        assert await _until(consumer, 2, 1.0) == [b"free"]
        assert consumer.paused() == {held}
        consumer.resume(held)
        assert await _until(consumer, 1, 20) == [b"held"]
    finally:
        await producer.stop()
        await consumer.stop()
