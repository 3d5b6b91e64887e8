"""Helpers for testing apps built on oprunner: an in-memory store, tokens, commands.

``InMemoryStore`` implements the ``Store`` protocol with the same claim semantics as the
Postgres store, so an app's handlers and policies can be tested without any server. It has
no SQL database: ``ctx.db`` is a ``NoDatabase`` that says so on first use. Test handlers
that use SQL against real Postgres with the testing kit's pytest plugin (``infra.testing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from .auth import mint_token
from .envelope import command
from .errors import LeaseLost
from .store import Accepted, Claim, ClaimRequest, ClaimStatus, OutboxRow, OutcomeRecord, RunView

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


@dataclass(slots=True)
class _Outbox:
    rows: list[OutboxRow] = field(default_factory=list)
    published: set[int] = field(default_factory=set)


class NoDatabase:
    """``ctx.db`` under the in-memory store: any use is a clear error, not a silent dict."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(
            f"ctx.db.{name}: the in-memory store has no SQL database; test this handler against "
            "Postgres with the testing kit (pytest_plugins = ['infra.testing'])"
        )


class _MemoryTransaction:
    def __init__(self, store: InMemoryStore) -> None:
        self._store = store
        self._staged: list[tuple[str | None, OutcomeRecord, list[OutboxRow]]] = []
        self._db = NoDatabase()

    @property
    def db(self) -> NoDatabase:
        return self._db

    async def complete(self, key: str, owner: str, record: OutcomeRecord) -> list[int]:
        run = self._store.runs.get(key)
        if run is None or run.status != "running" or run.owner != owner:
            raise LeaseLost(key)
        return self._stage(key, record)

    async def record(self, record: OutcomeRecord) -> list[int]:
        return self._stage(None, record)

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """Rolls back the outcomes staged inside it."""
        mark = len(self._staged)
        try:
            yield
        except BaseException:
            del self._staged[mark:]
            raise

    async def complete_many(
        self, completions: Sequence[tuple[str, str, OutcomeRecord]], records: Sequence[OutcomeRecord]
    ) -> tuple[list[list[int]], list[list[int]]]:
        done = [await self.complete(key, owner, record) for key, owner, record in completions]
        return done, [await self.record(record) for record in records]

    def _stage(self, key: str | None, record: OutcomeRecord) -> list[int]:
        rows = [OutboxRow(self._store._new_id(), p) for p in record.publications]
        self._staged.append((key, record, rows))
        return [row.id for row in rows]

    def _commit(self) -> None:
        for key, record, rows in self._staged:
            self._store._apply(key, record, rows)


class InMemoryStore:
    """The ``Store`` protocol in memory, for unit tests of the engine and of apps."""

    transient_errors: tuple[type[BaseException], ...] = ()

    def refuses(self, exc: BaseException) -> bool:
        return True  # nothing here fails but a bug: count it

    def __init__(self) -> None:
        self.runs: dict[str, MemoryRun] = {}
        self.audit_log: list[dict[str, Any]] = []
        self._outbox = _Outbox()
        self._next_id = 1
        self._done: dict[str, asyncio.Event] = {}
        self.accepted: dict[str, tuple[Accepted, float]] = {}  # command id -> it, held until

    # -- the protocol ---------------------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> Claim:
        now = time.monotonic()
        run = self.runs.get(request.key)
        if run is not None and run.input_hash != request.input_hash:
            return Claim(ClaimStatus.CONFLICT, run.attempts)
        if run is not None and run.status == "completed":
            return Claim(ClaimStatus.COMPLETED, run.attempts, result=run.result)
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
            )
        run.owner = request.owner
        run.lease_until = now + request.lease_seconds
        run.attempts += 1
        return Claim(ClaimStatus.ACQUIRED, run.attempts)

    async def renew(self, key: str, owner: str, lease_seconds: float) -> bool:
        run = self.runs.get(key)
        if run is None or run.status != "running" or run.owner != owner:
            return False
        run.lease_until = time.monotonic() + lease_seconds
        return True

    async def renew_many(self, keys: Sequence[str], owner: str, lease_seconds: float) -> int:
        return sum([await self.renew(key, owner, lease_seconds) for key in keys])

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> list[Claim]:
        return [await self.claim(request) for request in requests]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_MemoryTransaction]:
        tx = _MemoryTransaction(self)
        yield tx  # an exception leaves the staged records unapplied: a rollback
        tx._commit()

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[NoDatabase]:
        yield NoDatabase()

    async def record(self, record: OutcomeRecord) -> list[int]:
        async with self.transaction() as tx:
            return await tx.record(record)

    async def wait(self, key: str, within: float) -> None:
        event = self._done.setdefault(key, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), within)

    async def pending(self, limit: int) -> Sequence[OutboxRow]:
        rows = [r for r in self._outbox.rows if r.id not in self._outbox.published]
        return rows[:limit]

    async def mark_published(self, ids: Sequence[int]) -> None:
        self._outbox.published.update(ids)

    async def find_run(self, id: str, key: str | None = None) -> RunView | None:
        for run in self.runs.values():
            if id == run.command_id or key == run.key:
                status = run.result["status"] if run.result else "running"
                return RunView(
                    run.command_id,
                    run.op,
                    status,
                    run.result,
                    run.actor_id,
                    run.tenant_id,
                    run.idempotency_key,
                )
        return None

    # -- internals and inspection ---------------------------------------------------------

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _apply(self, key: str | None, record: OutcomeRecord, rows: list[OutboxRow]) -> None:
        if key is not None:
            run = self.runs[key]
            run.status, run.result, run.owner = "completed", record.result, None
            self._done.pop(key, asyncio.Event()).set()
        self.audit_log.append(record.audit)
        self._outbox.rows.extend(rows)

    @property
    def outbox(self) -> list[OutboxRow]:
        """Every committed outbox row, published or not."""
        return list(self._outbox.rows)
