"""Exactly-once delivery to ``read_committed`` subscribers: a command's result and audit
events and the offset past it commit in one Kafka transaction (``OPRUNNER_KAFKA_EXACTLY_ONCE``).

Without it, a crash after the broker acknowledged the events and before the offset commit
redelivers the command, whose completed claim publishes its stored events again (same ids,
published twice). With it, the events of a partition's finished prefix and that prefix's
offset go in one transaction: a crash before its commit leaves the events aborted (a
``read_committed`` reader never sees them) and the offset where it was, so the redelivery
publishes them once, in the next owner's transaction.

Fencing. A process that lost its partitions without knowing it (paused past its session, cut
off) must not commit a transaction after the new owner's. aiokafka's
``send_offsets_to_transaction`` sends no consumer-group generation (KIP-447), so the broker
cannot fence by group membership; each input partition therefore has its own transactional
producer, ``transactional_id = <group>.<topic>.<partition>``. The owner opens it when the
partition is assigned, and that open (``InitProducerId``) bumps the id's epoch: the previous
owner's open transaction is aborted and its next request is answered ``ProducerFenced``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import ProducerFenced

from runner.store import Publication

from .publisher import KafkaPublisher, TransactionalProducer

_log = logging.getLogger("oprunner.transactions")


class Fenced(RuntimeError):
    """Another producer holds this partition's transactional id now: this process no longer
    owns the partition, whatever its consumer believes."""


def transactional_id(group_id: str, tp: TopicPartition) -> str:
    """The one id every owner of ``tp`` in ``group_id`` uses, so each fences the one before."""
    return f"{group_id}.{tp.topic}.{tp.partition}"


class PartitionTransactions:
    """One transactional producer per assigned input partition, and the transaction that
    publishes a finished prefix's events with its offset."""

    def __init__(
        self,
        publisher: KafkaPublisher,
        new_producer: Callable[[str], TransactionalProducer],
        *,
        group_id: str,
    ) -> None:
        self.publisher = publisher  # its batching (one record batch per output partition)
        self.new_producer = new_producer
        self.group_id = group_id
        self.transactions = 0
        self._producers: dict[TopicPartition, TransactionalProducer] = {}
        self._locks: dict[TopicPartition, asyncio.Lock] = {}

    @classmethod
    def connecting_to(
        cls, publisher: KafkaPublisher, bootstrap: str, *, group_id: str, **options: Any
    ) -> PartitionTransactions:
        """Producers on ``bootstrap`` with the publisher's options (idempotence is implied)."""
        options = {k: v for k, v in options.items() if k != "enable_idempotence"}

        def new(tid: str) -> TransactionalProducer:
            producer: TransactionalProducer = AIOKafkaProducer(
                bootstrap_servers=bootstrap, transactional_id=tid, **options
            )
            return producer

        return cls(publisher, new, group_id=group_id)

    def owns(self, tp: TopicPartition) -> bool:
        return tp in self._producers

    async def open(self, tp: TopicPartition) -> None:
        """Start ``tp``'s producer, fencing every earlier one with its id; idempotent."""
        if tp in self._producers:
            return
        producer = self.new_producer(transactional_id(self.group_id, tp))
        try:
            await producer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        self._producers[tp] = producer
        self._locks.setdefault(tp, asyncio.Lock())

    async def close(self, tp: TopicPartition) -> None:
        producer = self._producers.pop(tp, None)
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 10)

    async def close_all(self) -> None:
        for tp in list(self._producers):
            await self.close(tp)

    async def commit(self, tp: TopicPartition, publications: Sequence[Publication], offset: int) -> None:
        """Publish ``publications`` and commit ``offset`` for ``tp`` atomically.

        Raises ``Fenced`` when another owner took the id or the producer cannot go on (it is
        closed; ``open`` makes a new one), and whatever else the broker answered (the
        transaction is aborted: trying again later is safe)."""
        producer = self._producers.get(tp)
        if producer is None:
            raise Fenced(f"{tp.topic}/{tp.partition} has no producer here")
        async with self._locks[tp]:
            try:
                await producer.begin_transaction()
                try:
                    futures = await self.publisher.send_batched(producer, publications)
                    await asyncio.gather(*futures)
                    await producer.send_offsets_to_transaction({tp: offset}, self.group_id)
                    await producer.commit_transaction()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await producer.abort_transaction()
                    raise
            except Exception as exc:
                if isinstance(exc, ProducerFenced) or _fatal(producer):
                    # fenced, or a state aiokafka cannot leave (a transaction past its
                    # timeout is answered the same): this producer is done either way
                    await self.close(tp)
                    raise Fenced(f"{tp.topic}/{tp.partition}: {type(exc).__name__}: {exc}") from exc
                raise
            self.transactions += 1


def _fatal(producer: TransactionalProducer) -> bool:
    """Whether aiokafka's transaction manager is in a state it cannot leave (it has no public
    accessor for it: ``AIOKafkaProducer._txn_manager``)."""
    manager = getattr(producer, "_txn_manager", None)
    return bool(manager is not None and manager.is_fatal_error())
