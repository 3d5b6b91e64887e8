"""``PacedFetch`` on a fake consumer: on a broker that answers every fetch at once, fetch
rounds come at most once per interval, the partitions paused in between (no fetch while
paused); nothing the caller paused, or a rebalance took, is resumed by it."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from runner.client import PacedFetch

A, B = TopicPartition("t", 0), TopicPartition("t", 1)


class FakeConsumer:
    """Answers ``getmany`` from a script of rounds; records pauses, resumes and timeouts."""

    def __init__(self, rounds: list[dict[Any, list[Any]]], assigned: set[TopicPartition]) -> None:
        self.rounds = rounds
        self.assigned = set(assigned)
        self.paused_now: set[TopicPartition] = set()
        self.timeouts: list[int] = []
        self.log: list[tuple[str, frozenset[TopicPartition]]] = []
        self.on_pause: Any = None

    async def getmany(self, *, timeout_ms: int, max_records: int | None = None) -> dict[Any, list[Any]]:
        self.timeouts.append(timeout_ms)
        return self.rounds.pop(0) if self.rounds else {}

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_now)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_now |= set(tps)
        self.log.append(("pause", frozenset(tps)))
        if self.on_pause is not None:
            self.on_pause()

    def resume(self, *tps: TopicPartition) -> None:
        assert set(tps) <= self.assigned, "resumed a partition no longer assigned"
        self.paused_now -= set(tps)
        self.log.append(("resume", frozenset(tps)))


async def test_off_is_plain_getmany() -> None:
    consumer = FakeConsumer([{}], {A, B})
    assert await PacedFetch(consumer).getmany(timeout_ms=100) == {}  # type: ignore[arg-type]
    assert consumer.timeouts == [100] and consumer.log == []


async def test_the_first_round_asks_at_once_and_data_returns_at_once() -> None:
    consumer = FakeConsumer([{A: ["m"]}], {A, B})
    got = await PacedFetch(consumer, 5).getmany(timeout_ms=100)  # type: ignore[arg-type]
    assert got == {A: ["m"]} and consumer.log == []


async def test_the_next_round_waits_out_the_interval_paused() -> None:
    """What arrives meanwhile waits in the broker, to come in the next round's one answer."""
    consumer = FakeConsumer([{A: ["m1"]}, {A: ["m2", "m3"]}], {A, B})
    paced = PacedFetch(consumer, 50)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    await paced.getmany(timeout_ms=1000)
    asked = loop.time()
    assert await paced.getmany(timeout_ms=1000) == {A: ["m2", "m3"]}
    assert loop.time() - asked >= 0.045
    assert consumer.log == [("pause", frozenset({A, B})), ("resume", frozenset({A, B}))]
    assert consumer.paused_now == set()


async def test_empty_rounds_pause_between_them_until_data_comes() -> None:
    consumer = FakeConsumer([{}, {}, {B: ["m"]}], {A, B})
    got = await PacedFetch(consumer, 1).getmany(timeout_ms=1000)  # type: ignore[arg-type]
    assert got == {B: ["m"]}
    assert consumer.log == [("pause", frozenset({A, B})), ("resume", frozenset({A, B}))] * 2
    assert consumer.timeouts == [1, 1, 1] and consumer.paused_now == set()


async def test_gives_up_at_its_timeout() -> None:
    consumer = FakeConsumer([], {A})
    assert await PacedFetch(consumer, 5).getmany(timeout_ms=20) == {}  # type: ignore[arg-type]
    assert 2 <= len(consumer.timeouts) <= 5 and consumer.paused_now == set()


async def test_what_the_caller_paused_stays_paused() -> None:
    consumer = FakeConsumer([{}, {A: ["m"]}], {A, B})
    consumer.paused_now = {B}
    await PacedFetch(consumer, 1).getmany(timeout_ms=1000)  # type: ignore[arg-type]
    assert consumer.log == [("pause", frozenset({A})), ("resume", frozenset({A}))]
    assert consumer.paused_now == {B}


async def test_a_partition_revoked_during_the_pause_is_not_resumed() -> None:
    consumer = FakeConsumer([{}, {A: ["m"]}], {A, B})
    consumer.on_pause = lambda: consumer.assigned.discard(B)  # a rebalance takes B meanwhile
    await PacedFetch(consumer, 1).getmany(timeout_ms=1000)  # type: ignore[arg-type]
    assert consumer.log[-1] == ("resume", frozenset({A}))
