"""The publisher's batching without a broker: a fake aiokafka producer records what goes on
the wire, batch by batch and send by send, per partition.

What ``KafkaPublisher`` promises: each publication goes to the partition Kafka's default
partitioner picks for its key; small ones share one record batch per partition, a full batch
is sent and a new one opened, a large one (over ``BATCHED_BYTES``) goes through ``send``
after its partition's open batch; so each partition gets its publications in their order.
``publish`` returns once every batch and send is acknowledged, and raises what one fails with."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, OutOfOrderSequenceNumber
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from infra.kafka.publisher import BATCHED_BYTES, KafkaPublisher, producer_options
from runner.settings import Settings
from runner.store import Publication

PARTITIONS = 4


def partition_of(key: bytes) -> int:
    every = list(range(PARTITIONS))
    return int(DefaultPartitioner()(key, every, every))


def keys_on_distinct_partitions(n: int) -> list[bytes]:
    found: dict[int, bytes] = {}
    for i in range(1000):
        key = f"key-{i}".encode()
        found.setdefault(partition_of(key), key)
        if len(found) == n:
            return list(found.values())
    raise AssertionError("not enough partitions")


@dataclass
class FakeBatch:
    """aiokafka's ``BatchBuilder``: ``append`` returns None once ``capacity`` bytes are used,
    except that an empty batch takes a record of any size."""

    capacity: int
    records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = field(default_factory=list)
    size: int = 0
    sent: bool = False

    def append(
        self, *, key: bytes | None, value: bytes, timestamp: float | None, headers: list[tuple[str, bytes]]
    ) -> object | None:
        assert not self.sent, "appended to a batch already handed to send_batch"
        if self.records and self.size + len(value) > self.capacity:
            return None
        self.records.append((key, value, headers))
        self.size += len(value)
        return object()  # aiokafka's record metadata

    def record_count(self) -> int:
        return len(self.records)


@dataclass
class Wire:
    """One request to the producer: a batch or a single send, to one partition."""

    topic: str
    partition: int
    how: str  # "batch" or "send"
    values: list[bytes]
    keys: list[bytes | None]
    headers: list[list[tuple[str, bytes]]]


class FakeProducer:
    """The ``Producer`` the publisher needs. Each send's future is resolved at once unless
    ``hold`` is set, then by the test (``acks``); ``fail`` makes ``send`` refuse at once."""

    def __init__(self, *, capacity: int = 16 * 1024, hold: bool = False) -> None:
        self.capacity = capacity
        self.hold = hold
        self.wire: list[Wire] = []
        self.acks: list[asyncio.Future[Any]] = []
        self.requested = asyncio.Event()  # set at the first batch or send
        self.lookups: list[str] = []
        self.fail: BaseException | None = None
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def partitions_for(self, topic: str) -> set[int]:
        self.lookups.append(topic)
        return set(range(PARTITIONS))

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    def _ack(self) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self.hold:
            future.set_result(None)
        self.acks.append(future)
        self.requested.set()
        return future

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        assert batch.record_count(), "an empty batch was sent"
        batch.sent = True
        keys, values, headers = (list(column) for column in zip(*batch.records, strict=True))
        self.wire.append(Wire(topic, partition, "batch", values, keys, headers))
        return self._ack()

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        if self.fail is not None:
            raise self.fail
        assert value is not None and partition is not None
        self.wire.append(Wire(topic, partition, "send", [value], [key], [headers or []]))
        return self._ack()

    def per_partition(self) -> dict[tuple[str, int], list[bytes]]:
        sent: dict[tuple[str, int], list[bytes]] = {}
        for w in self.wire:
            sent.setdefault((w.topic, w.partition), []).extend(w.values)
        return sent

    def shape(self, topic: str, partition: int) -> list[tuple[str, list[bytes]]]:
        return [(w.how, w.values) for w in self.wire if (w.topic, w.partition) == (topic, partition)]


def expected(publications: Sequence[Publication]) -> dict[tuple[str, int], list[bytes]]:
    want: dict[tuple[str, int], list[bytes]] = {}
    for pub in publications:
        assert pub.key is not None
        want.setdefault((pub.topic, partition_of(pub.key)), []).append(pub.value)
    return want


async def publish(producer: FakeProducer, publications: Sequence[Publication]) -> None:
    await KafkaPublisher(producer).publish(publications)


async def test_small_publications_share_one_batch_per_partition_in_their_order() -> None:
    a, b = keys_on_distinct_partitions(2)
    pubs = [Publication("t.results", key, f"{key.decode()}-{n}".encode()) for n in range(3) for key in (a, b)]
    pubs.append(Publication("t.audit", a, b"audit", (("traceparent", b"00-x"),)))
    producer = FakeProducer()
    await publish(producer, pubs)
    assert producer.per_partition() == expected(pubs)
    assert [w.how for w in producer.wire] == ["batch"] * 3  # one per topic and partition
    assert producer.lookups == ["t.results", "t.audit"]  # partitions looked up once per topic a call
    audit = next(w for w in producer.wire if w.topic == "t.audit")
    assert audit.keys == [a] and audit.headers == [[("traceparent", b"00-x")]]


async def test_a_large_publication_goes_alone_after_its_partitions_open_batch() -> None:
    k, other = keys_on_distinct_partitions(2)
    large, edge = b"L" * (BATCHED_BYTES + 1), b"E" * BATCHED_BYTES
    pubs = [
        Publication("t", k, b"s0"),
        Publication("t", other, b"o0"),
        Publication("t", k, b"s1"),
        Publication("t", k, large),
        Publication("t", other, b"o1"),
        Publication("t", k, b"s2"),
        Publication("t", k, edge),  # exactly BATCHED_BYTES: still batched
        Publication("t", k, large),
    ]
    producer = FakeProducer()
    await publish(producer, pubs)
    assert producer.per_partition() == expected(pubs)
    assert producer.shape("t", partition_of(k)) == [
        ("batch", [b"s0", b"s1"]),
        ("send", [large]),
        ("batch", [b"s2", edge]),
        ("send", [large]),
    ]
    assert producer.shape("t", partition_of(other)) == [("batch", [b"o0", b"o1"])]  # not split by k's


async def test_a_large_publication_first_on_its_partition_sends_no_empty_batch() -> None:
    (k,) = keys_on_distinct_partitions(1)
    large = b"L" * (3 * BATCHED_BYTES)
    producer = FakeProducer()
    await publish(producer, [Publication("t", k, large), Publication("t", k, b"s0")])
    assert producer.shape("t", partition_of(k)) == [("send", [large]), ("batch", [b"s0"])]


async def test_a_full_batch_is_sent_and_the_next_ones_go_in_a_new_batch() -> None:
    (k,) = keys_on_distinct_partitions(1)
    values = [bytes([65 + n]) * 40 for n in range(5)]
    producer = FakeProducer(capacity=100)  # two of them fit
    await publish(producer, [Publication("t", k, v) for v in values])
    assert producer.shape("t", partition_of(k)) == [
        ("batch", values[0:2]),
        ("batch", values[2:4]),
        ("batch", values[4:5]),
    ]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["t.results", "t.audit"]),
            st.integers(min_value=0, max_value=7),
            st.sampled_from([1, 10, 500, BATCHED_BYTES, BATCHED_BYTES + 1, 3 * BATCHED_BYTES]),
        ),
        max_size=60,
    ),
    st.sampled_from([64, 1024, 16 * 1024]),
)
async def test_every_partition_gets_its_publications_once_and_in_order_whatever_their_sizes(
    plan: list[tuple[str, int, int]], capacity: int
) -> None:
    pubs = [
        Publication(topic, f"k{key}".encode(), f"{n:03d}".encode() + b"." * size)
        for n, (topic, key, size) in enumerate(plan)
    ]
    producer = FakeProducer(capacity=capacity)
    await publish(producer, pubs)
    assert producer.per_partition() == expected(pubs)
    for w in producer.wire:
        if w.how == "batch":
            assert all(len(v) <= BATCHED_BYTES for v in w.values)
            assert len(w.values) == 1 or sum(map(len, w.values)) <= capacity
        else:
            assert len(w.values[0]) > BATCHED_BYTES  # an empty batch takes any small one


async def test_publish_returns_once_every_batch_and_send_is_acknowledged() -> None:
    a, b = keys_on_distinct_partitions(2)
    producer = FakeProducer(hold=True)
    pubs = [Publication("t", a, b"a0"), Publication("t", b, b"b" * (BATCHED_BYTES + 1))]
    publishing = asyncio.create_task(publish(producer, pubs))
    while len(producer.acks) < 2:  # both requests go out before any ack is awaited
        assert not publishing.done()
        await asyncio.sleep(0)
    producer.acks[0].set_result(None)
    for _ in range(10):
        await asyncio.sleep(0)
    assert not publishing.done()  # one ack still missing
    producer.acks[1].set_result(None)
    await asyncio.wait_for(publishing, 5)


async def test_a_failed_ack_or_a_refused_send_fails_the_publish() -> None:
    (k,) = keys_on_distinct_partitions(1)
    producer = FakeProducer(hold=True)
    publishing = asyncio.create_task(publish(producer, [Publication("t", k, b"x")]))
    await asyncio.wait_for(producer.requested.wait(), 5)
    producer.acks[0].set_exception(KafkaTimeoutError())
    with pytest.raises(KafkaTimeoutError):
        await publishing  # the rows stay in the outbox: the relay publishes them again
    producer = FakeProducer()
    producer.fail = MessageSizeTooLargeError("too large")
    with pytest.raises(MessageSizeTooLargeError):  # the relay parks a row that fails so
        await publish(producer, [Publication("t", k, b"x" * (BATCHED_BYTES + 1))])


async def test_the_publisher_starts_and_stops_the_producer_it_owns() -> None:
    producer = FakeProducer()
    publisher = KafkaPublisher(producer)
    await publisher.start()
    assert producer.started and not producer.stopped
    await publisher.stop()
    assert producer.stopped


async def test_connecting_to_builds_an_aiokafka_producer_not_yet_started() -> None:
    publisher = KafkaPublisher.connecting_to("127.0.0.1:1", **producer_options(Settings()))
    assert isinstance(publisher.producer, AIOKafkaProducer)
    await publisher.stop()  # never started: nothing to close, and no error


async def test_a_producer_whose_sequence_the_broker_rejects_is_replaced_once() -> None:
    """A broker that lost its producer state (noida-db after a SIGKILL; Kafka after expiring
    it) answers OutOfOrderSequenceNumber to every send of that producer, forever: the
    publisher fails that publish (the rows stay in the outbox) and moves to a new producer."""
    (k,) = keys_on_distinct_partitions(1)
    made: list[FakeProducer] = []

    def renew() -> FakeProducer:
        made.append(FakeProducer())
        return made[-1]

    stale = FakeProducer(hold=True)
    publisher = KafkaPublisher(stale, renew=renew)
    first = asyncio.create_task(publisher.publish([Publication("t", k, b"1")]))
    second = asyncio.create_task(publisher.publish([Publication("t", k, b"2")]))

    async def both_sent() -> None:
        while len(stale.acks) < 2:  # noqa: ASYNC110 (a few loop turns; no event to wait on)
            await asyncio.sleep(0)

    await asyncio.wait_for(both_sent(), 5)
    for ack in stale.acks:
        ack.set_exception(OutOfOrderSequenceNumber())
    for publishing in (first, second):
        with pytest.raises(OutOfOrderSequenceNumber):
            await publishing
    assert len(made) == 1 and publisher.producer is made[0] and made[0].started
    assert publisher.renewals == 1
    await publisher.publish([Publication("t", k, b"again")])
    assert made[0].per_partition() == {("t", partition_of(k)): [b"again"]}
    await publisher.stop()
    assert stale.stopped and made[0].stopped  # the stale one closed in the background


class _RefusesBig:
    """A publisher that refuses, for good, any publish holding the value ``b"big"``."""

    def __init__(self) -> None:
        self.published: list[bytes] = []

    async def publish(self, publications: Sequence[Publication]) -> None:
        if any(p.value == b"big" for p in publications):
            raise MessageSizeTooLargeError()
        self.published += [p.value for p in publications]


async def test_an_acked_submission_that_can_never_go_fails_alone_and_its_neighbours_are_acked() -> None:
    """A Kafka command's events have no outbox row: the consumer waits for their ack. One
    that the broker refuses for good must not take the others of its send down with it."""
    from infra.kafka.publisher import OutboxCleaner, PublishQueue

    class NoStore:
        async def mark_published(self, ids: Sequence[int]) -> None:
            pass

    publisher = _RefusesBig()
    queue = PublishQueue(publisher, OutboxCleaner(NoStore()))  # type: ignore[arg-type]
    futures = [
        await queue.submit([Publication("t", b"k", value)], [], acked=True) for value in (b"a", b"big", b"c")
    ]
    queue.start()
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 5)  # type: ignore[arg-type]
    await queue.stop()
    assert [type(r).__name__ for r in results] == ["NoneType", "MessageSizeTooLargeError", "NoneType"]
    assert sorted(publisher.published) == [b"a", b"c"]
