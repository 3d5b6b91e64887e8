"""``OperationClient``: send commands to the runner and read their results, from any service.

    async with OperationClient("127.0.0.1:9092", registry=registry) as client:
        command_id = await client.send("billing.capturePayment", {...}, token=token)
        result = await client.call("billing.capturePayment", {...}, token=token)
        async for event in client.results("billing.capturePayment"): ...

With a registry, input is validated before it leaves the process and the Kafka key is the
spec's partition key; without one, pass ``key=`` to keep one resource's commands in order.
Results are delivered at least once: deduplicate on ``causationid``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer
from faststream.kafka import KafkaBroker

from . import _json
from .envelope import command as make_command
from .errors import UnknownOperation
from .registry import OperationRegistry


class CallTimeout(TimeoutError):
    """No result arrived for the command in time; the command may still run."""


async def assign_whole_topic(consumer: AIOKafkaConsumer, topic: str, *, wait: float = 5.0) -> list[Any]:
    """Give a started consumer without a group every partition of ``topic`` (and any added
    later); return them. Raise ``TimeoutError`` if the topic does not exist within ``wait``.

    Only aiokafka's public API: ``topics()`` reads the whole cluster's metadata, which, unlike
    a request naming the topic, never has the broker auto-create it (a topic a reader made
    would get the broker's default partitions and replication, not the runner's). Once it
    exists, subscribing without a group makes aiokafka assign all its partitions at its next
    metadata update, which ``subscribe`` asks for at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while topic not in await consumer.topics():
        if loop.time() > deadline:
            raise TimeoutError(f"topic {topic!r} does not exist (waited {wait:g}s)")
        await asyncio.sleep(0.1)
    consumer.subscribe([topic])
    while not consumer.assignment():
        if loop.time() > deadline + wait:
            raise TimeoutError(f"no partitions of topic {topic!r} were assigned")
        await asyncio.sleep(0.01)
    return sorted(consumer.assignment())


class PacedFetch:
    """``consumer.getmany`` for a broker that answers a fetch at once instead of holding it
    until data or ``fetch_max_wait_ms`` (and ``fetch_min_bytes``), as Kafka does: noida-db.
    There aiokafka's background fetcher asks again the moment an answer lands, empty or with
    one record, and each round costs the client and the broker CPU: an idle consumer took
    most of a core, and at 1,000 messages a second every consumer fetched more often still.

    With ``interval_ms``, rounds come at most that often: between them the consumer's
    partitions are paused (``pause``/``resume``: no fetch; an answer that lands meanwhile is
    kept for the next round), so what arrives waits in the broker and comes in one answer,
    as ``fetch_min_bytes`` with ``fetch_max_wait_ms`` would make Kafka do it. The price is up
    to ``interval_ms`` more latency per hop. 0 (the default, for brokers that hold fetches)
    is plain ``getmany``. Partitions the caller paused stay paused. One per consumer."""

    def __init__(self, consumer: AIOKafkaConsumer, interval_ms: int = 0) -> None:
        self.consumer = consumer
        self.interval = interval_ms / 1000
        self._last = 0.0  # when the last round asked

    async def getmany(self, *, timeout_ms: int, max_records: int | None = None) -> dict[Any, list[Any]]:
        consumer = self.consumer
        if self.interval <= 0:
            got: dict[Any, list[Any]] = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
            return got
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while True:
            if (wait := self._last + self.interval - loop.time()) > 0:
                quiet = consumer.assignment() - consumer.paused()
                consumer.pause(*quiet)
                try:
                    await asyncio.sleep(wait)
                finally:  # only what is still assigned: a rebalance may have taken some meanwhile
                    consumer.resume(*(quiet & consumer.assignment()))
            fetched: dict[Any, list[Any]] = await consumer.getmany(
                timeout_ms=min(timeout_ms, POLL_MS), max_records=max_records
            )
            self._last = loop.time()
            if fetched or loop.time() >= deadline:
                return fetched


POLL_MS = 1
"""How long a paced round lets the fetcher ask: a loopback round trip is about half of it.
It must leave the resumed fetcher a turn of the loop, or it would never fetch at all."""


class OperationClient:
    def __init__(
        self,
        bootstrap: str,
        *,
        registry: OperationRegistry | None = None,
        commands_topic: str = "ops.commands",
        results_topic: str = "ops.results",
        source: str = "oprunner.client",
        idempotent_producer: bool = False,
        fetch_min_interval_ms: int = 0,
    ) -> None:
        self.bootstrap = bootstrap
        self.fetch_min_interval_ms = fetch_min_interval_ms  # see PacedFetch
        self.registry = registry
        self.commands_topic = commands_topic
        self.results_topic = results_topic
        self.source = source
        self._broker = KafkaBroker(bootstrap, acks="all", enable_idempotence=idempotent_producer, logger=None)
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._listening = asyncio.Lock()  # one results reader, however many first calls at once
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._streams: list[asyncio.Queue[dict[str, Any]]] = []

    async def __aenter__(self) -> OperationClient:
        await self._broker.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._consumer is not None:
            await self._consumer.stop()
        await self._broker.stop()

    # -- sending --------------------------------------------------------------------------

    def _prepare(
        self, op: str, data: Mapping[str, Any], version: str | None, key: str | None
    ) -> tuple[Any, str | None]:
        if self.registry is None:
            return dict(data), key
        try:
            spec = self.registry.get(op, version).spec
        except UnknownOperation:
            raise
        value = spec.io.input.model_validate(dict(data))  # raises pydantic.ValidationError
        return value.to_wire(), key or spec.partition_value(value)

    async def send(
        self,
        op: str,
        input: Mapping[str, Any],
        *,
        token: str,
        idempotency_key: str | None = None,
        version: str | None = None,
        key: str | None = None,
        correlation_id: str | None = None,
    ) -> str:
        """Publish one command (acked by the broker); return its id."""
        data, partition = self._prepare(op, input, version, key)
        envelope = make_command(
            op,
            data,
            source=self.source,
            opversion=version,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
        )
        await self._broker.publish(
            envelope.encode(),
            self.commands_topic,
            key=partition.encode() if partition else None,
            headers={"authorization": f"Bearer {token}", "content-type": "application/cloudevents+json"},
        )
        return envelope.id

    async def call(
        self,
        op: str,
        input: Mapping[str, Any],
        *,
        token: str,
        idempotency_key: str | None = None,
        version: str | None = None,
        key: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Send and wait for this command's result event (matched by correlation id)."""
        await self._listen()
        correlation = make_command(op, {}).id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = future
        try:
            await self.send(
                op,
                input,
                token=token,
                idempotency_key=idempotency_key,
                version=version,
                key=key,
                correlation_id=correlation,
            )
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise CallTimeout(f"no result for {op} within {timeout}s") from None
        finally:
            self._waiting.pop(correlation, None)

    # -- results --------------------------------------------------------------------------

    async def results(self, op: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Result events from now on (``op`` filters by operation key), until cancelled."""
        await self._listen()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._streams.append(queue)
        try:
            while True:
                event = await queue.get()
                if op is None or event.get("type") == f"{op}.result":
                    yield event
        finally:
            self._streams.remove(queue)

    async def _listen(self) -> None:
        """Read the results topic from its end, without a consumer group (``TimeoutError``
        if the topic does not exist within seconds: a reader never creates it)."""
        async with self._listening:
            if self._reader is None:
                await self._start_reading()

    async def _start_reading(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, auto_offset_reset="latest"
        )
        await consumer.start()
        try:
            tps = await assign_whole_topic(consumer, self.results_topic)
        except BaseException:
            await consumer.stop()
            raise
        await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end offsets now, so nothing sent after this is missed
            await consumer.position(tp)
        self._consumer = consumer
        self._reader = asyncio.create_task(self._read(), name="oprunner-client-results")

    async def _read(self) -> None:
        assert self._consumer is not None
        paced = PacedFetch(self._consumer, self.fetch_min_interval_ms)
        while True:
            fetched = await paced.getmany(timeout_ms=1000)
            for message in (m for messages in fetched.values() for m in messages):
                try:
                    event = _json.loads(message.value)
                except ValueError:
                    continue
                future = self._waiting.get(event.get("correlationid", ""))
                if future is not None and not future.done():
                    future.set_result(event)
                for queue in self._streams:
                    queue.put_nowait(event)
