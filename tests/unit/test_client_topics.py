"""How the client and ``oprunner tail`` take a whole topic without a group, on a fake consumer:
they wait for the topic to exist and never name a missing one to the broker (which would
auto-create it with the broker's defaults, not the runner's partitions and replication)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from runner.client import assign_whole_topic


class FakeConsumer:
    """``topics()`` answers from ``appears_after`` calls on; ``subscribe`` assigns the topic's
    partitions at the next turn of the loop, as aiokafka's next metadata update would."""

    def __init__(self, topic: str, partitions: int, appears_after: int | None) -> None:
        self.topic = topic
        self.partitions = partitions
        self.appears_after = appears_after
        self.calls = 0
        self.subscribed: list[str] = []
        self.subscribed_at: int | None = None
        self._assigned: set[TopicPartition] = set()

    async def topics(self) -> set[str]:
        self.calls += 1
        exists = self.appears_after is not None and self.calls > self.appears_after
        return {"other", self.topic} if exists else {"other"}

    def subscribe(self, topics: list[str]) -> None:
        self.subscribed = list(topics)
        self.subscribed_at = self.calls
        every = {TopicPartition(self.topic, p) for p in range(self.partitions)}
        asyncio.get_running_loop().call_soon(self._assigned.update, every)

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)


async def test_a_topic_made_while_waiting_is_taken_whole_and_only_once_it_exists() -> None:
    consumer = FakeConsumer("ops.results", 3, appears_after=2)
    tps = await assign_whole_topic(consumer, "ops.results")  # type: ignore[arg-type]
    assert tps == [TopicPartition("ops.results", p) for p in range(3)]
    assert consumer.subscribed == ["ops.results"] and consumer.subscribed_at == 3


async def test_a_topic_that_never_appears_is_an_error_and_is_never_named_to_the_broker() -> None:
    consumer = FakeConsumer("ops.results", 3, appears_after=None)
    with pytest.raises(TimeoutError, match=r"'ops\.results' does not exist"):
        await assign_whole_topic(consumer, "ops.results", wait=0.2)  # type: ignore[arg-type]
    assert consumer.subscribed == [] and consumer.calls >= 2


async def test_concurrent_first_calls_start_one_results_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    import runner.client as client_module

    made: list[object] = []

    class Consumer:
        def __init__(self, **_: object) -> None:
            made.append(self)

        async def start(self) -> None:
            await asyncio.sleep(0.01)  # both first calls are waiting here at once

        async def stop(self) -> None: ...

        async def seek_to_end(self, *_: object) -> None: ...

        async def position(self, _: object) -> int:
            return 0

        async def getmany(self, **_: object) -> dict[object, list[object]]:
            await asyncio.Event().wait()  # no results arrive
            return {}

    async def whole_topic(consumer: object, topic: str, **_: object) -> list[TopicPartition]:
        return [TopicPartition(topic, 0)]

    monkeypatch.setattr(client_module, "AIOKafkaConsumer", Consumer)
    monkeypatch.setattr(client_module, "assign_whole_topic", whole_topic)
    client = client_module.OperationClient("127.0.0.1:1")
    await asyncio.gather(client._listen(), client._listen())
    assert len(made) == 1
    assert client._reader is not None
    client._reader.cancel()
