"""The command consumer's scheduling and rebalance drain without a broker: a fake aiokafka
consumer hands it fetched batches, a fake executor records what ran, when, and alongside what.

What ``CommandConsumer`` promises (its module docstring): one key's commands run one after
another in offset order, different keys run together in batches and a slow or failing key
holds up no other; a partition's committed offset passes a message only once it is done; on
revocation the revoked partitions' in-flight work finishes and is committed before the
listener returns, and what was fetched from them but not started never starts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

from infra.kafka.consumer import CommandConsumer
from runner.envelope import command
from runner.executor import Undeliverable
from runner.executor.outcomes import Recorder
from runner.executor.retries import Retrier
from runner.store import OutcomeRecord, Publication

TOPIC = "t.commands"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


async def until(done: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``done`` until it holds, failing past ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.002)


async def settle() -> None:
    """Let every task that can run, run (a few passes of the event loop, no waiting)."""
    for _ in range(50):
        await asyncio.sleep(0)


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def message(tp: TopicPartition, offset: int, name: str) -> Message:
    """A command named ``name`` whose Kafka key is its first letter (``a0``, ``a1``: key ``a``)."""
    value = command("test.op", {"name": name}).encode()
    return Message(tp.topic, tp.partition, offset, name[0].encode(), value)


def fetch(*messages: Message) -> dict[TopicPartition, list[Message]]:
    fetched: dict[TopicPartition, list[Message]] = {}
    for m in messages:
        fetched.setdefault(TopicPartition(m.topic, m.partition), []).append(m)
    return fetched


class FakeKafka:
    """What ``CommandConsumer`` uses of an ``AIOKafkaConsumer``. ``getmany`` returns only when
    the test hands it a fetch (``fetches``), never on a timeout: nothing may rely on the fetch
    loop waking up on its own to move work along."""

    def __init__(self) -> None:
        self.fetches: asyncio.Queue[dict[TopicPartition, list[Message]]] = asyncio.Queue()
        self.commits: list[dict[TopicPartition, int]] = []
        self.listener: Any = None

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Message]]:
        fetched = await self.fetches.get()
        assert sum(map(len, fetched.values())) <= max_records, "aiokafka returns at most max_records"
        return fetched

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def committed(self, tp: TopicPartition) -> int | None:
        return next((c[tp] for c in reversed(self.commits) if tp in c), None)

    def assignment(self) -> set[TopicPartition]:
        return {P0, P1}

    def highwater(self, tp: TopicPartition) -> int | None:
        return None


class Refused(Exception):
    """What the fake store refuses for good (a command's own fault)."""


class FakeStore:
    transient_errors: tuple[type[BaseException], ...] = (ConnectionError,)

    def __init__(self) -> None:
        self.recorded: list[OutcomeRecord] = []

    def refuses(self, exc: BaseException) -> bool:
        return isinstance(exc, Refused)

    async def record(self, record: OutcomeRecord) -> list[int]:
        self.recorded.append(record)
        return [len(self.recorded)]

    async def mark_published(self, ids: Sequence[int]) -> None:
        pass


@dataclass
class Outcome:
    publications: tuple[Publication, ...]
    outbox_ids: list[int]
    direct: bool = False
    exhausted: int = 0


class FakeExecutor:
    """Runs commands by name: ``gates`` hold named ones until set, ``failing`` ones raise."""

    source = "test"
    audit_topic = "t.audit"
    authenticator = None

    def __init__(self) -> None:
        self.store = FakeStore()
        self.batches: list[list[str]] = []  # the names of each execute_many call, in call order
        self.done: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.failing: set[str] = set()
        self.running: set[str] = set()  # keys with a command running now
        self.overlaps: list[str] = []  # commands that started while their key had one running
        self.most_at_once = 0

    async def dead_letter(
        self, message: Undeliverable, reason: str, **how: Any
    ) -> tuple[OutcomeRecord, list[int]]:
        """The executor's own dead-letter record, kept by the fake store."""
        recorder = Recorder(
            self.store,  # type: ignore[arg-type]
            Retrier((), asyncio.sleep),
            source=self.source,
            results_topic="t.results",
            audit_topic=self.audit_topic,
            metrics=None,
        )
        record = recorder.dead_letter(message, reason, **how)
        return record, await self.store.record(record)

    def gate(self, *names: str) -> None:
        for name in names:
            self.gates[name] = asyncio.Event()

    def open(self, *names: str) -> None:
        for name in names:
            self.gates[name].set()

    async def execute_many(self, batch: list[tuple[Any, str | None]], mode: Any = None) -> list[Outcome]:
        names = [c.data["name"] for c, _ in batch]
        keys = [name[0] for name in names]
        self.batches.append(names)
        self.overlaps += [n for n, k in zip(names, keys, strict=True) if k in self.running]
        self.overlaps += [n for i, n in enumerate(names) if n[0] in keys[:i]]
        self.running |= set(keys)
        self.most_at_once = max(self.most_at_once, len(self.running))
        try:
            for name in names:
                if name in self.gates:
                    await self.gates[name].wait()
            if self.failing & set(names):
                raise Refused(f"refused {sorted(self.failing & set(names))}")
            self.done += names
            return [
                Outcome((Publication("t.results", n[0].encode(), n.encode()),), [i])
                for i, n in enumerate(names)
            ]
        finally:
            self.running -= set(keys)


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[Publication] = []

    async def publish(self, publications: Sequence[Publication]) -> None:
        self.published += publications


@dataclass
class Harness:
    consumer: CommandConsumer
    kafka: FakeKafka
    executor: FakeExecutor
    publisher: FakePublisher
    stop: asyncio.Event
    task: asyncio.Task[None]

    def order_of(self, key: str) -> list[str]:
        return [name for name in self.executor.done if name[0] == key]

    def started(self) -> set[str]:
        return {name for names in self.executor.batches for name in names}

    async def revoke(self, *partitions: TopicPartition) -> None:
        await self.kafka.listener.on_partitions_revoked(list(partitions))


@contextlib.asynccontextmanager
async def running(executor: FakeExecutor | None = None, **options: Any) -> AsyncIterator[Harness]:
    """A consumer on fakes, fetching until the block ends (then stopped: drained, committed)."""
    kafka, publisher = FakeKafka(), FakePublisher()
    executor = executor or FakeExecutor()
    consumer = CommandConsumer(
        executor,  # type: ignore[arg-type]
        publisher,  # type: ignore[arg-type]
        lambda **_: kafka,
        topic=TOPIC,
        group_id="g",
        dlq_topic="t.dlq",
        commit_interval=0.005,
        **options,
    )
    stop = asyncio.Event()
    await consumer.start()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield Harness(consumer, kafka, executor, publisher, stop, task)
    finally:
        stop.set()
        kafka.fetches.put_nowait({})  # wake the fetch loop to see the stop
        await asyncio.wait_for(task, 10)


async def test_one_keys_commands_run_in_offset_order_one_at_a_time_and_keys_share_batches() -> None:
    async with running(batch_size=8, max_batches=2) as h:
        names = [f"{key}{n}" for n in range(4) for key in "abc"]  # a0 b0 c0 a1 b1 c1 ...
        on_p0 = [message(P0, offset, name) for offset, name in enumerate(n for n in names if n[0] != "c")]
        on_p1 = [message(P1, offset, name) for offset, name in enumerate(n for n in names if n[0] == "c")]
        await h.kafka.fetches.put(fetch(*on_p0, *on_p1))
        await until(lambda: len(h.executor.done) == 12)
        for key in "abc":
            assert h.order_of(key) == [f"{key}{n}" for n in range(4)]
        assert h.executor.overlaps == []  # never two of one key at once, in a batch or across
        assert h.executor.batches[0] == ["a0", "b0", "c0"]  # the ready heads of three keys
        assert all(len(batch) == 3 for batch in h.executor.batches)
        await until(lambda: h.kafka.committed(P0) == 8 and h.kafka.committed(P1) == 4)
        assert [p.value for p in h.publisher.published if p.key == b"a"] == [b"a0", b"a1", b"a2", b"a3"]
    assert h.consumer.processed == 12 and h.consumer.in_flight == 0


async def test_a_slow_key_holds_up_its_own_commands_and_no_others() -> None:
    async with running(batch_size=1, max_batches=2) as h:
        h.executor.gate("s0")
        others = [f"x{n}" for n in range(5)]
        await h.kafka.fetches.put(
            fetch(*(message(P0, off, name) for off, name in enumerate(["s0", "s1", *others])))
        )
        await until(lambda: h.order_of("x") == others)
        assert "s1" not in h.started()  # its key is busy: it waits, in order
        await settle()
        assert h.kafka.committed(P0) is None  # offset 0 is unfinished: nothing may be committed
        h.executor.open("s0")
        await until(lambda: h.order_of("s") == ["s0", "s1"])
        await until(lambda: h.kafka.committed(P0) == 7)
    assert h.executor.overlaps == []


async def test_a_batch_that_ends_starts_the_next_itself_when_it_held_the_last_batch_slot() -> None:
    """With every batch slot taken, the fetch loop is not there to start the next batch (it
    waits in ``getmany``; here it is never woken): the batch that ends must."""
    async with running(batch_size=1, max_batches=1) as h:
        h.executor.gate("a0", "b0")
        await h.kafka.fetches.put(fetch(message(P0, 0, "a0"), message(P0, 1, "b0"), message(P0, 2, "a1")))
        await until(lambda: "a0" in h.started())
        await settle()
        assert h.started() == {"a0"}  # one batch at a time
        h.executor.open("a0", "b0")
        await until(lambda: sorted(h.executor.done) == ["a0", "a1", "b0"])
        assert h.order_of("a") == ["a0", "a1"]
        await until(lambda: h.kafka.committed(P0) == 3)


async def test_a_failing_command_is_parked_alone_and_its_neighbours_and_its_key_go_on() -> None:
    async with running(batch_size=8, park_after_attempts=1) as h:
        h.executor.failing.add("b0")
        await h.kafka.fetches.put(
            fetch(*(message(P0, off, name) for off, name in enumerate(["a0", "b0", "c0", "b1"])))
        )
        await until(lambda: "b1" in h.executor.done)
        assert h.executor.batches[0] == ["a0", "b0", "c0"]  # fails as a batch...
        assert h.executor.batches[1:4] == [["a0"], ["b0"], ["c0"]]  # ...so each goes alone
        assert sorted(h.executor.done) == ["a0", "b1", "c0"]
        assert h.consumer.parked == 1 and h.consumer.dead_lettered == 1
        await until(lambda: any(p.topic == "t.dlq" for p in h.publisher.published))
        dead = next(p for p in h.publisher.published if p.topic == "t.dlq")
        headers = dict(dead.headers)
        assert headers["dlq-code"] == b"RETRIES_EXHAUSTED" and headers["dlq-offset"] == b"1"
        await until(lambda: h.kafka.committed(P0) == 4)  # parked counts as done: the partition moves on


async def test_a_revoke_returns_once_the_revoked_work_is_done_and_committed() -> None:
    async with running(batch_size=1, max_batches=4) as h:
        h.executor.gate("k0", "o0")
        await h.kafka.fetches.put(
            fetch(message(P0, 0, "k0"), message(P0, 1, "k1"), message(P1, 0, "o0"), message(P1, 1, "o1"))
        )
        await until(lambda: {"k0", "o0"} <= h.started())
        assert h.consumer.in_flight == 4
        revoke = asyncio.create_task(h.revoke(P0))
        await settle()
        assert not revoke.done()  # k0 is still running
        assert h.consumer.in_flight == 3  # k1, fetched and not started, was dropped
        h.executor.open("k0")
        await asyncio.wait_for(revoke, 5)
        assert "k0" in h.executor.done and h.kafka.committed(P0) == 1  # committed before returning
        h.executor.open("o0")  # the partition kept is untouched: its queue goes on
        await until(lambda: h.order_of("o") == ["o0", "o1"])
        await until(lambda: h.kafka.committed(P1) == 2)
        assert "k1" not in h.started()  # the next owner fetches it again from offset 1
        assert h.consumer.in_flight == 0


async def test_what_the_fetch_loop_holds_when_a_revoke_comes_never_starts() -> None:
    """All slots taken, the fetch loop waits holding the rest of a fetched batch; a revoke
    frees slots, and what it holds of the revoked partition must be dropped, not started."""
    async with running(max_in_flight=2, batch_size=1, max_batches=2) as h:
        h.executor.gate("a0", "b0")
        await h.kafka.fetches.put(fetch(message(P0, 0, "a0")))
        await until(lambda: "a0" in h.started())
        await h.kafka.fetches.put(fetch(message(P0, 1, "b0"), message(P0, 2, "c0")))  # c0 waits for a slot
        await until(lambda: {"a0", "b0"} <= h.started())
        revoke = asyncio.create_task(h.revoke(P0))
        await settle()
        h.executor.open("a0", "b0")
        await asyncio.wait_for(revoke, 5)
        assert h.kafka.committed(P0) == 2
        await h.kafka.fetches.put(fetch(message(P1, 0, "z0")))  # the loop has moved on past c0
        await until(lambda: "z0" in h.executor.done)
        assert "c0" not in h.started()
        assert h.consumer.in_flight == 0
        await until(lambda: h.kafka.committed(P1) == 1)
    assert all(c.get(P0, 0) <= 2 for c in h.kafka.commits)


async def test_a_revoke_gives_up_on_work_past_the_drain_timeout_and_commits_none_of_it() -> None:
    async with running(batch_size=1, drain_timeout=0.05) as h:
        h.executor.gate("s0")  # never opened
        await h.kafka.fetches.put(fetch(message(P0, 0, "s0"), message(P0, 1, "t0")))
        await until(lambda: "t0" in h.executor.done and "s0" in h.started())
        await asyncio.wait_for(h.revoke(P0), 5)
        assert "s0" not in h.executor.done and h.consumer.in_flight == 0  # cancelled, slot freed
        assert h.kafka.committed(P0) is None  # offset 0 never finished: 0 and 1 are fetched again


async def test_stopping_finishes_what_runs_commits_it_and_starts_nothing_more() -> None:
    async with running(batch_size=1) as h:
        h.executor.gate("a0")
        await h.kafka.fetches.put(fetch(message(P0, 0, "a0"), message(P0, 1, "a1")))
        await until(lambda: "a0" in h.started())
        h.stop.set()
        await h.kafka.fetches.put({})  # the fetch loop sees the stop
        await until(lambda: h.consumer.in_flight == 1)  # a1, not started, is dropped
        await settle()
        assert not h.task.done()  # a0 still runs: stopping waits for it
        h.executor.open("a0")
        await asyncio.wait_for(h.task, 5)
    assert h.executor.done == ["a0"] and h.kafka.committed(P0) == 1
