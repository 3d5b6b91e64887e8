"""The dead-letter topic, read and replayed for ``GET /ops/dlq`` and ``POST /ops/dlq/replay``.

Each request reads the topic itself, without a consumer group (nothing is committed, so
reading changes nothing for ``oprunner dlq replay``, which keeps its own progress). A replay
sends the message back to the commands topic as it came, without the ``dlq-*`` headers and
without any token: the operator's own token goes back only on what that same operator sent
(``replay_headers``), so replaying never lends an admin's authority to someone else's command.
Replaying an entry twice is harmless: the command keeps its id and idempotency key, so the
second run is answered with the stored result.

A listing shows no raw bytes: a command of a spec installed here is shown as its audit shows
it, its spec's sensitive fields redacted (``redacted_preview``); anything else only by its size
and the SHA-256 of its value. The consumer fetches each value whole anyway, so the listing
parses the whole value (as big as the topic holds: half the commands topic's limit) and keeps
only what it shows.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition

from runner import _json
from runner.client import assign_whole_topic
from runner.envelope import MAX_MESSAGE_BYTES, parse_command
from runner.errors import EnvelopeError, UnknownOperation
from runner.model import redact
from runner.registry import OperationRegistry
from runner.store import Publication

PREVIEW_BYTES = 1024
"""A listing shows at most this much of each redacted command."""
PARSED_BYTES = MAX_MESSAGE_BYTES
"""A value past this is not parsed for a preview (size and digest only): the runner cuts what
it dead-letters to half ``max_message_bytes``, so only a limit set past 2 MiB reaches it."""
READ_WITHIN = 10.0
Ranges = Callable[[list[TopicPartition], dict[Any, int], dict[Any, int]], dict[Any, tuple[int, int]]]


class Preview(NamedTuple):
    """A dead letter's command as shown: JSON text, sensitive fields redacted; ``cut`` when it
    was longer than ``PREVIEW_BYTES`` (then the text is not whole JSON)."""

    text: str
    cut: bool


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int
    offset: int
    timestamp: int  # ms, the broker's
    key: bytes | None
    value: bytes  # whole from ``find``; none in a listing (``newest``), which keeps what it shows
    headers: tuple[tuple[str, bytes], ...]
    size: int = -1  # the value's bytes on the topic; -1: len(value)
    sha256: str = ""  # of the whole value on the topic; "": of ``value``
    preview: Preview | None = None  # a listing's: None when it cannot be shown redacted

    @property
    def bytes(self) -> int:
        return self.size if self.size >= 0 else len(self.value)

    @property
    def digest(self) -> str:
        return self.sha256 or hashlib.sha256(self.value).hexdigest()

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
            "sha256": self.digest,
            "preview": self.preview.text if self.preview is not None else None,
            "previewCut": self.preview is not None and self.preview.cut,
        }


Show = Callable[[DeadLetter, bytes], Preview | None]
"""What a listing shows of a dead letter, given its whole value (``redacted_preview``, or None
for one the asker will not see)."""


def redacted_preview(value: bytes, registry: OperationRegistry) -> Preview | None:
    """The command in ``value`` as the audit shows a command: its data with its spec's
    sensitive fields redacted (only the envelope's known attributes kept), compact JSON, cut
    to ``PREVIEW_BYTES``. None when it cannot be shown that way: not a command (malformed, or
    cut short when dead-lettered), or of no spec installed here, whose sensitive fields are
    unknown."""
    try:
        command = parse_command(value, max_bytes=PARSED_BYTES)
        spec = registry.get(command.type, command.opversion).spec
        text = _json.dumps(replace(command, data=redact(spec.io.input, command.data)).to_json())
    except (EnvelopeError, UnknownOperation, TypeError, ValueError, RecursionError):
        return None
    # orjson writes UTF-8: "ignore" drops only a character the cut split
    return Preview(text[:PREVIEW_BYTES].decode("utf-8", "ignore"), len(text) > PREVIEW_BYTES)


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
        self, ranges: Ranges, *, show: Show | None = None, keep: Callable[[int, int], bool] | None = None
    ) -> list[DeadLetter]:
        """Read each partition over the ``[start, stop)`` that ``ranges(partitions, begin,
        end)`` gives it (bounded by the end offsets at the start). With ``show``, a listing:
        each letter keeps its size, digest and what ``show`` makes of it, not its value."""
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
                    for m in messages:
                        if m.offset >= stop or (keep is not None and not keep(tp.partition, m.offset)):
                            continue
                        value = m.value or b""
                        headers = tuple((k, v or b"") for k, v in m.headers or ())
                        letter = DeadLetter(tp.partition, m.offset, m.timestamp, m.key, value, headers)
                        if show is not None:
                            digest = hashlib.sha256(value).hexdigest()
                            shown = show(letter, value)
                            letter = replace(letter, value=b"", size=len(value), sha256=digest, preview=shown)
                            await asyncio.sleep(0)  # one value parsed at a time: the loop goes on between
                        out.append(letter)
                    if messages and messages[-1].offset + 1 >= stop:
                        consumer.pause(tp)  # its range is read: fetch nothing more of it
            return out
        finally:
            await consumer.stop()

    async def newest(self, limit: int, show: Show) -> list[DeadLetter]:
        """The last ``limit`` of each partition, newest first, each as ``show`` shows it."""
        letters = await self._reading(
            lambda tps, begin, end: {tp: (end[tp] - limit, end[tp]) for tp in tps}, show=show
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
