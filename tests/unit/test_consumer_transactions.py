"""Exactly-once mode in the command consumer, on the fakes of ``test_consumer_scheduling``:
a partition's events wait for its watermark and go with its offset in one transaction, in
offset order; a failed transaction keeps them for the next; a fenced partition is dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from infra.kafka.transactions import Fenced
from runner.store import Publication
from tests.unit.test_consumer_scheduling import P0, P1, FakeExecutor, fetch, message, running, settle, until


class FakeTransactions:
    """Records each transaction as (partition, event values, offset); ``failures`` are raised
    by the next commits, one each."""

    def __init__(self) -> None:
        self.committed: list[tuple[TopicPartition, list[bytes], int]] = []
        self.opened: list[TopicPartition] = []
        self.failures: list[BaseException] = []
        self.gate: asyncio.Event | None = None  # commits wait for it when set

    def owns(self, tp: TopicPartition) -> bool:
        return tp in self.opened

    async def open(self, tp: TopicPartition) -> None:
        self.opened.append(tp)

    async def close(self, tp: TopicPartition) -> None:
        if tp in self.opened:
            self.opened.remove(tp)

    async def close_all(self) -> None:
        self.opened.clear()

    async def commit(self, tp: TopicPartition, publications: Sequence[Publication], offset: int) -> None:
        if self.failures:
            raise self.failures.pop(0)
        if self.gate is not None:
            await self.gate.wait()
        self.committed.append((tp, [p.value for p in publications], offset))

    def events(self, tp: TopicPartition) -> list[bytes]:
        return [v for t, values, _ in self.committed if t == tp for v in values]


class DirectExecutor(FakeExecutor):
    """Outcomes of Kafka commands: events stored with the run, for the consumer to publish."""

    async def execute_many(self, batch: list[tuple[Any, str | None]], mode: Any = None) -> list[Any]:
        outcomes = await super().execute_many(batch, mode)
        for outcome in outcomes:
            outcome.direct, outcome.outbox_ids = True, []
        return outcomes


def transactional(**options: Any) -> Any:
    txns = FakeTransactions()
    return txns, running(transactions=txns, executor=DirectExecutor(), **options)


async def test_events_wait_for_the_watermark_and_go_with_their_offset_in_offset_order() -> None:
    txns, harness = transactional(batch_size=1, max_batches=4)
    async with harness as h:
        h.executor.gate("a0")
        await h.kafka.fetches.put(fetch(message(P0, 0, "a0"), message(P0, 1, "b0"), message(P1, 0, "c0")))
        await until(lambda: "b0" in h.executor.done and any(t == P1 for t, _, _ in txns.committed))
        await settle()
        assert txns.events(P0) == []  # b0 is done, but a0 before it is not: nothing of P0 goes
        assert txns.committed == [(P1, [b"c0"], 1)]
        h.executor.open("a0")
        await until(lambda: txns.events(P0) == [b"a0", b"b0"])
        assert txns.committed[-1][2] == 2  # the offset past both, in the same transaction
    assert h.publisher.published == []  # nothing went outside a transaction
    assert h.kafka.commits == []  # and no offset outside one
    assert txns.opened == []  # closed when stopping


async def test_a_failed_transaction_keeps_its_events_for_the_next() -> None:
    txns, harness = transactional()
    txns.failures = [KafkaConnectionError("broker away")]
    async with harness as h:
        await h.kafka.fetches.put(fetch(message(P0, 0, "a0"), message(P0, 1, "b0")))
        await until(lambda: txns.committed != [])
        assert txns.events(P0) == [b"a0", b"b0"] and txns.committed[-1][2] == 2


async def test_a_fenced_partition_is_dropped_and_paused_and_its_events_never_go() -> None:
    txns, harness = transactional()
    txns.failures = [Fenced("t.commands/0: another owner")]
    paused: list[TopicPartition] = []
    async with harness as h:
        h.kafka.pause = paused.append  # type: ignore[attr-defined]
        h.kafka.resume = lambda tp: None  # type: ignore[attr-defined]
        await h.kafka.fetches.put(fetch(message(P0, 0, "a0")))
        await until(lambda: paused == [P0])
        assert P0 not in h.consumer._parts  # its next owner (or this one, later) fetches again
        await asyncio.sleep(0)
    assert txns.committed == []


async def test_a_revoke_during_a_transaction_round_sends_no_event_twice() -> None:
    txns, harness = transactional()
    txns.gate = asyncio.Event()
    async with harness as h:
        await h.kafka.fetches.put(fetch(message(P0, 0, "a0")))
        await until(lambda: "a0" in h.executor.done)
        await settle()  # the loop's round is in its transaction, held at the gate
        revoking = asyncio.create_task(h.revoke(P0))
        await settle()
        txns.gate.set()
        await revoking
    assert txns.events(P0) == [b"a0"]  # once: the drain's round saw what the loop's had sent
