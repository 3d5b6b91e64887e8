"""The command consumer: per-key order, cross-key concurrency, offsets committed after durability.

FastStream's subscriber model runs one message after another per subscriber (or acks
out of order with concurrency), and cannot hold an offset back until a later message's
outcome is durable. So this loop drives FastStream's aiokafka consumer directly (built by
``KafkaBroker.connect()``, with the broker's connection settings):

* messages with the same Kafka key run one after another, in offset order; different keys
  run concurrently, at most ``max_in_flight`` at once (the fetch loop waits: backpressure);
* a partition's committed offset only moves past a message once its outcome is committed in
  the store (a watermark over out-of-order completions);
* a message the store cannot take yet is retried in place, never skipped;
* on revocation, the in-flight work of the revoked partitions is finished and committed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from .. import _json
from ..auth import bearer
from ..envelope import AUDIT_TYPE, CommandEnvelope, build_event, parse_command
from ..errors import EnvelopeError, StoreUnavailable
from ..executor import Executor
from ..store import OutcomeRecord, Publication
from .publisher import KafkaPublisher, OutboxCleaner

_log = logging.getLogger("oprunner.consumer")


@dataclass
class _Partition:
    """Offsets fetched from one partition and which of them are done."""

    pending: dict[int, bool] = field(default_factory=dict)  # offset -> done, in fetch order
    committable: int | None = None  # next offset to commit
    committed: int | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def add(self, offset: int) -> None:
        self.pending[offset] = False

    def done(self, offset: int) -> None:
        if offset in self.pending:
            self.pending[offset] = True
        while self.pending:
            first = next(iter(self.pending))
            if not self.pending[first]:
                break
            del self.pending[first]
            self.committable = first + 1


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: CommandConsumer) -> None:
        self._owner = consumer

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._owner._drain(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        _log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))


class CommandConsumer:
    """Consumes the commands topic into the executor; see the module docstring."""

    def __init__(
        self,
        executor: Executor,
        publisher: KafkaPublisher,
        consumer_factory: Callable[..., AIOKafkaConsumer],
        *,
        topic: str,
        group_id: str,
        dlq_topic: str,
        max_in_flight: int = 256,
        max_message_bytes: int = 1024 * 1024,
        session_timeout_ms: int = 10_000,
        commit_interval: float = 0.2,
        drain_timeout: float = 30.0,
    ) -> None:
        self.executor = executor
        self.publisher = publisher
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.max_in_flight = max_in_flight
        self.max_message_bytes = max_message_bytes
        self.commit_interval = commit_interval
        self.drain_timeout = drain_timeout
        self.cleaner = OutboxCleaner(executor.store)
        self.consumer = consumer_factory(
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=max(session_timeout_ms // 5, 100),
            max_poll_records=max_in_flight,
            max_partition_fetch_bytes=max(max_message_bytes + 65536, 1048576),
        )
        self._slots = asyncio.Semaphore(max_in_flight)
        self._parts: dict[TopicPartition, _Partition] = {}
        self._tails: dict[bytes, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self.processed = 0
        self.dead_lettered = 0

    @property
    def in_flight(self) -> int:
        return self.max_in_flight - self._slots._value

    async def start(self) -> None:
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))
        await self.consumer.start()
        self.cleaner.start()

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and dispatch until ``stop`` is set, then drain and commit."""
        committer = asyncio.create_task(self._commit_loop(), name="oprunner-committer")
        try:
            while not stop.is_set():
                batches = await self.consumer.getmany(timeout_ms=100, max_records=self.max_in_flight)
                for tp, messages in batches.items():
                    for message in messages:
                        await self._slots.acquire()
                        self._dispatch(tp, message)
        finally:
            self._stopping.set()
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            await self._drain(set(self._parts))
            await self.cleaner.stop()
            await self.consumer.stop()

    # -- dispatch -------------------------------------------------------------------------

    def _dispatch(self, tp: TopicPartition, message: Any) -> None:
        part = self._parts.setdefault(tp, _Partition())
        part.add(message.offset)
        key: bytes | None = message.key
        previous = self._tails.get(key) if key is not None else None
        task = asyncio.create_task(self._handle(tp, part, message, previous))
        part.tasks.add(task)
        task.add_done_callback(part.tasks.discard)
        if key is not None:
            self._tails[key] = task

            def forget(done: asyncio.Task[None], key: bytes = key) -> None:
                if self._tails.get(key) is done:
                    del self._tails[key]

            task.add_done_callback(forget)

    async def _handle(self, tp: TopicPartition, part: _Partition, message: Any, previous: Any) -> None:
        try:
            if previous is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.shield(previous)
            if await self._process(message):
                part.done(message.offset)
                self.processed += 1
        except Exception:
            _log.exception("message %s:%d@%d left unacknowledged", tp.topic, tp.partition, message.offset)
        finally:
            self._slots.release()

    async def _process(self, message: Any) -> bool:
        """Take one message to a durable outcome; False if stopping first (offset not done)."""
        failures = 0
        while True:
            try:
                publications, ids = await self._outcome(message)
                break
            except StoreUnavailable as exc:
                if self._stopping.is_set():
                    return False
                failures += 1
                delay = min(5.0, 0.2 * 2 ** min(failures, 5)) * random.uniform(0.5, 1.0)
                _log.warning("store unavailable (%s); retrying message in %.1fs", exc, delay)
                await asyncio.sleep(delay)
        try:
            await self.publisher.publish(publications)
            self.cleaner.add(ids)
        except (TimeoutError, KafkaError, OSError):
            _log.warning("publish failed; the outbox relay will publish", exc_info=True)
        return True

    async def _outcome(self, message: Any) -> tuple[tuple[Publication, ...], list[int] | tuple[int, ...]]:
        headers = dict(message.headers or ())
        try:
            command = parse_command(message.value or b"", max_bytes=self.max_message_bytes)
        except EnvelopeError as exc:
            return await self._dead_letter(message, exc.reason)
        traceparent = headers.get("traceparent")
        if traceparent:
            command = replace(command, traceparent=traceparent.decode("latin-1")[:128])
        outcome = await self.executor.execute(command, token=bearer(headers.get("authorization")))
        return outcome.publications, outcome.outbox_ids

    async def _dead_letter(self, message: Any, reason: str) -> tuple[tuple[Publication, ...], list[int]]:
        """Record the DLQ message and an audit event through the outbox, like any outcome."""
        where = f"{message.topic}/{message.partition}/{message.offset}"
        value: bytes = message.value or b""
        headers: tuple[tuple[str, bytes], ...] = (
            *((k, v) for k, v in (message.headers or ()) if k.lower() != "authorization"),
            ("dlq-reason", reason.encode()[:1000]),
            ("dlq-topic", message.topic.encode()),
            ("dlq-partition", str(message.partition).encode()),
            ("dlq-offset", str(message.offset).encode()),
        )
        if len(value) > self.max_message_bytes:
            value = value[: self.max_message_bytes]
            headers += (("dlq-truncated", b"true"),)
        stub = CommandEnvelope(id=where, source=message.topic, type="oprunner.deadLetter", data=None)
        audit = {
            "op": None,
            "version": None,
            "actor": None,
            "decision": "reject",
            "status": "rejected",
            "attempt": 0,
            "duration_ms": 0,
            "input": None,
            "error": "MALFORMED",
            "reason": reason,
            "deadLetter": where,
        }
        event = build_event(
            type=AUDIT_TYPE, source=self.executor.source, data=audit, command=stub, opversion=None
        )
        record = OutcomeRecord(
            command_id=where,
            op="",
            version=None,
            status="rejected",
            result={},
            audit=audit,
            publications=(
                Publication(self.dlq_topic, message.key, value, headers),
                Publication(self.executor.audit_topic, message.key, _json.dumps(event)),
            ),
        )
        try:
            ids = await self.executor.store.record(record)
        except self.executor.store.transient_errors as exc:
            raise StoreUnavailable(str(exc)) from exc
        self.dead_lettered += 1
        return record.publications, ids

    # -- offsets --------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.commit_interval)
            await self._commit()

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        offsets = {
            tp: part.committable
            for tp, part in self._parts.items()
            if part.committable is not None
            and part.committable != part.committed
            and (only is None or tp in only)
        }
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            _log.info("offset commit skipped (%s); the claim keeps redeliveries harmless", exc)
            return
        for tp, offset in offsets.items():
            self._parts[tp].committed = offset

    async def _drain(self, partitions: set[TopicPartition]) -> None:
        """Finish in-flight work of ``partitions`` (bounded), commit it, forget them."""
        tasks = [t for tp in partitions if tp in self._parts for t in self._parts[tp].tasks]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.drain_timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5)
        await self._commit(partitions)
        for tp in partitions:
            self._parts.pop(tp, None)
