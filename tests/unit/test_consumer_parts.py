"""The consumer's bookkeeping without a broker: the per-partition offset watermark (an offset
is committable only once every offset before it is done) and the outbox cleaner."""

from __future__ import annotations

import random
from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from infra.kafka.consumer import _Partition
from infra.kafka.publisher import OutboxCleaner


def test_the_watermark_waits_for_the_oldest_unfinished_offset() -> None:
    part = _Partition()
    for offset in (10, 11, 12):
        part.add(offset)
    part.done(12)
    part.done(11)
    assert part.committable is None  # 10 still runs: nothing may be committed
    assert part.oldest_unfinished() is not None
    part.done(10)
    assert part.committable == 13 and not part.pending and part.oldest_unfinished() is None
    part.done(99)  # an offset it never saw (revoked and refetched): changes nothing
    assert part.committable == 13


@given(st.integers(min_value=1, max_value=60), st.randoms(use_true_random=False))
def test_whatever_order_offsets_finish_in_the_commit_never_passes_an_unfinished_one(
    n: int, rnd: random.Random
) -> None:
    part = _Partition()
    for offset in range(n):
        part.add(offset)
    order = list(range(n))
    rnd.shuffle(order)
    finished: set[int] = set()
    for offset in order:
        part.done(offset)
        finished.add(offset)
        head = 0
        while head in finished:
            head += 1
        assert part.committable == (head if head else None)
    assert part.committable == n


class _Store:
    def __init__(self, fail: int = 0) -> None:
        self.deleted: list[int] = []
        self.fail = fail

    async def mark_published(self, ids: Sequence[int]) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("store away")
        self.deleted.extend(ids)


async def test_the_cleaner_deletes_in_batches_and_a_failure_costs_duplicates_not_losses() -> None:
    store = _Store(fail=1)
    cleaner = OutboxCleaner(store)  # type: ignore[arg-type]
    cleaner.add([1, 2])
    await cleaner.flush()  # the store fails: the rows stay in the outbox for the relay
    assert store.deleted == []
    cleaner.add([3])
    cleaner.add([4, 5])
    await cleaner.flush()
    assert store.deleted == [3, 4, 5]
    await cleaner.flush()  # nothing new: no call
    assert store.deleted == [3, 4, 5]
    cleaner.add([6])
    await cleaner.stop()  # stopping flushes what is left
    assert store.deleted == [3, 4, 5, 6]
