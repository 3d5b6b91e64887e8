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
from collections.abc import AsyncIterator, Iterator, Mapping
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


class Result(Mapping[str, Any]):
    """A result event as ``call`` and ``results`` give it: the outcome's ``status`` and its
    ``output`` or ``error``, with the ids that tie it to its command. It is also the
    CloudEvent itself, as a read-only mapping (``result["data"]``), as received."""

    __slots__ = ("event",)

    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event

    @property
    def data(self) -> dict[str, Any]:
        data = self.event.get("data")
        return data if isinstance(data, dict) else {}

    @property
    def status(self) -> str:
        """``succeeded``, ``failed``, ``rejected`` or ``denied``."""
        return str(self.data.get("status", ""))

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def output(self) -> dict[str, Any] | None:
        """The operation's output (wire names), when it succeeded."""
        output = self.data.get("output")
        return output if isinstance(output, dict) else None

    @property
    def error(self) -> dict[str, Any] | None:
        """``{"code", "message", ...}`` when it did not succeed (rejections name the fields)."""
        error = self.data.get("error")
        return error if isinstance(error, dict) else None

    @property
    def error_code(self) -> str | None:
        return str(self.error["code"]) if self.error and "code" in self.error else None

    @property
    def command_id(self) -> str:
        """The id of the command this answers (the event's ``causationid``)."""
        return str(self.event.get("causationid", ""))

    @property
    def correlation_id(self) -> str:
        return str(self.event.get("correlationid", ""))

    @property
    def op(self) -> str:
        return str(self.event.get("type", "")).removesuffix(".result")

    def __getitem__(self, key: str) -> Any:
        return self.event[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.event)

    def __len__(self) -> int:
        return len(self.event)

    def __repr__(self) -> str:
        return f"Result({self.op!r}, {self.status!r}, command_id={self.command_id!r})"


class OperationClient:
    """Send commands to the commands topic and read their results (``async with`` it)."""

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
        self._waiting: dict[str, asyncio.Future[Result]] = {}
        self._streams: list[asyncio.Queue[Result]] = []

    async def __aenter__(self) -> OperationClient:
        try:
            await self._broker.connect()
        except BaseException:
            await self._broker.stop()  # what connect opened, closed: no "Unclosed" noise
            raise
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
    ) -> Result:
        """Send and wait for this command's ``Result`` (matched by correlation id: the call
        gives the command a correlation id of its own). ``CallTimeout`` if none comes within
        ``timeout`` seconds: the command may still run. A rejected, denied or failed command
        is a ``Result`` too, not an exception: look at ``result.status``."""
        await self._listen()
        correlation = make_command(op, {}).id
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
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

    async def results(self, op: str | None = None) -> AsyncIterator[Result]:
        """Every ``Result`` published from now on, anyone's (``op`` filters by operation
        key), until the loop stops or is cancelled. At least once: deduplicate on
        ``result.command_id`` if a repeat matters."""
        await self._listen()
        queue: asyncio.Queue[Result] = asyncio.Queue()
        self._streams.append(queue)
        try:
            while True:
                result = await queue.get()
                if op is None or result.op == op:
                    yield result
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
        try:
            await consumer.start()
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
                if not isinstance(event, dict):
                    continue
                result = Result(event)
                future = self._waiting.get(result.correlation_id)
                if future is not None and not future.done():
                    future.set_result(result)
                for queue in self._streams:
                    queue.put_nowait(result)
