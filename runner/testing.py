"""Helpers for testing apps built on oprunner: an in-memory store, tokens, commands.

``InMemoryStore`` implements the whole ``Store`` protocol with the Postgres store's semantics
(claims and leases, row locks, transactions and savepoints, the outbox and its sweeps,
accepted commands; ``tests/unit/test_store_contract.py`` checks both against one suite), so
an app's handlers and policies can be tested without any server. It has no SQL database:
``ctx.db`` is a ``NoDatabase`` that says so on first use. Test handlers
that use SQL against real Postgres with the testing kit's pytest plugin (``infra.testing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import _json
from .auth import mint_token
from .envelope import command
from .errors import LeaseLost
from .store import (
    Accepted,
    AuditEntry,
    Claim,
    ClaimRequest,
    ClaimStatus,
    OutboxRow,
    OutcomeRecord,
    RunFilter,
    RunView,
    Sweep,
    kind_of,
)

__all__ = ["InMemoryStore", "MemoryRun", "NoDatabase", "command", "mint_token"]


@dataclass(slots=True)
class MemoryRun:
    key: str
    op: str
    input_hash: str
    command_id: str
    owner: str | None
    lease_until: float
    attempts: int
    status: str = "running"
    result: dict[str, Any] | None = None
    actor_id: str | None = None
    tenant_id: str | None = None
    idempotency_key: str = ""
    outcome: str | None = None  # the outcome's status, once completed
    version: str = ""  # the version it was claimed with
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    completed_at: datetime | None = None
    events: tuple[bytes, bytes] | None = None  # stored result and audit events (``direct``)


@dataclass(slots=True)
class _Queued:
    """One committed outbox row."""

    row: OutboxRow
    created: float  # time.monotonic() when its transaction began (Postgres: ``now()``)
    parked: str | None = None  # why the relay set it aside for good


class NoDatabase:
    """``ctx.db`` under the in-memory store: any use is a clear error, not a silent dict."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(
            f"ctx.db.{name}: the in-memory store has no SQL database; test this handler against "
            "Postgres with the testing kit (pytest_plugins = ['infra.testing'])"
        )


class _MemoryTransaction:
    """Outcomes staged until commit. A run it completes is locked until it ends, as Postgres
    locks the row it updates: a claim, renewal or completion of that run elsewhere waits for
    the commit (and then finds the run completed) or the rollback."""

    def __init__(self, store: InMemoryStore) -> None:
        self._store = store
        self._staged: list[tuple[str | None, OutcomeRecord, list[OutboxRow]]] = []
        self._db = NoDatabase()
        self._began = time.monotonic()
        self._claimed: dict[str, MemoryRun | None] = {}  # key -> the run before this claimed it

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> list[Claim]:
        """Claims that roll back with the transaction; keys locked in key order, a key another
        transaction holds waited for, as Postgres does (without its lock timeout)."""
        claims: dict[str, Claim] = {}
        for request in sorted(requests, key=lambda r: r.key):
            run = await self._store._unlocked(request.key, self)
            if request.key not in self._claimed:
                self._claimed[request.key] = None if run is None else dataclasses.replace(run)
            self._store._locks.setdefault(request.key, (self, asyncio.Event()))
            claims[request.key] = self._store._claim(request, run)
        return [claims[r.key] for r in requests]

    def _rollback(self) -> None:
        for key, before in self._claimed.items():
            if before is None:
                self._store.runs.pop(key, None)
            else:
                self._store.runs[key] = before

    @property
    def db(self) -> NoDatabase:
        return self._db

    async def complete(self, key: str, owner: str, record: OutcomeRecord) -> list[int]:
        completed, _ = await self.complete_many([(key, owner, record)], [])
        return completed[0]

    async def record(self, record: OutcomeRecord) -> list[int]:
        _, recorded = await self.complete_many([], [record])
        return recorded[0]

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """Rolls back the outcomes staged inside it, and the run locks they took."""
        mark = len(self._staged)
        try:
            yield
        except BaseException:
            del self._staged[mark:]
            self._release(keep={key for key, _, _ in self._staged} | set(self._claimed))
            raise

    async def complete_many(
        self, completions: Sequence[tuple[str, str, OutcomeRecord]], records: Sequence[OutcomeRecord]
    ) -> tuple[list[list[int]], list[list[int]]]:
        """Like Postgres's one statement: every run still held is completed and every record's
        rows are written, then ``LeaseLost`` if some claim was not held (the transaction must
        then roll back)."""
        lost = []
        done = []
        completed = {staged for staged, _, _ in self._staged}  # it sees its own writes
        for key, owner, record in completions:
            run = await self._store._unlocked(key, self)
            held = run is not None and run.status == "running" and run.owner == owner
            if held and key not in completed:
                completed.add(key)
                self._store._locks.setdefault(key, (self, asyncio.Event()))
            else:
                lost.append(key)
            done.append(self._stage(None if key in lost else key, record))
        recorded = [self._stage(None, record) for record in records]
        if lost:
            raise LeaseLost(f"{len(lost)} of {len(completions)} claims")
        return done, recorded

    def _stage(self, key: str | None, record: OutcomeRecord) -> list[int]:
        outboxed = record.publications[2:] if record.direct else record.publications
        rows = [OutboxRow(self._store._new_id(), p) for p in outboxed]
        self._staged.append((key, record, rows))
        return [row.id for row in rows]

    def _commit(self) -> None:
        for key, record, rows in self._staged:
            self._store._apply(key, record, rows, self._began)

    def _release(self, keep: set[str | None] | frozenset[str | None] = frozenset()) -> None:
        for key, (holder, event) in list(self._store._locks.items()):
            if holder is self and key not in keep:
                del self._store._locks[key]
                event.set()


class InMemoryStore:
    """The ``Store`` protocol in memory, for unit tests of the engine and of apps.

    Inspection for tests: ``runs`` (by run key), ``audit_log`` (every committed audit entry),
    ``outbox`` (rows not yet published), ``accepted`` (commands accepted for later)."""

    transient_errors: tuple[type[BaseException], ...] = ()

    def refuses(self, exc: BaseException) -> bool:
        return True  # nothing here fails but a bug: count it

    def __init__(self) -> None:
        self.runs: dict[str, MemoryRun] = {}
        self.audit_log: list[dict[str, Any]] = []
        self.accepted: dict[str, tuple[Accepted, float]] = {}  # command id -> it, held until
        self._records: list[OutcomeRecord] = []  # committed, in order: find_run's audit fallback
        self._entries: list[AuditEntry] = []  # the same, as the audit log's entries
        self._outbox: dict[int, _Queued] = {}
        self._swept: set[int] = set()  # outbox rows locked by an open sweep
        self._locks: dict[str, tuple[_MemoryTransaction, asyncio.Event]] = {}  # run key -> holder
        self._next_id = 1
        self._done: dict[str, asyncio.Event] = {}

    # -- the protocol ---------------------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> Claim:
        return self._claim(request, await self._unlocked(request.key))

    def _claim(self, request: ClaimRequest, run: MemoryRun | None) -> Claim:
        now = time.monotonic()
        if run is not None and run.input_hash != request.input_hash:
            return Claim(ClaimStatus.CONFLICT, run.attempts, version=run.version)
        if run is not None and run.status == "completed":
            events = run.events if run.command_id == request.command_id else None
            return Claim(ClaimStatus.COMPLETED, run.attempts, result=run.result, events=events)
        if run is not None and run.owner != request.owner and run.lease_until > now:
            return Claim(ClaimStatus.BUSY, run.attempts, retry_after=run.lease_until - now)
        if run is None:
            run = self.runs[request.key] = MemoryRun(
                request.key,
                request.op,
                request.input_hash,
                request.command_id,
                None,
                0.0,
                0,
                actor_id=request.actor_id,
                tenant_id=request.tenant_id,
                idempotency_key=request.idempotency_key,
                version=request.version,
            )
        run.owner = request.owner
        run.lease_until = now + request.lease_seconds
        run.attempts += 1
        return Claim(ClaimStatus.ACQUIRED, run.attempts)

    async def renew(self, key: str, owner: str, lease_seconds: float) -> bool:
        return await self.renew_many([key], owner, lease_seconds) == 1

    async def renew_many(self, keys: Sequence[str], owner: str, lease_seconds: float) -> int:
        held = 0
        for key in dict.fromkeys(keys):  # each run once, as ``run_key = ANY(...)``
            run = await self._unlocked(key)
            if run is not None and run.status == "running" and run.owner == owner:
                run.lease_until = time.monotonic() + lease_seconds
                held += 1
        return held

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> list[Claim]:
        return [await self.claim(request) for request in requests]

    async def unfinished(self, keys: Sequence[str]) -> set[str]:
        return {key for key in keys if (run := self.runs.get(key)) is not None and run.status == "running"}

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_MemoryTransaction]:
        tx = _MemoryTransaction(self)
        try:
            yield tx  # an exception leaves the staged records unapplied: a rollback
            tx._commit()
        except BaseException:
            tx._rollback()
            raise
        finally:
            tx._release()

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[NoDatabase]:
        yield NoDatabase()

    async def record(self, record: OutcomeRecord) -> list[int]:
        async with self.transaction() as tx:
            return await tx.record(record)

    async def wait(self, key: str, within: float) -> None:
        if (run := self.runs.get(key)) is not None and run.status == "completed":
            return
        event = self._done.setdefault(key, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), within)

    async def mark_published(self, ids: Sequence[int]) -> None:
        for row_id in ids:
            self._outbox.pop(row_id, None)

    @asynccontextmanager
    async def sweep(self, limit: int, min_age: float) -> AsyncIterator[Sweep]:
        before = time.monotonic() - min_age
        due = sorted(
            (q.row for q in self._outbox.values() if q.parked is None and q.created < before),
            key=lambda row: row.id,
        )
        rows = [row for row in due if row.id not in self._swept][:limit]  # SKIP LOCKED
        locked = {row.id for row in rows}
        self._swept |= locked
        try:
            sweep = Sweep(rows)
            yield sweep
            for row in sweep.rows:
                if row.id not in sweep.kept and row.id not in sweep.parked:
                    self._outbox.pop(row.id, None)
            for row_id, error in sweep.parked.items():
                if (queued := self._outbox.get(row_id)) is not None:
                    queued.parked = error[:500]
        finally:
            self._swept -= locked

    async def backlog(self) -> int:
        return sum(1 for q in self._outbox.values() if q.parked is None)

    async def find_run(self, id: str, key: str | None = None) -> RunView | None:
        mine = [run for run in self.runs.values() if key is not None and run.key == key]
        run = next(iter(mine or [run for run in self.runs.values() if run.command_id == id]), None)
        if run is not None:
            status = run.outcome if run.status == "completed" and run.outcome else "running"
            return RunView(
                run.command_id,
                run.op,
                status,
                run.result,
                run.actor_id,
                run.tenant_id,
                run.idempotency_key,
                run.attempts,
                run.created_at,
                run.completed_at,
                kind_of(run.key, run.actor_id),
            )
        record = next((r for r in reversed(self._records) if r.command_id == id), None)
        if record is None:
            if (accepted := self.accepted.get(id)) is None:
                return None
            actor = accepted[0].actor or {}
            return RunView(
                id, "", "pending", None, actor.get("id"), actor.get("tenant"), actor_kind=actor.get("kind")
            )
        data = record.audit
        error = {"code": data.get("error"), "message": data.get("reason")} if data.get("error") else None
        result = {"status": record.status, **({"error": error} if error else {})}
        actor = data.get("actor") or {}
        return RunView(
            id,
            record.op,
            record.status,
            result,
            actor.get("id"),
            actor.get("tenant"),
            actor_kind=actor.get("kind"),
        )

    async def list_runs(
        self, where: RunFilter, *, before: int | None = None, after: int | None = None, limit: int = 50
    ) -> list[AuditEntry]:
        found = [e for e in self._entries if _matches(e, where)]
        if after is not None:
            return [e for e in found if e.id > after][:limit]
        return [e for e in reversed(found) if before is None or e.id < before][:limit]

    async def accept(self, accepted: Accepted, lease_seconds: float) -> None:
        if accepted.command_id in self.accepted:  # Postgres: a primary key violation
            raise ValueError(f"command {accepted.command_id!r} is already accepted")
        self.accepted[accepted.command_id] = (accepted, time.monotonic() + lease_seconds)

    async def take_accepted(self, limit: int, lease_seconds: float) -> Sequence[Accepted]:
        now = time.monotonic()
        free = [accepted for accepted, until in self.accepted.values() if until < now][:limit]
        for accepted in free:  # held again, in acceptance order (the dict's)
            self.accepted[accepted.command_id] = (accepted, now + lease_seconds)
        return free

    async def finish_accepted(self, command_id: str) -> None:
        self.accepted.pop(command_id, None)

    # -- internals and inspection ---------------------------------------------------------

    async def _unlocked(self, key: str, tx: _MemoryTransaction | None = None) -> MemoryRun | None:
        """Run ``key`` once no transaction but ``tx`` holds it (see ``_MemoryTransaction``)."""
        while (lock := self._locks.get(key)) is not None and lock[0] is not tx:
            await lock[1].wait()
        return self.runs.get(key)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _apply(self, key: str | None, record: OutcomeRecord, rows: list[OutboxRow], began: float) -> None:
        if key is not None:
            run = self.runs[key]
            run.status, run.outcome, run.owner, run.lease_until = "completed", record.status, None, 0.0
            run.result = _json.loads(_json.dumps(record.result))  # stored as JSON, read back as JSON
            run.completed_at = datetime.now(UTC)
            if record.direct:
                run.events = (record.publications[0].value, record.publications[1].value)
            self._done.pop(key, asyncio.Event()).set()
        self.audit_log.append(record.audit)
        self._records.append(record)
        actor = record.audit.get("actor") or {}
        self._entries.append(
            AuditEntry(
                len(self._entries) + 1,
                record.command_id,
                record.op,
                record.version,
                record.status,
                record.audit.get("decision"),
                actor.get("id"),
                actor.get("tenant"),
                record.correlation_id,
                record.trace_id,
                datetime.now(UTC),
                _json.loads(_json.dumps(record.audit)),
            )
        )
        self._outbox.update((row.id, _Queued(row, began)) for row in rows)

    @property
    def outbox(self) -> list[OutboxRow]:
        """The committed outbox rows not yet published (deleted), parked ones included: what
        Postgres's ``oprunner_outbox`` table holds."""
        return [q.row for q in sorted(self._outbox.values(), key=lambda q: q.row.id)]


def _matches(entry: AuditEntry, where: RunFilter) -> bool:
    """``where`` as ``infra.postgres``'s SQL reads it."""
    wanted = (
        (where.op, entry.op),
        (where.status, entry.status),
        (where.actor_id, entry.actor_id),
        (where.tenant_id, entry.tenant_id),
        (where.actor_kind, _kind(entry)),
        (where.correlation_id, entry.correlation_id),
        (where.command_id, entry.command_id),
    )
    if any(value is not None and value != actual for value, actual in wanted):
        return False
    if where.since is not None and entry.recorded_at < where.since:
        return False
    if where.until is not None and entry.recorded_at >= where.until:
        return False
    if where.actor is not None and where.actor != (entry.actor_id, entry.tenant_id):
        return False
    if where.ops is not None and entry.op not in where.ops:
        return False
    return where.replays or not entry.data.get("replayed")


def _kind(entry: AuditEntry) -> str | None:
    actor = entry.data.get("actor")
    return actor.get("kind") if isinstance(actor, dict) else None
