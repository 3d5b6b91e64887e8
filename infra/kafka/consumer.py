"""The command consumer: per-key order, cross-key concurrency, offsets committed after durability.

FastStream's subscriber model runs one message after another per subscriber (or acks
out of order with concurrency), and cannot hold an offset back until a later message's
outcome is durable. So this loop drives FastStream's aiokafka consumer directly (built by
``KafkaBroker.connect()``, with the broker's connection settings):

* messages with the same Kafka key run one after another, in offset order; different keys
  run together in batches (``Executor.execute_many``: one transaction, one commit), up to
  ``max_batches`` batches at once and ``max_in_flight`` messages fetched and unfinished
  (then the fetch loop waits: backpressure). Under load the batches fill up while others
  run; when idle, a message runs as soon as it arrives;
* a partition's committed offset only moves past a message once its outcome is committed in
  the store and its result and audit events are acknowledged by the broker (a watermark over
  out-of-order completions). The offset is the outbox of a Kafka command (DESIGN.md, step 8):
  its events are stored with its run, not in the outbox, and a redelivery publishes them
  again; claims are taken in the batch's transaction, except for the first fetch from a
  partition after its assignment (what may be redeliveries), whose claims are committed, so
  that an attempt that kills the process counts: past ``park_after_attempts`` such attempts
  the command is parked unrun;
* a message the store cannot take yet (``StoreUnavailable``: the database is away) is retried
  in place, never skipped. A batch that fails for any other reason is split, and each of its
  commands is retried alone with backoff; one still failing past ``park_after_attempts``
  tries or ``park_after_seconds`` is parked: dead-lettered with ``RETRIES_EXHAUSTED`` and
  its last error in headers, and audited, so its partition moves on (0 for both: retry
  forever, stalling the partition, as a strict-order deployment may prefer);
* on revocation, the in-flight work of the revoked partitions is finished and committed first;
* with ``transactions`` (``OPRUNNER_KAFKA_EXACTLY_ONCE``), a partition's events are not
  published as its batches end but held until the watermark passes them, then published
  with the offset in one Kafka transaction (``transactions.py``): a ``read_committed``
  subscriber sees each result once, across crashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from runner.auth import Actor, bearer
from runner.client import PacedFetch
from runner.envelope import (
    CommandEnvelope,
    parse_command,
    valid_traceparent,
    visible,
)
from runner.errors import EnvelopeError, StoreUnavailable
from runner.executor import ExecutionMode, Executor, Undeliverable
from runner.observability import Metrics
from runner.settings import Settings
from runner.store import Publication

from .publisher import PERMANENT_ERRORS, KafkaPublisher, OutboxCleaner, PublishQueue
from .transactions import Fenced, PartitionTransactions

_DEFAULTS: dict[str, Any] = {name: f.default for name, f in Settings.model_fields.items()}
"""One place for each default: the settings' (a consumer built without settings gets them)."""

_log = logging.getLogger("oprunner.consumer")

_EAGER_BATCHES = 2
"""Batches that may run partly filled at once (``CommandConsumer._schedule``)."""


_Unacked = tuple[Any, Sequence[Publication], Sequence[int]]
"""A message whose outcome is durable, its events (stored with its run) and their outbox ids."""


class CrashedAttempts(RuntimeError):
    """A command's earlier attempts claimed it and never finished: each took its process
    down, as far as anyone can tell (the reason it is parked with)."""


def _backoff(failures: int) -> float:
    """Seconds to wait after ``failures`` tries of something only the store or broker being
    away makes fail: 0.2 s doubling up to 5 s, jittered."""
    return min(5.0, 0.2 * 2.0 ** min(failures, 5)) * random.uniform(0.5, 1.0)


def _error_text(exc: BaseException) -> str:
    """An error as one storable line: type and message, U+0000 written out, bounded."""
    return visible(f"{type(exc).__name__}: {exc}")[:500]


@dataclass
class _Partition:
    """Offsets fetched from one partition and which of them are done."""

    pending: dict[int, bool] = field(default_factory=dict)  # offset -> done, in fetch order
    fetched_at: dict[int, float] = field(default_factory=dict)  # offset -> when, for pending ones
    committable: int | None = None  # next offset to commit
    committed: int | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    redelivered_below: int = 0
    """Offsets below this came in the first fetch after the partition was assigned: perhaps
    redeliveries of commands whose attempt died with a process (their claims are committed)."""
    held: dict[int, Sequence[Publication]] = field(default_factory=dict)
    """Exactly-once mode: events of done offsets the watermark has not passed yet."""
    due: list[Publication] = field(default_factory=list)
    """Exactly-once mode: events below ``committable``, for its next transaction."""
    ended: dict[int, float] = field(default_factory=dict)
    """Exactly-once mode: when each done offset's batch ended, until a transaction takes it."""

    def add(self, offset: int) -> None:
        self.pending[offset] = False
        self.fetched_at[offset] = time.monotonic()

    def done(self, offset: int, events: Sequence[Publication] = ()) -> None:
        if offset in self.pending:
            self.pending[offset] = True
            if events:
                self.held[offset] = events
        while self.pending:
            first = next(iter(self.pending))
            if not self.pending[first]:
                break
            del self.pending[first]
            self.fetched_at.pop(first, None)
            if (passed := self.held.pop(first, None)) is not None:
                self.due.extend(passed)
            self.committable = first + 1

    def oldest_unfinished(self) -> float | None:
        """When the oldest fetched message not yet done was fetched (the watermark's head)."""
        return self.fetched_at.get(next(iter(self.pending))) if self.pending else None


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: CommandConsumer) -> None:
        self._owner = consumer

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._owner._drain(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        _log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))


class CommandConsumer:
    """Consumes the commands topic into the executor; see the module docstring."""

    def __init__(
        self,
        executor: Executor,
        publisher: KafkaPublisher,
        consumer_factory: Callable[..., AIOKafkaConsumer],
        *,
        topic: str,
        group_id: str,
        dlq_topic: str,
        max_in_flight: int = _DEFAULTS["max_in_flight"],
        batch_size: int = _DEFAULTS["batch_size"],
        max_batches: int = _DEFAULTS["max_batches"],
        max_message_bytes: int = _DEFAULTS["max_message_bytes"],
        session_timeout_ms: int = _DEFAULTS["session_timeout_ms"],
        fetch_max_wait_ms: int = _DEFAULTS["fetch_max_wait_ms"],
        fetch_min_interval_ms: int = _DEFAULTS["fetch_min_interval_ms"],
        commit_interval: float = 0.2,
        drain_timeout: float = _DEFAULTS["shutdown_timeout"],
        park_after_attempts: int = 5,
        park_after_seconds: float = 60.0,
        metrics: Metrics | None = None,
        transactions: PartitionTransactions | None = None,
        group_instance_id: str | None = None,
    ) -> None:
        self.executor = executor
        self.publisher = publisher
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.max_in_flight = max_in_flight
        self.batch_size = max(1, batch_size)
        self.max_batches = max(1, max_batches)
        self.max_message_bytes = max_message_bytes
        self.metrics = metrics
        self.transactions = transactions
        self.group_id = group_id
        self.commit_interval = commit_interval
        self.session_timeout = session_timeout_ms / 1000
        self.drain_timeout = drain_timeout
        self.park_after_attempts = park_after_attempts
        self.park_after_seconds = park_after_seconds
        self.cleaner = OutboxCleaner(executor.store)
        self.outgoing = PublishQueue(publisher, self.cleaner, max_pending=max_in_flight * 4, metrics=metrics)
        self.consumer = consumer_factory(
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=max(session_timeout_ms // 5, 100),
            max_poll_records=max_in_flight,
            fetch_max_wait_ms=fetch_max_wait_ms,
            max_partition_fetch_bytes=max(max_message_bytes + 65536, 1048576),
            # static membership: a restarted process takes its partitions back at once
            **({"group_instance_id": group_instance_id} if group_instance_id else {}),
        )
        self.fetching = PacedFetch(self.consumer, fetch_min_interval_ms)
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight = 0  # slots taken: fetched messages not yet finished or dropped
        self._parts: dict[TopicPartition, _Partition] = {}
        self._queues: dict[Any, deque[tuple[TopicPartition, Any]]] = {}  # key -> fetched, waiting
        self._ready: OrderedDict[Any, None] = OrderedDict()  # keys whose head may run now
        self._busy: set[Any] = set()
        self._running: set[asyncio.Task[None]] = set()
        self._revocations = 0  # drains so far
        self._revoked_at: dict[TopicPartition, int] = {}  # partition -> the drain that last took it
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()  # a batch ended: the next transaction may go now
        self._transacting = asyncio.Lock()  # one round at a time: each takes what the last left
        self._recovering: set[asyncio.Task[None]] = set()
        self.processed = 0
        self.dead_lettered = 0
        self.parked = 0
        self.batches = 0

    @property
    def in_flight(self) -> int:
        """Messages fetched and not yet finished or dropped (at most ``max_in_flight``)."""
        return self._in_flight

    async def start(self) -> None:
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))
        await self.consumer.start()
        self.cleaner.start()
        self.outgoing.start()

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and dispatch until ``stop`` is set, then drain and commit."""
        committer = asyncio.create_task(self._commit_loop(), name="oprunner-committer")
        try:
            while not stop.is_set():
                fetched = await self.fetching.getmany(timeout_ms=100, max_records=self.max_in_flight)
                revocations = self._revocations
                for tp, messages in fetched.items():
                    if tp not in self._parts and messages:  # the first fetch since its assignment
                        if not await self._producing_for(tp):
                            break  # stopping
                        self._parts[tp] = _Partition(redelivered_below=messages[-1].offset + 1)
                    for message in messages:
                        if self._slots.locked():
                            self._schedule()
                        await self._take_slot()
                        if self._revoked_at.get(tp, 0) > revocations:
                            # revoked while this loop waited for the slot: its drain has run,
                            # so the message must not start here (the next owner fetches it)
                            self._free_slot()
                            continue
                        self._enqueue(tp, message)
                self._schedule()
        finally:
            self._stopping.set()
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            await self._drain(set(self._parts))
            for task in list(self._recovering):
                task.cancel()
            await self.outgoing.stop()
            await self.cleaner.stop()
            if self.transactions is not None:
                await self.transactions.close_all()
            await self.consumer.stop()

    async def _producing_for(self, tp: TopicPartition) -> bool:
        """Exactly-once mode: open ``tp``'s transactional producer before its first command
        runs (fencing its previous owner's); False if told to stop first."""
        transactions = self.transactions
        if transactions is None or transactions.owns(tp):
            return True

        async def opened() -> bool:
            await transactions.open(tp)
            return True

        return bool(await self._retrying(opened))

    # -- dispatch -------------------------------------------------------------------------

    async def _take_slot(self) -> None:
        await self._slots.acquire()
        self._in_flight += 1

    def _free_slot(self) -> None:
        self._in_flight -= 1
        self._slots.release()

    def _enqueue(self, tp: TopicPartition, message: Any) -> None:
        self._parts.setdefault(tp, _Partition()).add(message.offset)
        key = message.key if message.key is not None else object()  # no key: no order to keep
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            if key not in self._busy:
                self._ready[key] = None
        queue.append((tp, message))

    def _schedule(self) -> None:
        """Start batches of ready keys' heads while fewer than ``max_batches`` run. Past
        ``_EAGER_BATCHES`` running, only a full batch starts: under load, commands wait for
        a running batch to end and go in one batch together rather than in many small ones,
        whose statements, commits and round trips cost per batch; when few run, a command
        starts as soon as it is ready."""
        while self._ready and len(self._running) < self.max_batches:
            if len(self._running) >= _EAGER_BATCHES and len(self._ready) < self.batch_size:
                return
            batch: list[tuple[Any, TopicPartition, Any]] = []
            while self._ready and len(batch) < self.batch_size:
                key, _ = self._ready.popitem(last=False)
                tp, message = self._queues[key].popleft()
                self._busy.add(key)
                batch.append((key, tp, message))
            task = asyncio.create_task(self._run_batch(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            for tp in {tp for _, tp, _ in batch}:
                if tp in self._parts:
                    self._parts[tp].tasks.add(task)
                    task.add_done_callback(self._parts[tp].tasks.discard)

    def _release(self, key: Any) -> None:
        self._busy.discard(key)
        queue = self._queues.get(key)
        if queue:
            self._ready[key] = None
        elif queue is not None:
            del self._queues[key]

    def _mode(self, batch: list[tuple[Any, TopicPartition, Any]]) -> ExecutionMode:
        """Claims in the batch's transaction, unless it holds a message that may be a
        redelivery: then committed claims, and the crash budget."""
        redelivered = any(
            tp in self._parts and message.offset < self._parts[tp].redelivered_below
            for _, tp, message in batch
        )
        if redelivered:
            return ExecutionMode(
                offset_outbox=True, committed_claims=True, crash_budget=self.park_after_attempts
            )
        return ExecutionMode(offset_outbox=True, committed_claims=False)

    async def _run_batch(self, batch: list[tuple[Any, TopicPartition, Any]]) -> None:
        unacked: list[_Unacked] | None = None
        try:
            unacked = await self._process([message for _, _, message in batch], self._mode(batch))
        except Exception:
            _log.exception("a batch of %d was left unacknowledged", len(batch))
        finally:
            for key, _, _ in batch:
                self._free_slot()
                self._release(key)
            # This batch no longer counts against max_batches (its done callback comes later):
            # counted, the last free batch slot would start nothing until the fetch loop's
            # next round, up to its getmany timeout later.
            if (this := asyncio.current_task()) is not None:
                self._running.discard(this)
            if not self._stopping.is_set():
                self._schedule()
        if unacked is None:
            return
        if self.transactions is not None:  # its events go with its partitions' offsets
            events = {id(message): pubs for message, pubs, _ in unacked}
            ended = time.perf_counter()
            for _, tp, message in batch:
                if tp in self._parts:
                    self._parts[tp].done(message.offset, events.get(id(message), ()))
                    self._parts[tp].ended.setdefault(message.offset, ended)
            self._finished.set()
        else:  # its keys are free for their next commands now; its offsets wait for the broker
            if not await self._published(unacked):
                return
            for _, tp, message in batch:
                if tp in self._parts:
                    self._parts[tp].done(message.offset)
        self.processed += len(batch)
        self.batches += 1

    async def _published(self, unacked: list[_Unacked]) -> bool:
        """Publish what has no outbox row and wait until the broker acknowledged it all,
        trying again while it fails; False if stopping first (the commands are delivered
        again, and publish their stored events again)."""
        failures = 0
        while unacked:
            futures = [await self.outgoing.submit(pubs, ids, acked=True) for _, pubs, ids in unacked]
            results = await asyncio.gather(*(f for f in futures if f is not None), return_exceptions=True)
            for r in results:
                if isinstance(r, PERMANENT_ERRORS):  # never publishable: it must not stall the partition
                    _log.error(
                        "an outcome's events can never be published (%s); kept with its run only",
                        type(r).__name__,
                    )
            unacked = [
                item
                for item, r in zip(unacked, results, strict=True)
                if isinstance(r, BaseException) and not isinstance(r, PERMANENT_ERRORS)
            ]
            if not unacked:
                return True
            if self._stopping.is_set():
                return False
            failures += 1
            delay = _backoff(failures)
            _log.warning("publishing %d outcomes failed; retrying in %.1fs", len(unacked), delay)
            await asyncio.sleep(delay)
        return True

    async def _process(self, messages: list[Any], mode: ExecutionMode) -> list[_Unacked] | None:
        """Take a batch to durable outcomes; None if stopping first (offsets not done), else
        what must still be published, and acknowledged, before its offsets may be committed."""
        if self.metrics is not None:  # since its oldest command was produced (producer's clock)
            oldest = min((m.timestamp for m in messages if m.timestamp and m.timestamp > 0), default=None)
            if oldest is not None:
                self.metrics.stage("queued", max(0.0, time.time() - oldest / 1000))
        parsing = time.perf_counter()
        commands: list[tuple[Any, CommandEnvelope, str | None]] = []
        dead: list[tuple[Any, str]] = []
        for message in messages:
            headers = dict(message.headers or ())
            try:
                command = parse_command(message.value or b"", max_bytes=self.max_message_bytes)
            except EnvelopeError as exc:
                dead.append((message, exc.reason))
                continue
            credentials = _credentials(message)
            if len(credentials) > 1:  # which one speaks for the command is nobody's guess
                dead.append((message, "more than one authorization header: send one"))
                continue
            traceparent = valid_traceparent(headers.get("traceparent"))
            if traceparent:
                command = replace(command, traceparent=traceparent)
            commands.append((message, command, bearer(credentials[0]) if credentials else None))
        for message, reason in dead:
            lettered = await self._retrying(functools.partial(self._dead_letter, message, reason))
            if lettered is None:
                return None
            await self.outgoing.submit(*lettered)
        if self.metrics is not None:
            self.metrics.stage("parse", time.perf_counter() - parsing)
        unacked: list[_Unacked] = []
        if not commands:
            return unacked
        batch = [(c, t) for _, c, t in commands]
        where = ", ".join(f"{m.topic}/{m.partition}/{m.offset}" for m, _, _ in commands[:3])
        unavailable = 0
        while True:
            try:
                outcomes = await self.executor.execute_many(batch, mode)
                break
            except StoreUnavailable as exc:  # the database is away: wait for it, skip nothing
                if self._stopping.is_set():
                    return None
                unavailable += 1
                delay = _backoff(unavailable)
                _log.warning("store unavailable (%s); retrying %s… in %.1fs", exc, where, delay)
                await asyncio.sleep(delay)
            except Exception:
                # Which command fails is unknown: each goes alone, with a failure budget of its own.
                _log.exception("a batch of %d (%s…) failed; running it one by one", len(batch), where)
                for item in commands:
                    if not await self._alone(*item):
                        return None
                return unacked
        for (message, _, _), outcome in zip(commands, outcomes, strict=True):
            if outcome.exhausted:
                crashed = CrashedAttempts(f"{outcome.exhausted - 1} attempts claimed it and never finished")
                parked = await self._retrying(
                    functools.partial(self._park, message, outcome.exhausted - 1, crashed)
                )
                if parked is None:
                    return None
                await self.outgoing.submit(*parked)
            elif outcome.direct:
                unacked.append((message, outcome.publications, outcome.outbox_ids))
            else:
                await self.outgoing.submit(outcome.publications, outcome.outbox_ids)
        return unacked

    async def _alone(self, message: Any, command: CommandEnvelope, token: str | None) -> bool:
        """One command to an outcome, or parked past its failure budget; False if stopping."""
        where = f"{message.topic}/{message.partition}/{message.offset}"
        failures, since = 0, 0.0
        while True:
            try:
                outcomes = await self.executor.execute_many([(command, token)])
            except Exception as exc:
                if isinstance(exc, StoreUnavailable) or not self.executor.store.refuses(exc):
                    # the database is away or in trouble of its own: no command's fault, no count
                    _log.warning("store unavailable (%s); retrying %s", type(exc).__name__, where)
                    if self._stopping.is_set():
                        return False
                    await asyncio.sleep(random.uniform(0.5, 2.0))
                    continue
                failures += 1
                since = since or time.monotonic()
                failing = time.monotonic() - since
                _log.warning(
                    "command %s at %s failed %d times over %.1fs: %s",
                    command.id[:100],
                    where,
                    failures,
                    failing,
                    type(exc).__name__,  # its message may quote input: the DLQ header keeps it
                    exc_info=failures == 1,
                    extra={"topic": message.topic, "partition": message.partition, "offset": message.offset},
                )
                if self._budget_spent(failures, failing):
                    parked = await self._retrying(functools.partial(self._park, message, failures, exc))
                    if parked is None:
                        return False
                    await self.outgoing.submit(*parked)
                    return True
            else:
                for outcome in outcomes:
                    await self.outgoing.submit(outcome.publications, outcome.outbox_ids)
                return True
            if self._stopping.is_set():
                return False
            await asyncio.sleep(min(5.0, 0.1 * 2 ** min(failures, 6)) * random.uniform(0.5, 1.0))

    def _budget_spent(self, failures: int, seconds: float) -> bool:
        by_count = self.park_after_attempts > 0 and failures >= self.park_after_attempts
        by_time = self.park_after_seconds > 0 and seconds >= self.park_after_seconds
        return by_count or by_time

    async def _park(
        self, message: Any, failures: int, exc: BaseException
    ) -> tuple[tuple[Publication, ...], list[int]]:
        """Dead-letter a command that kept failing: the partition moves on, nothing is lost."""
        reason = f"gave up after {failures} failed attempts"
        lettered = await self._dead_letter(
            message, reason, code="RETRIES_EXHAUSTED", last_error=_error_text(exc), attempts=failures
        )
        self.parked += 1
        if self.metrics is not None:
            self.metrics.parked.inc()
        _log.error(
            "parked %s/%s/%s in %s: %s",
            message.topic,
            message.partition,
            message.offset,
            self.dlq_topic,
            type(exc).__name__,
        )
        return lettered

    async def _retrying(self, step: Callable[[], Any]) -> Any:
        """Run ``step`` until it succeeds; None if told to stop first.

        For steps that only fail while the store or broker is away (recording a dead letter,
        a whole batch whose store is unavailable): running them again is safe, since claims
        make every effect happen once."""
        failures = 0
        while True:
            try:
                return await step()
            except Exception as exc:
                if self._stopping.is_set():
                    return None
                failures += 1
                delay = _backoff(failures)
                if isinstance(exc, StoreUnavailable):
                    _log.warning("store unavailable (%s); retrying in %.1fs", exc, delay)
                else:
                    _log.error(
                        "%s failed; retrying in %.1fs",
                        getattr(step, "__name__", "step"),
                        delay,
                        exc_info=True,
                    )
                await asyncio.sleep(delay)

    async def _dead_letter(
        self,
        message: Any,
        reason: str,
        *,
        code: str = "MALFORMED",
        last_error: str | None = None,
        attempts: int = 0,
    ) -> tuple[tuple[Publication, ...], list[int]]:
        """Record the DLQ message and its audit event through the outbox, like any outcome
        (the executor builds both, as it builds every audit event)."""
        undeliverable = Undeliverable(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            value=message.value or b"",
            headers=tuple((str(k), v) for k, v in (message.headers or ())),
        )
        record, ids = await self.executor.dead_letter(
            undeliverable,
            reason,
            topic=self.dlq_topic,
            code=code,
            sender=self._sender(message),
            last_error=last_error,
            attempts=attempts,
            max_value=self.max_message_bytes // 2,  # what the commands topic took fits the DLQ
        )
        self.dead_lettered += 1
        if self.metrics is not None:
            self.metrics.dead_letters.inc()
        return record.publications, ids

    def _sender(self, message: Any) -> Actor | None:
        """The verified actor of a message's token, or None (no token, or one that fails)."""
        auth = self.executor.authenticator
        credentials = _credentials(message)
        token = bearer(credentials[0]) if len(credentials) == 1 else None
        if token is None or auth is None:
            return None
        try:
            return auth.authenticate(token)
        except Exception:  # AuthError, or anything a hostile token makes a verifier raise
            return None

    # -- offsets --------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            if self.transactions is None:
                await asyncio.sleep(self.commit_interval)
            else:  # a transaction as soon as a batch ends: its events wait for it
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._finished.wait(), self.commit_interval)
                self._finished.clear()
            try:
                await self._commit()
                if self.metrics is not None:
                    self._observe(self.metrics)
            except Exception:  # this loop must outlive anything one round does
                _log.exception("commit round failed")

    def _observe(self, metrics: Metrics) -> None:
        """Consumer lag per partition and the age of the oldest unfinished command."""
        now, oldest = time.monotonic(), None
        assigned = self.consumer.assignment()
        for tp, part in self._parts.items():
            if tp not in assigned:
                continue
            highwater = self.consumer.highwater(tp)
            done = part.committed if part.committed is not None else part.committable
            if highwater is not None:
                first = next(iter(part.pending), highwater)
                lag = highwater - (done if done is not None else first)
                metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(lag, 0))
            started = part.oldest_unfinished()
            if started is not None and (oldest is None or started < oldest):
                oldest = started
        metrics.oldest_unfinished.set(0.0 if oldest is None else now - oldest)

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        if self.transactions is not None:
            await self._commit_transactions(only)
            return
        offsets = {tp: offset for tp, (_, offset) in self._uncommitted(only).items()}
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            _log.info("offset commit skipped (%s); the claim keeps redeliveries harmless", exc)
            return
        for tp, offset in offsets.items():
            self._parts[tp].committed = offset

    def _uncommitted(self, only: set[TopicPartition] | None) -> dict[TopicPartition, tuple[_Partition, int]]:
        """The partitions (of ``only``, if given) whose committable offset is not committed yet."""
        return {
            tp: (part, part.committable)
            for tp, part in self._parts.items()
            if part.committable is not None
            and part.committable != part.committed
            and (only is None or tp in only)
        }

    async def _commit_transactions(self, only: set[TopicPartition] | None) -> None:
        """Each partition's due events and its offset in one transaction, the partitions'
        transactions together; one that fails is tried again next round, its events kept."""
        async with self._transacting:  # the loop's round and a drain's must not both send a prefix
            await self._transaction_round(only)

    async def _transaction_round(self, only: set[TopicPartition] | None) -> None:
        assert self.transactions is not None
        due = [(tp, part, offset, len(part.due)) for tp, (part, offset) in self._uncommitted(only).items()]
        if not due:
            return
        transactions = self.transactions
        results = await asyncio.gather(
            *(transactions.commit(tp, part.due[:n], offset) for tp, part, offset, n in due),
            return_exceptions=True,
        )
        for (tp, part, offset, n), result in zip(due, results, strict=True):
            if isinstance(result, Fenced):
                self._fenced(tp, result)
            elif isinstance(result, BaseException):
                _log.warning(
                    "the transaction of %s/%s failed (%s: %s); trying again",
                    tp.topic,
                    tp.partition,
                    type(result).__name__,
                    result,
                )
            else:
                del part.due[:n]
                part.committed = offset
                self._observe_transaction(part, offset)

    def _observe_transaction(self, part: _Partition, offset: int) -> None:
        """The ``transaction`` stage, once per batch: from its end to this commit."""
        now = time.perf_counter()
        taken = [o for o in part.ended if o < offset]
        batches = {part.ended.pop(o) for o in taken}
        if self.metrics is not None:
            for ended in batches:
                self.metrics.stage("transaction", now - ended)

    def _fenced(self, tp: TopicPartition, exc: Fenced) -> None:
        """Another producer took ``tp``'s transactional id: its owner now, or this process
        after a transaction the broker timed out. Drop what this process holds of ``tp``
        (its committed outcomes replay on redelivery) and stop fetching it; if the group
        still gives ``tp`` to this process a session timeout later, take it up again from
        its committed offset with a new producer (which fences any other in turn)."""
        _log.error("%s; dropping its uncommitted work, paused for %.0fs", exc, self.session_timeout)
        self._forget({tp})
        part = self._parts.pop(tp, None)
        with contextlib.suppress(Exception):
            self.consumer.pause(tp)
        task = asyncio.create_task(self._recover(tp, set(part.tasks) if part else set()))
        self._recovering.add(task)
        task.add_done_callback(self._recovering.discard)

    async def _recover(self, tp: TopicPartition, running: set[asyncio.Task[None]]) -> None:
        await asyncio.sleep(self.session_timeout)
        if running:  # a batch of its old offsets must not mark the refetched ones done
            await asyncio.wait(running)
        if tp not in self.consumer.assignment() or self._stopping.is_set():
            return  # revoked meanwhile: its new owner has it
        _log.warning("%s/%s is still assigned here: taking it up again", tp.topic, tp.partition)
        await self.consumer.seek_to_committed(tp)
        self._parts.pop(tp, None)  # its next fetch is a first fetch again: committed claims
        self.consumer.resume(tp)

    def _forget(self, partitions: set[TopicPartition]) -> None:
        """Drop the fetched, not started messages of ``partitions`` (their offsets were never
        done: whoever owns them next fetches them again)."""
        self._revocations += 1
        for tp in partitions:
            self._revoked_at[tp] = self._revocations
        for key, queue in list(self._queues.items()):
            kept = deque(item for item in queue if item[0] not in partitions)
            for _ in range(len(queue) - len(kept)):
                self._free_slot()
            self._queues[key] = kept
            if not kept and key not in self._busy:
                del self._queues[key]
                self._ready.pop(key, None)

    async def _drain(self, partitions: set[TopicPartition]) -> None:
        """Finish in-flight work of ``partitions`` (bounded), commit it, forget them.

        Messages fetched but not started are dropped (their offsets were never done): the
        partition's next owner, or this process after a restart, fetches them again; so are
        those the fetch loop holds while it waits for a slot (``run`` checks ``_revoked_at``)."""
        self._forget(partitions)
        tasks = {t for tp in partitions if tp in self._parts for t in self._parts[tp].tasks}
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.drain_timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5)
        await self._commit(partitions)
        for tp in partitions:
            self._parts.pop(tp, None)
            if self.transactions is not None:
                await self.transactions.close(tp)
            if self.metrics is not None:
                self.metrics.forget_partition(tp.topic, tp.partition)


def _credentials(message: Any) -> list[Any]:
    """The values of a message's ``authorization`` headers, its key in any case (Kafka's are
    case-sensitive, HTTP's are not, and producers write both)."""
    return [v for k, v in message.headers or () if str(k).lower() == "authorization"]
