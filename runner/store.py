"""The store protocol: idempotency claims, outcome records and the outbox, in one database.

This is exactly what the runner needs from a database, and nothing more: the executor
(claims, transactions, outcomes), the HTTP app (accepted commands, run lookup), the publish
queue and outbox relay (``mark_published``, ``sweep``) and ``serve``'s metrics (``backlog``).
``infra.postgres`` implements it on asyncpg and ``runner.testing.InMemoryStore`` in memory,
with the same semantics: ``tests/unit/test_store_contract.py`` runs against both.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from ._records import frozen


class ClaimStatus(enum.Enum):
    ACQUIRED = "acquired"  # this worker holds the lease: run the handler
    COMPLETED = "completed"  # done before: replay the stored result
    CONFLICT = "conflict"  # same key, different input: reject
    BUSY = "busy"  # a live worker holds the lease: wait, then claim again


@frozen
class Claim:
    status: ClaimStatus
    attempts: int = 0
    result: dict[str, Any] | None = None  # the stored result data, when COMPLETED
    retry_after: float = 0.0  # seconds until the other worker's lease runs out, when BUSY
    version: str | None = None
    """When CONFLICT: the version the stored run was claimed with (``ClaimRequest.version``),
    so the executor can tell a changed input from a default version that moved meanwhile."""
    events: tuple[bytes, bytes] | None = None
    """When COMPLETED by the same command (its id is the stored run's) and its result and audit
    events were stored with the run (``OutcomeRecord.direct``): those events, encoded, to
    publish again as they were. A redelivery then republishes the originals, their ids
    included, instead of recording a replay."""


def run_key(tenant_id: str | None, subject: str | None, idempotency_key: str, *, kind: str | None) -> str:
    """Where a caller's idempotency key is stored: scoped by the caller's tenant, subject and
    kind, each length-prefixed (``n`` for none), so one caller's key never meets another's,
    whatever either contains. A user's (and an anonymous caller's) has no kind prefix, the
    format of runs stored before kinds were: a service or an admin of the same subject has
    its own (``service|...``, ``admin|...``), so a user token that shares a service's
    subject never replays the service's runs. Not by operation: like Stripe's, a key names
    one intended effect, and its reuse for another operation is reported to its owner as a
    conflict."""

    def part(value: str | None) -> str:
        return "n" if value is None else f"{len(value)}:{value}"

    scoped = f"{part(tenant_id)}/{part(subject)}/{idempotency_key}"
    return scoped if kind in (None, "user") else f"{kind}|{scoped}"


def kind_of(key: str, subject: str | None) -> str | None:
    """The actor kind of the run stored under ``key`` (``run_key``'s), given its subject."""
    for kind in ("service", "admin"):
        if key.startswith(f"{kind}|"):
            return kind
    return None if subject is None else "user"


@frozen
class ClaimRequest:
    key: str  # the run key (``run_key``): the caller's scope and its idempotency key
    op: str
    version: str  # the spec version whose validated input ``input_hash`` digests
    input_hash: str
    command_id: str
    owner: str
    lease_seconds: float
    actor_id: str | None = None
    tenant_id: str | None = None
    idempotency_key: str = ""  # as the caller sent it


@frozen
class Publication:
    """One message to publish: the outbox row's payload."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@frozen
class OutcomeRecord:
    """Everything recorded for one outcome, committed together."""

    command_id: str
    op: str
    version: str | None
    status: str
    result: dict[str, Any]
    audit: dict[str, Any]
    publications: tuple[Publication, ...] = field(default_factory=tuple)
    events: tuple[dict[str, Any], ...] = field(default_factory=tuple, compare=False)
    """The result and audit events as dicts (what ``publications`` carry, encoded)."""
    correlation_id: str | None = None
    trace_id: str | None = None
    """Kept with the audit entry, so the runs list can be filtered by them and link a trace."""
    direct: bool = False
    """The result and audit events (the first two publications) are stored with the run and
    published by the caller, not through the outbox: a Kafka command's, whose offset is its
    outbox (DESIGN.md, step 8). Its other publications (follow-ups) still go through the
    outbox. Only for a record that completes a run (a claim that a redelivery finds)."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """A command accepted for later (HTTP ``respond-async``), with the actor verified then."""

    command_id: str
    command: bytes
    actor: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    publication: Publication


@dataclass
class Sweep:
    """Rows locked by one relay sweep. Mark those to keep for the next sweep (``kept``) or to
    park for good (``parked``, with the reason); the rest are deleted as published."""

    rows: list[OutboxRow]
    kept: set[int] = field(default_factory=set)
    parked: dict[int, str] = field(default_factory=dict)


class Transaction(Protocol):
    """One open database transaction; ``db`` is what handlers see as ``ctx.db``."""

    @property
    def db(self) -> Any: ...

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> list[Claim]:
        """``Store.claim_many`` inside this transaction: a claim acquired here is forgotten if
        the transaction rolls back, and no one else sees it before it commits. Keys are locked
        in a fixed order (two batches never deadlock); a key another open transaction holds is
        waited for, at most the store's lock timeout, then ``LeaseLost`` (roll back, and run
        the commands on their own claims)."""
        ...

    async def complete(self, key: str, owner: str, record: OutcomeRecord) -> list[int]:
        """Mark the run ``key`` completed with ``record`` and write its outbox rows.

        Raises ``LeaseLost`` when ``owner`` no longer holds the claim (the transaction must
        then roll back). The run stays locked until the transaction ends: a claim or renewal
        of it meanwhile waits, then finds it completed, so a lease running out just as the
        work commits cannot hand the run to a second worker.
        """
        ...

    async def record(self, record: OutcomeRecord) -> list[int]:
        """Write the outbox rows and audit entry of an outcome that owns no run."""
        ...

    def savepoint(self) -> AbstractAsyncContextManager[None]:
        """A nested transaction: an exception rolls back only what ran inside it, so one
        command of a batch can fail without undoing its batch-mates' work."""
        ...

    async def complete_many(
        self, completions: Sequence[tuple[str, str, OutcomeRecord]], records: Sequence[OutcomeRecord]
    ) -> tuple[list[list[int]], list[list[int]]]:
        """``complete`` for each ``(key, owner, record)`` and ``record`` for each of ``records``,
        in as few statements as the store can; ``LeaseLost`` if any claim is no longer held."""
        ...


class Store(Protocol):
    """Idempotency claims, outcome records and the outbox."""

    transient_errors: tuple[type[BaseException], ...]
    """Exceptions of this store that mean "try again" (a lost connection, a failover)."""

    def refuses(self, exc: BaseException) -> bool:
        """Whether ``exc`` (raised while recording a command) is the store refusing that
        command's data for good (bad value, a size limit), rather than trouble of the store's
        own (read-only, disk full, out of memory), which waits and counts against no command."""
        ...

    async def claim(self, request: ClaimRequest) -> Claim: ...

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> list[Claim]:
        """``claim`` for each request (distinct keys), in as few statements as the store can."""
        ...

    async def unfinished(self, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` whose run was claimed and is not completed: an attempt that may
        have taken its process down, or one still running elsewhere."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[Transaction]: ...

    async def renew(self, key: str, owner: str, lease_seconds: float) -> bool:
        """Extend ``owner``'s lease on run ``key``; False if it is no longer the owner."""
        ...

    async def renew_many(self, keys: Sequence[str], owner: str, lease_seconds: float) -> int:
        """``renew`` for every key ``owner`` claimed together (a batch), in one statement;
        how many it still held."""
        ...

    def reader(self) -> AbstractAsyncContextManager[Any]:
        """A database handle for reads outside any run (resource resolvers)."""
        ...

    async def record(self, record: OutcomeRecord) -> list[int]:
        """``Transaction.record`` in a transaction of its own."""
        ...

    async def wait(self, key: str, within: float) -> None:
        """Return when run ``key`` may have completed, or after ``within`` seconds."""
        ...

    async def mark_published(self, ids: Sequence[int]) -> None:
        """Delete outbox rows Kafka has acknowledged (the publish queue's cleaner)."""
        ...

    def sweep(self, limit: int, min_age: float) -> AbstractAsyncContextManager[Sweep]:
        """The outbox relay's view of what the hot path left behind (a crash between commit
        and publish, Kafka down): committed rows older than ``min_age`` seconds, not parked,
        oldest first, at most ``limit``, each locked so that a concurrent sweep skips it
        (several processes sweep at once). On a clean exit the rows neither ``kept`` nor
        ``parked`` are deleted as published and the ``parked`` ones are set aside for good
        (never swept again); if the block raises, nothing changes."""
        ...

    async def backlog(self) -> int:
        """Outbox rows still to publish, parked ones not counted: the ``outbox_backlog``
        gauge ``serve`` exports, so a stuck relay or broker shows."""
        ...

    async def find_run(self, id: str, key: str | None = None) -> RunView | None:
        """A run by command id, or by run key ``key`` (the asking caller's own); else the
        latest audit entry of that command; else its acceptance (status ``pending``)."""
        ...

    async def list_runs(
        self, where: RunFilter, *, before: int | None = None, after: int | None = None, limit: int = 50
    ) -> list[AuditEntry]:
        """Audit entries (one per outcome) matching ``where``, newest first, below id ``before``
        when given; with ``after``, oldest first above that id instead (what a live stream
        sends next). At most ``limit``."""
        ...

    async def accept(self, accepted: Accepted, lease_seconds: float) -> None:
        """Keep a command to run later; this process holds it for ``lease_seconds``. A command
        id already accepted (and not finished) is refused with an exception."""
        ...

    async def take_accepted(self, limit: int, lease_seconds: float) -> Sequence[Accepted]:
        """Accepted commands no process holds (their lease ran out), oldest acceptance first,
        at most ``limit``, now held by this one for ``lease_seconds``."""
        ...

    async def finish_accepted(self, command_id: str) -> None:
        """Forget an accepted command: its outcome is recorded."""
        ...


@dataclass(frozen=True, slots=True)
class RunView:
    """What ``GET /ops/runs/{id}`` shows."""

    command_id: str
    op: str
    status: str  # running, or the outcome: succeeded, failed, rejected, denied
    result: dict[str, Any] | None
    actor_id: str | None
    tenant_id: str | None
    idempotency_key: str | None = None
    attempts: int | None = None  # None: no run was claimed (rejected, denied, pending)
    created_at: datetime | None = None
    completed_at: datetime | None = None
    actor_kind: str | None = None
    """``user``, ``service`` or ``admin``: who may see it is decided by kind too."""

    def to_json(self) -> dict[str, Any]:
        return {
            "commandId": self.command_id,
            "idempotencyKey": self.idempotency_key,
            "op": self.op,
            "status": self.status,
            "result": self.result,
            "attempts": self.attempts,
            "createdAt": _iso(self.created_at),
            "completedAt": _iso(self.completed_at),
        }


@dataclass(frozen=True, slots=True)
class RunFilter:
    """What a runs list asks for. The HTTP API narrows it to what the asking actor may see:
    ``actor`` (exactly this subject and tenant, a missing tenant matching only a missing one)
    and ``actor_kind`` for a user or a service, ``tenant_id`` for a tenant's admin,
    ``command_id`` for a one-command token."""

    op: str | None = None
    status: str | None = None
    actor_id: str | None = None
    tenant_id: str | None = None
    correlation_id: str | None = None
    command_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    actor: tuple[str | None, str | None] | None = None
    actor_kind: str | None = None
    """Only entries whose actor is of this kind: with ``actor``, what keeps a user from
    seeing the runs of a service of the same subject (and tenant)."""
    ops: frozenset[str] | None = None
    """Only these operations (a token limited by its ``ops`` claim sees only those runs)."""
    replays: bool = False
    """Include the entries of stored results sent again (a redelivery, a repeated key)."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit log entry: an outcome of one command, as the runs list and a run's trail show it."""

    id: int
    command_id: str
    op: str
    version: str | None
    status: str
    decision: str | None
    actor_id: str | None
    tenant_id: str | None
    correlation_id: str | None
    trace_id: str | None
    recorded_at: datetime
    data: dict[str, Any]

    def to_json(self, *, detail: bool = False) -> dict[str, Any]:
        """The list's fields; ``detail`` adds the audited input (redacted as it was recorded)."""
        out = {
            "id": self.id,
            "commandId": self.command_id,
            "op": self.op,
            "version": self.version,
            "status": self.status,
            "decision": self.decision,
            "actorId": self.actor_id,
            "tenant": self.tenant_id,
            "correlationId": self.correlation_id,
            "traceId": self.trace_id,
            "recordedAt": _iso(self.recorded_at),
            "attempt": self.data.get("attempt"),
            "durationMs": self.data.get("duration_ms"),
            "error": self.data.get("error"),
            "reason": self.data.get("reason"),
            "replayed": bool(self.data.get("replayed")),
            "deprecated": bool(self.data.get("deprecated")),
            "causedBy": self.data.get("causedBy"),
        }
        if detail:
            out["input"] = self.data.get("input")
            out["actor"] = self.data.get("actor")
            if "deadLetter" in self.data:
                out["deadLetter"] = self.data["deadLetter"]
        return out


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None
