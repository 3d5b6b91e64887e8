"""The dead-letter topic, read and replayed for ``GET /ops/dlq`` and ``POST /ops/dlq/replay``.

Each request reads the topic itself, without a consumer group (nothing is committed, so
reading changes nothing for ``oprunner dlq replay``, which keeps its own progress). A replay
sends the message back to the commands topic as it came, without the ``dlq-*`` headers and
without any token: the operator's own token goes back only on what that same operator sent
(``replay_headers``), so replaying never lends an admin's authority to someone else's command.
Replaying an entry twice is harmless: the command keeps its id and idempotency key, so the
second run is answered with the stored result.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from runner.client import assign_whole_topic
from runner.store import Publication

PREVIEW_BYTES = 1024
READ_WITHIN = 10.0
Ranges = Callable[[list[TopicPartition], dict[Any, int], dict[Any, int]], dict[Any, tuple[int, int]]]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int
    offset: int
    timestamp: int  # ms, the broker's
    key: bytes | None
    value: bytes  # the first PREVIEW_BYTES only, in a listing (``newest``)
    headers: tuple[tuple[str, bytes], ...]
    size: int = -1  # the value's bytes on the topic; -1: len(value)

    @property
    def bytes(self) -> int:
        return self.size if self.size >= 0 else len(self.value)

    def header(self, name: str) -> str | None:
        """The runner's own ``dlq-*`` header: the last of that name (it adds them after the
        message's own, which it drops since; one written before that fix could be a sender's)."""
        found = [v for k, v in self.headers if k == name]
        return found[-1].decode("utf-8", "replace") if found else None

    @property
    def sender(self) -> dict[str, Any] | None:
        return sender_of(self.headers)

    def to_json(self) -> dict[str, Any]:
        attempts = self.header("dlq-attempts")
        return {
            "partition": self.partition,
            "offset": self.offset,
            "at": datetime.fromtimestamp(self.timestamp / 1000, UTC).isoformat(),
            "code": self.header("dlq-code"),
            "reason": self.header("dlq-reason"),
            "source": "/".join(str(self.header(f"dlq-{n}")) for n in ("topic", "partition", "offset")),
            "bytes": self.bytes,
            "truncated": self.header("dlq-truncated") == "true",
            "originalBytes": _number(self.header("dlq-original-bytes")) or self.bytes,
            "sender": self.sender,
            "attempts": _number(attempts),
            "lastError": self.header("dlq-last-error"),
            "key": self.key.decode("utf-8", "replace") if self.key is not None else None,
            "preview": self.value[:PREVIEW_BYTES].decode("utf-8", "replace"),
        }


def _number(text: str | None) -> int | None:
    return int(text) if text is not None and text.isascii() and text.isdigit() and len(text) < 19 else None


def sender_of(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, Any] | None:
    """Who sent a dead letter, when their token verified (its ``dlq-actor`` header). More than
    one such header means a sender wrote one of them (before the runner dropped those): then
    nobody is known to have sent it, and no token is lent to it."""
    found = [v for k, v in headers if k.lower() == "dlq-actor"]
    if len(found) != 1:
        return None
    raw = found[0]
    try:
        sender = json.loads(raw) if raw else None
    except ValueError:
        return None
    return sender if isinstance(sender, dict) else None


def replay_headers(
    headers: Sequence[tuple[str, bytes | None]], sender: dict[str, Any] | None, token: str | None, owner: Any
) -> list[tuple[str, bytes]]:
    """A dead letter's headers for its replay: no ``dlq-*``, no token; ``token`` only when
    ``owner`` (``(sub, tenant, kind)`` of that token) is who sent it."""
    out = [
        (k, v or b"") for k, v in headers if not k.lower().startswith("dlq-") and k.lower() != "authorization"
    ]
    who = (sender.get("sub"), sender.get("tenant"), sender.get("kind", "user")) if sender else None
    mine = who is not None and owner is not None and who == tuple(owner)
    if token is not None and mine:
        out.append(("authorization", f"Bearer {token}".encode()))
    return out


class KafkaDeadLetters:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        commands_topic: str,
        publish: Callable[[Sequence[Publication]], Awaitable[None]],
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.commands_topic = commands_topic
        self.publish = publish

    async def _reading(
        self, ranges: Ranges, *, whole: bool = True, keep: Callable[[int, int], bool] | None = None
    ) -> list[DeadLetter]:
        """Read each partition over the ``[start, stop)`` that ``ranges(partitions, begin,
        end)`` gives it (bounded by the end offsets at the start)."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = await assign_whole_topic(consumer, self.topic)
            end = await consumer.end_offsets(tps)
            begin = await consumer.beginning_offsets(tps)
            wanted = {
                tp: (max(start, begin[tp]), min(stop, end[tp]))
                for tp, (start, stop) in ranges(tps, begin, end).items()
            }
            for tp in tps:
                consumer.seek(tp, wanted[tp][0] if tp in wanted else end[tp])
            out: list[DeadLetter] = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + READ_WITHIN
            while [tp for tp, (_, stop) in wanted.items() if await consumer.position(tp) < stop]:
                if loop.time() > deadline:
                    raise TimeoutError(f"could not read {self.topic} within {READ_WITHIN:g}s")
                for tp, messages in (await consumer.getmany(timeout_ms=500, max_records=500)).items():
                    stop = wanted.get(tp, (0, 0))[1]
                    out += [
                        DeadLetter(
                            tp.partition,
                            m.offset,
                            m.timestamp,
                            m.key,
                            (m.value or b"") if whole else (m.value or b"")[:PREVIEW_BYTES],
                            tuple((k, v or b"") for k, v in m.headers or ()),
                            len(m.value or b""),
                        )
                        for m in messages
                        if m.offset < stop and (keep is None or keep(tp.partition, m.offset))
                    ]
                    if messages and messages[-1].offset + 1 >= stop:
                        consumer.pause(tp)  # its range is read: fetch nothing more of it
            return out
        finally:
            await consumer.stop()

    async def newest(self, limit: int) -> list[DeadLetter]:
        """The last ``limit`` of each partition, newest first."""
        letters = await self._reading(
            lambda tps, begin, end: {tp: (end[tp] - limit, end[tp]) for tp in tps}, whole=False
        )
        return sorted(letters, key=lambda d: (d.timestamp, d.offset), reverse=True)[:limit]

    async def find(self, where: Sequence[tuple[int, int]]) -> list[DeadLetter]:
        """The entries at these (partition, offset); those not there are left out."""
        wanted = set(where)
        span: dict[int, tuple[int, int]] = {}
        for partition, offset in wanted:
            low, high = span.get(partition, (offset, offset + 1))
            span[partition] = (min(low, offset), max(high, offset + 1))
        letters = await self._reading(
            lambda tps, begin, end: {tp: span[tp.partition] for tp in tps if tp.partition in span},
            keep=lambda partition, offset: (partition, offset) in wanted,  # only those are held
        )
        return letters

    async def replay(self, letters: Sequence[DeadLetter], token: str | None, owner: Any) -> None:
        await self.publish(
            [
                Publication(
                    self.commands_topic,
                    d.key,
                    d.value,
                    tuple(replay_headers(d.headers, d.sender, token, owner)),
                )
                for d in letters
            ]
        )
