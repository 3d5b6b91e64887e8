"""Publishing outbox rows through FastStream's KafkaBroker, and the relay that sweeps leftovers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from faststream.kafka import KafkaBroker

from ..store import OutboxRow, Publication, Store

_log = logging.getLogger("oprunner.publisher")


class KafkaPublisher:
    """Publishes with every send in flight at once, then waits for all acks.

    ``acks="all"``: a result counts as published only when the in-sync replicas have it.
    """

    def __init__(self, broker: KafkaBroker) -> None:
        self.broker = broker

    async def publish(self, publications: Sequence[Publication]) -> None:
        futures = []
        for pub in publications:
            headers = {k: v.decode("latin-1") for k, v in pub.headers}
            futures.append(
                await self.broker.publish(pub.value, pub.topic, key=pub.key, headers=headers, no_confirm=True)
            )
        await asyncio.gather(*futures)


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


class OutboxRelay:
    """Publishes outbox rows a crash left behind: rows older than ``min_age`` seconds, locked
    with ``FOR UPDATE SKIP LOCKED`` so several processes sweep without stepping on each other."""

    def __init__(
        self, store: Any, publisher: KafkaPublisher, *, interval: float = 1.0, min_age: float = 5.0
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.interval = interval
        self.min_age = min_age
        self.published = 0

    async def sweep_once(self, limit: int = 500) -> int:
        rows: Sequence[OutboxRow]
        async with self.store.sweep(limit, self.min_age) as rows:
            if rows:
                await self.publisher.publish([row.publication for row in rows])
        self.published += len(rows)
        return len(rows)

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
