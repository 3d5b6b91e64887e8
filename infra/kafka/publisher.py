"""Publishing outbox rows with an aiokafka producer the publisher owns, and the relay that
sweeps leftovers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidTopicError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordTooLargeError,
    UnknownProducerId,
)
from aiokafka.partitioner import DefaultPartitioner

from runner.observability import Metrics
from runner.settings import Settings
from runner.store import OutboxRow, Publication, Store, Sweep

_log = logging.getLogger("oprunner.publisher")

PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    InvalidTopicError,
)
"""Kafka's answers that no retry will change."""

PRODUCER_STATE_ERRORS: tuple[type[BaseException], ...] = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
)
"""An idempotent producer's sequence no longer matches what the broker holds (a broker that
lost its producer state in a crash, or expired it): that producer never recovers (aiokafka
retries the same sequence forever), so the publisher replaces it; the outbox keeps the rows."""


BATCHED_BYTES = 8 * 1024
"""Larger messages are sent one by one (a record batch holds 16 KB by default)."""


CLIENT_ID = "oprunner"
"""How the runner's Kafka connections name themselves to the brokers (their logs, quotas)."""


def producer_options(settings: Settings) -> dict[str, Any]:
    """The connection and producer settings, one list for FastStream's ``KafkaBroker`` (the
    consumers' builder, webhooks' publishes) and the publisher's own ``AIOKafkaProducer``:
    both take these names, so the two cannot drift apart. Compression and request size are
    aiokafka's defaults (none, 1 MB). A batch per partition holds up to 128 KB, not 16 KB: a
    batch of 128 commands publishes about 220 KB of events over 8 partitions, and 16 KB
    batches split that into about twice as many record batches and produce requests (in
    bench.e2e, broker CPU per command 55-93 µs with 16 KB, 36-45 µs with 128 KB)."""
    return {
        "client_id": CLIENT_ID,
        "acks": "all",
        "enable_idempotence": settings.kafka_idempotent_producer,
        "compression_type": None,
        "linger_ms": 2,
        "max_batch_size": 128 * 1024,
        "max_request_size": 1024 * 1024,
        "request_timeout_ms": 15_000,
    }


class Producer(Protocol):
    """What the publisher uses of aiokafka's ``AIOKafkaProducer``, all of it public API."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def partitions_for(self, topic: str) -> set[int]: ...

    def create_batch(self) -> Any: ...

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Awaitable[Any]: ...

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[Any]: ...


class TransactionalProducer(Producer, Protocol):
    """A ``Producer`` with a ``transactional_id`` (``infra.kafka.transactions``): aiokafka's
    transaction API, all of it public."""

    async def begin_transaction(self) -> None: ...

    async def commit_transaction(self) -> None: ...

    async def abort_transaction(self) -> None: ...

    async def send_offsets_to_transaction(self, offsets: dict[Any, int], group_id: str) -> None: ...


class KafkaPublisher:
    """Publishes with every send in flight at once, then waits for all acks.

    ``acks="all"``: a result counts as published only when the in-sync replicas have it.

    It owns an aiokafka producer instead of publishing through FastStream's broker, because
    FastStream's public ``publish`` cannot do what the hot path needs: it builds a command
    object and runs the middleware chain for every message (~10% of a command's CPU), and it
    has no way to fill one record batch per partition. Outbox rows are already-encoded
    CloudEvents with their headers, so they go straight to aiokafka's public batch API
    (``create_batch``, ``send_batch``), with ``send`` for large ones. The producer is built
    from ``producer_options``, the same settings as the broker's, and is started and stopped
    with the runtime (``start``, ``stop``); tests pass a fake ``Producer``."""

    def __init__(self, producer: Producer, *, renew: Callable[[], Producer] | None = None) -> None:
        self.producer = producer
        self.renew = renew
        """Makes a producer to replace one whose state the broker rejects (None: keep it)."""
        self.renewals = 0
        self._partitioner = DefaultPartitioner()
        self._renewing = asyncio.Lock()
        self._retired: set[asyncio.Task[None]] = set()

    @classmethod
    def connecting_to(cls, bootstrap: str, **options: Any) -> KafkaPublisher:
        """A publisher on a new (not yet started) ``AIOKafkaProducer`` with these options."""

        def new() -> Producer:
            producer: Producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **options)
            return producer

        return cls(new(), renew=new)

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        """Send what is batched and wait for its acks, then close the connections."""
        await self.producer.stop()
        for task in list(self._retired):
            with contextlib.suppress(Exception):
                await task

    async def publish(self, publications: Sequence[Publication]) -> None:
        producer = self.producer
        try:
            await asyncio.gather(*await self.send_batched(producer, publications))
        except PRODUCER_STATE_ERRORS:
            await self._replace(producer)
            raise  # the rows stay in the outbox: the next try goes through the new producer

    async def _replace(self, failed: Producer) -> None:
        """A new producer (a new producer id, sequences from zero) in place of ``failed``,
        once, however many publishes saw it fail; the old one is closed in the background."""
        if self.renew is None:
            return
        async with self._renewing:
            if self.producer is not failed:
                return  # another publish replaced it already
            fresh = self.renew()
            try:
                await fresh.start()
            except BaseException:
                await _close(fresh)  # the broker is away: the next failure tries again
                raise
            self.producer = fresh
            self.renewals += 1
        _log.warning("the broker rejected the producer's sequence state; publishing through a new producer")
        task = asyncio.create_task(_close(failed))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def send_batched(
        self, producer: Producer, publications: Sequence[Publication]
    ) -> list[Awaitable[Any]]:
        """Send ``publications`` on ``producer`` (this publisher's, or a transactional one's,
        inside its open transaction); the broker's acknowledgements, to await.

        Appends to one record batch per partition, as aiokafka's ``send`` would per message
        but without its per-message futures and lookups (~8% of a command's CPU). Partitions
        come from Kafka's default partitioner (murmur2 of the key), as for any other producer.
        Messages over ``BATCHED_BYTES`` go through ``send``, which checks their size (an empty
        batch takes a record of any size); a partition's open batch is sent before them, so
        each partition keeps the order of ``publications``."""
        batches: dict[tuple[str, int], Any] = {}
        futures: list[Awaitable[Any]] = []
        known: dict[str, list[int]] = {}  # per call: aiokafka keeps the metadata fresh
        for pub in publications:
            partitions = known.get(pub.topic)
            if partitions is None:
                partitions = known[pub.topic] = sorted(await producer.partitions_for(pub.topic))
            partition: int = self._partitioner(pub.key, partitions, partitions)
            where = (pub.topic, partition)
            batch = batches.pop(where, None)
            small = len(pub.value) <= BATCHED_BYTES
            if small and batch is not None and _append(batch, pub):
                batches[where] = batch
                continue
            if batch is not None and batch.record_count():  # full, or a large message follows
                futures.append(await producer.send_batch(batch, pub.topic, partition=partition))
            if small:
                batches[where] = batch = producer.create_batch()
                if _append(batch, pub):
                    continue
            headers = list(pub.headers)
            futures.append(
                await producer.send(pub.topic, pub.value, key=pub.key, headers=headers, partition=partition)
            )
        for (topic, partition), batch in batches.items():
            if batch.record_count():
                futures.append(await producer.send_batch(batch, topic, partition=partition))
        return futures


async def _close(producer: Producer) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.stop(), 30)


def _append(batch: Any, pub: Publication) -> bool:
    return batch.append(key=pub.key, value=pub.value, timestamp=None, headers=list(pub.headers)) is not None


class OutboxCleaner:
    """Deletes published outbox rows in batches, off the hot path."""

    def __init__(self, store: Store, interval: float = 0.05) -> None:
        self.store = store
        self.interval = interval
        self._ids: list[int] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, ids: Sequence[int]) -> None:
        self._ids.extend(ids)

    async def flush(self) -> None:
        ids, self._ids = self._ids, []
        if not ids:
            return
        try:
            await self.store.mark_published(ids)
        except Exception:  # the relay will publish these again: duplicates, never losses
            _log.warning("could not delete %d published outbox rows", len(ids), exc_info=True)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="oprunner-outbox-cleaner")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()


_Queued = tuple[Sequence[Publication], Sequence[int], float, "asyncio.Future[None] | None"]


class PublishQueue:
    """Publishes committed outcomes in the background, in large pipelined sends.

    What is in the outbox need not hold up the next batch: if its publish fails, the relay
    sends it. What is not (a Kafka command's result and audit events: its offset is its
    outbox) is submitted ``acked``: the caller waits for the broker's acknowledgement before
    it lets the command go. Bounded: ``submit`` waits when ``max_pending`` publications are
    queued (Kafka slower than the database)."""

    def __init__(
        self,
        publisher: KafkaPublisher,
        cleaner: OutboxCleaner,
        *,
        max_pending: int = 4096,
        metrics: Metrics | None = None,
    ) -> None:
        self.publisher = publisher
        self.cleaner = cleaner
        self.metrics = metrics
        # (publications, their outbox ids, when they were submitted)
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue(max_pending)
        self._task: asyncio.Task[None] | None = None
        self._sending: list[_Queued] = []

    async def submit(
        self, publications: Sequence[Publication], ids: Sequence[int], *, acked: bool = False
    ) -> asyncio.Future[None] | None:
        """Queue ``publications`` (their outbox rows ``ids`` deleted once sent). With ``acked``,
        a future that ends when the broker acknowledged them all, or with the error that
        stopped them."""
        future = asyncio.get_running_loop().create_future() if acked else None
        await self._queue.put((publications, ids, time.perf_counter(), future))
        return future

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="oprunner-publisher")

    async def _run(self) -> None:
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty() and len(items) < 1000:
                items.append(self._queue.get_nowait())
            await self._send(items)

    async def _send(self, items: list[_Queued]) -> None:
        started = time.perf_counter()
        if self.metrics is not None:
            self.metrics.stage("publish_wait", started - min(at for _, _, at, _ in items))
        self._sending = items
        try:
            await self.publisher.publish([p for pubs, _, _, _ in items for p in pubs])
            if self.metrics is not None:
                self.metrics.stage("publish", time.perf_counter() - started)
        except Exception as exc:  # the outbox's rows: the relay publishes them; the rest: the caller
            if isinstance(exc, PERMANENT_ERRORS) and len(items) > 1:
                self._sending = []
                for item in items:  # find the one that can never go; let the others go
                    await self._send([item])
                return
            _log.warning(
                "publishing %d outcomes failed; the outbox relay or the consumer will retry",
                len(items),
                exc_info=True,
            )
            _settle(items, exc)
            return
        finally:
            self._sending = []
        for _, ids, _, _ in items:
            self.cleaner.add(ids)
        _settle(items, None)

    async def stop(self) -> None:
        """Publish what is queued, then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        _settle(self._sending, ConnectionError("the publisher stopped mid-send"))
        items = []
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        if items:
            await self._send(items)


def _settle(items: Sequence[_Queued], error: BaseException | None) -> None:
    for *_, future in items:
        if future is not None and not future.done():
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)


class OutboxRelay:
    """Publishes outbox rows a crash left behind: rows older than ``min_age`` seconds, locked
    with ``FOR UPDATE SKIP LOCKED`` so several processes sweep without stepping on each other."""

    def __init__(
        self, store: Store, publisher: KafkaPublisher, *, interval: float = 1.0, min_age: float = 5.0
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.interval = interval
        self.min_age = min_age
        self.published = 0
        self.parked = 0

    async def sweep_once(self, limit: int = 500) -> int:
        async with self.store.sweep(limit, self.min_age) as sweep:
            rows: Sequence[OutboxRow] = sweep.rows
            if not rows:
                return 0
            try:
                await self.publisher.publish([row.publication for row in rows])
            except Exception:
                await self._one_by_one(sweep)  # find the row(s) that cannot go, let the rest go
        self.published += len(rows) - len(sweep.kept) - len(sweep.parked)
        return len(rows)

    async def _one_by_one(self, sweep: Sweep) -> None:
        for row in sweep.rows:
            try:
                await self.publisher.publish([row.publication])
            except PERMANENT_ERRORS as exc:
                _log.error(
                    "outbox row %d to %s can never be published (%s); parked",
                    row.id,
                    row.publication.topic,
                    exc,
                )
                sweep.parked[row.id] = f"{type(exc).__name__}: {exc}"
                self.parked += 1
            except Exception:
                sweep.kept.add(row.id)  # Kafka unavailable: the next sweep tries again

    async def run(self) -> None:
        while True:
            try:
                while await self.sweep_once() == 500:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.warning("outbox relay sweep failed; will try again", exc_info=True)
            await asyncio.sleep(self.interval)
