"""The ``Store`` protocol on an asyncpg pool.

Set-based: a batch's claims are one lock statement and one read, its outcomes a statement
for the runs that had a row and the outbox rows (when there are any), and two binary COPYs
(the runs claimed in the batch's transaction, written once; the audit rows). asyncpg
prepares and caches each statement.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from runner import _json
from runner.errors import LeaseLost
from runner.store import (
    Accepted,
    AuditEntry,
    Claim,
    ClaimRequest,
    ClaimStatus,
    OutboxRow,
    OutcomeRecord,
    Publication,
    RunFilter,
    RunView,
    Sweep,
    kind_of,
)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.TooManyConnectionsError,
)
"""asyncpg errors after which the same work may succeed on another try."""

__all__ = ["TRANSIENT_ERRORS", "PostgresStore", "PostgresTransaction", "Sweep", "connect_pool"]

RUN_LOCKS = 0x6F707275
"""The class of the transaction-level advisory locks on run keys (``pg_advisory_xact_lock(
RUN_LOCKS, hashtext(run_key))``), apart from any an application takes with one key. Every
claim takes them, in hash order, before it reads or writes a run: a claim in a batch's
transaction writes its run row only with the outcome, so until then this lock is all that
holds the key. Two keys that share a hash only wait for each other."""

_LOCKED = f"""
    SELECT count(pg_advisory_xact_lock({RUN_LOCKS}, h)) AS n, now() AS at
    FROM (SELECT DISTINCT hashtext(k) AS h FROM unnest($1::text[]) AS k ORDER BY 1) AS hashes
"""

# The committed claim (HTTP, a first fetch, the per-command path): its keys locked first (a
# batch's transaction that holds one without a row is waited for), then one upsert.
_CLAIM_MANY = f"""
WITH locked AS MATERIALIZED ({_LOCKED})
INSERT INTO oprunner_runs AS r
    (run_key, op, version, input_hash, command_id, status, attempts, lease_owner, lease_until,
     actor_id, tenant_id, idempotency_key)
SELECT k, o, v, h, c, 'running', 1, w, clock_timestamp() + make_interval(secs => $7), a, t, i
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $8::text[], $9::text[],
            $10::text[])
     AS x(k, o, v, h, c, w, a, t, i), locked
ORDER BY k
ON CONFLICT (run_key) DO UPDATE
    SET attempts = r.attempts + 1, lease_owner = EXCLUDED.lease_owner, lease_until = EXCLUDED.lease_until
    WHERE r.status = 'running' AND r.input_hash = EXCLUDED.input_hash
      AND (r.lease_owner = EXCLUDED.lease_owner OR r.lease_until < clock_timestamp())
RETURNING run_key, attempts
"""

# The claim in a batch's transaction, once its keys are locked (``_LOCKED``): a run that
# exists and may be taken (a lease of this owner's, or one run out) is taken; every existing
# run is read. A key with no row is new: its row is written with its outcome (``complete_many``).
_CLAIM_IN_TRANSACTION = """
WITH taken AS (
    UPDATE oprunner_runs AS r SET attempts = r.attempts + 1, lease_owner = x.w,
           lease_until = clock_timestamp() + make_interval(secs => $4)
    FROM unnest($1::text[], $2::text[], $3::text[]) AS x(k, h, w)
    WHERE r.run_key = x.k AND r.status = 'running' AND r.input_hash = x.h
      AND (r.lease_owner = x.w OR r.lease_until < clock_timestamp())
    RETURNING r.run_key, r.attempts
)
SELECT r.run_key, r.version, r.input_hash, r.status, r.result, coalesce(t.attempts, r.attempts) AS attempts,
       r.command_id, r.result_event, r.audit_event, t.run_key IS NOT NULL AS taken,
       greatest(extract(epoch FROM r.lease_until - clock_timestamp()), 0)::float8 AS lease_left
FROM oprunner_runs AS r LEFT JOIN taken AS t ON t.run_key = r.run_key
WHERE r.run_key = ANY($1::text[])
"""

_CLAIMS_LOST = """
SELECT run_key, version, input_hash, status, result, attempts, command_id, result_event, audit_event,
       greatest(extract(epoch FROM lease_until - clock_timestamp()), 0)::float8 AS lease_left
FROM oprunner_runs WHERE run_key = ANY($1::text[])
"""

CLAIM_LOCK_TIMEOUT = "5s"
"""How long a claim in a batch's transaction waits for a key that another open transaction
holds (a duplicate in flight elsewhere) before the batch gives up and its commands run on
their own claims, which wait without a bound."""

# The outcomes of a batch whose runs were claimed with a row (``done``: a committed claim, or a
# run taken over), and the outbox rows of all its records (a record's rows are told apart by
# its ordinal n). The rest of a batch's writes are two COPYs (``PostgresTransaction.complete_many``).
_FINISH = """
WITH done AS (
    UPDATE oprunner_runs AS r SET status = 'completed', outcome = x.outcome, result = x.result::jsonb,
           completed_at = now(), lease_owner = NULL, lease_until = NULL,
           result_event = x.re, audit_event = x.ae
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::bytea[])
         AS x(key, owner, outcome, result, re, ae)
    WHERE r.run_key = x.key AND r.status = 'running' AND r.lease_owner = x.owner
    RETURNING 1
),
ob AS (
    INSERT INTO oprunner_outbox (topic, key, value, headers)
    SELECT t, k, v, h::jsonb FROM unnest($7::text[], $8::bytea[], $9::bytea[], $10::text[], $11::int[])
        WITH ORDINALITY AS y(t, k, v, h, n, i)
    ORDER BY i
    RETURNING id
)
SELECT (SELECT count(*) FROM done) AS completed, array(SELECT id FROM ob ORDER BY id) AS ids
"""

_RUN_WRITTEN = (
    "run_key",
    "op",
    "version",
    "input_hash",
    "command_id",
    "status",
    "attempts",
    "actor_id",
    "tenant_id",
    "idempotency_key",
    "outcome",
    "result",
    "completed_at",
    "result_event",
    "audit_event",
)
_AUDIT_WRITTEN = (
    "command_id",
    "op",
    "version",
    "status",
    "decision",
    "actor_id",
    "data",
    "correlation_id",
    "trace_id",
)


class PostgresTransaction:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self._new: dict[str, ClaimRequest] = {}
        """Keys claimed in this transaction that have no row yet: each is written once, with its
        outcome (``complete_many``), or as a held claim when the transaction ends (``close``)."""
        self._now: datetime | None = None  # the transaction's now(), for the runs written by COPY

    @property
    def db(self) -> asyncpg.Connection:
        return self._conn

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> list[Claim]:
        if not requests:
            return []
        await self._conn.execute(f"SET LOCAL lock_timeout = '{CLAIM_LOCK_TIMEOUT}'")
        keys = [r.key for r in requests]
        lease = max(r.lease_seconds for r in requests)
        try:
            self._now = (await self._conn.fetchrow(_LOCKED, keys))["at"]
            found = await self._conn.fetch(  # a run taken over may be row-locked: same bound
                _CLAIM_IN_TRANSACTION,
                keys,
                [r.input_hash for r in requests],
                [r.owner for r in requests],
                lease,
            )
        except asyncpg.exceptions.LockNotAvailableError as exc:
            raise LeaseLost("a key of the batch is held by another open transaction") from exc
        await self._conn.execute("SET LOCAL lock_timeout = DEFAULT")  # not the handlers' bound
        rows = {row["run_key"]: row for row in found}
        claims = []
        for r in requests:
            row = rows.get(r.key)
            if row is None:
                self._new[r.key] = r
                claims.append(Claim(ClaimStatus.ACQUIRED, 1))
            elif row["taken"]:
                claims.append(Claim(ClaimStatus.ACQUIRED, row["attempts"]))
            else:
                claims.append(_claim_from(row, r))
        return claims

    async def close(self) -> None:
        """Before the commit: the keys claimed here and not completed (their commands run
        again alone, on this claim) are written as held claims, so the claim outlives the
        transaction as a committed one would."""
        held, self._new = list(self._new.values()), {}
        if held:
            await _claim_many(self._conn, held)

    async def complete_many(
        self, completions: Sequence[tuple[str, str, OutcomeRecord]], records: Sequence[OutcomeRecord]
    ) -> tuple[list[list[int]], list[list[int]]]:
        """One statement for the runs claimed with a row and the outbox rows (when there are
        any), a binary COPY for the runs claimed here (their one write) and one for the audit
        rows: COPY encodes each value once, where an array parameter checks every element."""
        existing = [(key, owner, r) for key, owner, r in completions if key not in self._new]
        fresh = [(self._new.pop(key), r) for key, _, r in completions if key in self._new]
        everything = [record for _, _, record in completions] + list(records)
        pubs = [(n, p) for n, record in enumerate(everything) for p in _outboxed(record)]
        ids: list[int] = []
        if existing or pubs:
            row = await self._conn.fetchrow(
                _FINISH,
                [key for key, _, _ in existing],
                [owner for _, owner, _ in existing],
                [record.status for _, _, record in existing],
                [_json.dumps(record.result).decode() for _, _, record in existing],
                [_event(record, 0) for _, _, record in existing],
                [_event(record, 1) for _, _, record in existing],
                [p.topic for _, p in pubs],
                [p.key for _, p in pubs],
                [p.value for _, p in pubs],
                [orjson.dumps([[k, v.decode("latin-1")] for k, v in p.headers]).decode() for _, p in pubs],
                [n for n, _ in pubs],
            )
            if row["completed"] != len(existing):
                raise LeaseLost(f"{len(existing) - row['completed']} of {len(completions)} claims")
            ids = row["ids"]
        if fresh:
            runs = [
                (
                    q.key,
                    q.op,
                    q.version,
                    q.input_hash,
                    q.command_id,
                    "completed",
                    1,
                    q.actor_id,
                    q.tenant_id,
                    q.idempotency_key,
                    r.status,
                    _json.dumps(r.result).decode(),
                    self._now,
                    _event(r, 0),
                    _event(r, 1),
                )
                for q, r in sorted(fresh, key=lambda f: f[0].key)
            ]
            try:
                await self._conn.copy_records_to_table("oprunner_runs", records=runs, columns=_RUN_WRITTEN)
            except asyncpg.exceptions.UniqueViolationError as exc:  # a claimer that took no lock
                raise LeaseLost("a key claimed in this transaction has a run written meanwhile") from exc
        if everything:
            audit = [
                (
                    r.command_id,
                    r.op,
                    r.version,
                    r.status,
                    r.audit.get("decision"),
                    (r.audit.get("actor") or {}).get("id"),
                    _json.dumps(r.audit).decode(),
                    r.correlation_id,
                    r.trace_id,
                )
                for r in everything
            ]
            await self._conn.copy_records_to_table("oprunner_audit", records=audit, columns=_AUDIT_WRITTEN)
        per_record = iter(ids)
        outboxed = [[next(per_record) for _ in _outboxed(record)] for record in everything]
        return outboxed[: len(completions)], outboxed[len(completions) :]

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        async with self._conn.transaction():  # nested in the open transaction: a SAVEPOINT
            yield

    async def complete(self, key: str, owner: str, record: OutcomeRecord) -> list[int]:
        completed, _ = await self.complete_many([(key, owner, record)], [])
        return completed[0]

    async def record(self, record: OutcomeRecord) -> list[int]:
        _, recorded = await self.complete_many([], [record])
        return recorded[0]


def _event(record: OutcomeRecord, which: int) -> bytes | None:
    """The stored result (0) or audit (1) event of a run whose events the caller publishes."""
    return record.publications[which].value if record.direct else None


def _outboxed(record: OutcomeRecord) -> Sequence[Publication]:
    """The publications of ``record`` that go through the outbox (``OutcomeRecord.direct``)."""
    return record.publications[2:] if record.direct else record.publications


def _claim_from(row: Any, request: ClaimRequest) -> Claim:
    if row is None:
        return Claim(ClaimStatus.BUSY, 0, retry_after=0.0)  # gone meanwhile: claim again
    if row["input_hash"] != request.input_hash:
        return Claim(ClaimStatus.CONFLICT, row["attempts"], version=row["version"])
    if row["status"] == "completed":
        same = row["command_id"] == request.command_id and row["result_event"] is not None
        events = (bytes(row["result_event"]), bytes(row["audit_event"])) if same else None
        return Claim(
            ClaimStatus.COMPLETED, row["attempts"], result=orjson.loads(row["result"]), events=events
        )
    return Claim(ClaimStatus.BUSY, row["attempts"], retry_after=row["lease_left"])


async def _claim_many(conn: asyncpg.Connection, requests: Sequence[ClaimRequest]) -> list[Claim]:
    """One upsert claims every key it can (keys locked in key order); one read tells the
    rest: completed, a conflict, or busy."""
    if not requests:
        return []
    lease = max(r.lease_seconds for r in requests)
    acquired = {
        row["run_key"]: row["attempts"]
        for row in await conn.fetch(
            _CLAIM_MANY,
            [r.key for r in requests],
            [r.op for r in requests],
            [r.version for r in requests],
            [r.input_hash for r in requests],
            [r.command_id for r in requests],
            [r.owner for r in requests],
            lease,
            [r.actor_id for r in requests],
            [r.tenant_id for r in requests],
            [r.idempotency_key for r in requests],
        )
    }
    missed = [r.key for r in requests if r.key not in acquired]
    rows = {row["run_key"]: row for row in await conn.fetch(_CLAIMS_LOST, missed)} if missed else {}
    return [
        Claim(ClaimStatus.ACQUIRED, acquired[r.key]) if r.key in acquired else _claim_from(rows.get(r.key), r)
        for r in requests
    ]


class PostgresStore:
    """Runs, outbox, audit log and webhook inbox in PostgreSQL."""

    transient_errors = TRANSIENT_ERRORS

    def refuses(self, exc: BaseException) -> bool:
        """Postgres refuses the data itself with SQLSTATE classes 22 (data exception), 23
        (integrity) and 54 (program limit: an index row too large); any other Postgres or
        driver error is the server's own trouble. Not a Postgres error at all: a bug, counted."""
        if isinstance(exc, asyncpg.PostgresError):
            return str(getattr(exc, "sqlstate", "") or "")[:2] in ("22", "23", "54")
        return not isinstance(exc, asyncpg.InterfaceError | OSError)

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def claim(self, request: ClaimRequest) -> Claim:
        return (await self.claim_many([request]))[0]

    async def renew(self, key: str, owner: str, lease_seconds: float) -> bool:
        return await self.renew_many([key], owner, lease_seconds) == 1

    async def renew_many(self, keys: Sequence[str], owner: str, lease_seconds: float) -> int:
        status = await self.pool.execute(
            """UPDATE oprunner_runs SET lease_until = now() + make_interval(secs => $3)
               WHERE run_key = ANY($1::text[]) AND lease_owner = $2 AND status = 'running'""",
            list(keys),
            owner,
            lease_seconds,
        )
        return int(status.split()[-1])

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> list[Claim]:
        if not requests:
            return []
        async with self.pool.acquire() as conn:
            return await _claim_many(conn, requests)

    async def unfinished(self, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        rows = await self.pool.fetch(
            "SELECT run_key FROM oprunner_runs WHERE run_key = ANY($1::text[]) AND status = 'running'",
            list(keys),
        )
        return {row["run_key"] for row in rows}

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        # READ COMMITTED whatever the database's default: a claim's read must see what the
        # holder of the lock it waited for committed (each statement takes a new snapshot)
        async with self.pool.acquire() as conn, conn.transaction(isolation="read_committed"):
            tx = PostgresTransaction(conn)
            yield tx
            await tx.close()  # not on an exception: the rollback forgets those claims

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn:
            yield conn

    async def record(self, record: OutcomeRecord) -> list[int]:
        async with self.transaction() as tx:
            return await tx.record(record)

    async def wait(self, key: str, within: float) -> None:
        await asyncio.sleep(min(within, 0.1))

    async def mark_published(self, ids: Sequence[int]) -> None:
        if ids:
            await self.pool.execute("DELETE FROM oprunner_outbox WHERE id = ANY($1::bigint[])", list(ids))

    @asynccontextmanager
    async def sweep(self, limit: int, min_age: float) -> AsyncIterator[Sweep]:
        """Lock outbox rows older than ``min_age`` seconds that no one else holds; delete them
        when the block exits cleanly (they were published). Safe with several relays."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT id, topic, key, value, headers FROM oprunner_outbox
                   WHERE created_at < now() - make_interval(secs => $2) AND failed_at IS NULL
                   ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED""",
                limit,
                min_age,
            )
            sweep = Sweep([_outbox_row(row) for row in rows])
            yield sweep
            published = [r.id for r in sweep.rows if r.id not in sweep.kept and r.id not in sweep.parked]
            if published:
                await conn.execute("DELETE FROM oprunner_outbox WHERE id = ANY($1::bigint[])", published)
            for row_id, error in sweep.parked.items():
                await conn.execute(
                    "UPDATE oprunner_outbox SET failed_at = now(), error = $2 WHERE id = $1",
                    row_id,
                    error[:500],
                )

    async def find_run(self, id: str, key: str | None = None) -> RunView | None:
        row = await self.pool.fetchrow(
            """SELECT command_id, idempotency_key, op, status, outcome, result, actor_id, tenant_id,
                      attempts, created_at, completed_at, run_key
               FROM oprunner_runs WHERE command_id = $1 OR run_key = $2
               ORDER BY (run_key = $2) DESC NULLS LAST LIMIT 1""",
            id,
            key,
        )
        if row is not None:
            status = row["outcome"] if row["status"] == "completed" else "running"
            result = orjson.loads(row["result"]) if row["result"] else None
            return RunView(
                row["command_id"],
                row["op"],
                status,
                result,
                row["actor_id"],
                row["tenant_id"],
                row["idempotency_key"],
                row["attempts"],
                row["created_at"],
                row["completed_at"],
                kind_of(row["run_key"], row["actor_id"]),
            )
        audit = await self.pool.fetchrow(
            """SELECT op, status, actor_id, data FROM oprunner_audit
               WHERE command_id = $1 ORDER BY id DESC LIMIT 1""",
            id,
        )
        if audit is None:
            accepted = await self.pool.fetchrow(
                """SELECT actor_id, tenant_id, actor ->> 'kind' AS kind
                   FROM oprunner_accepted WHERE command_id = $1""",
                id,
            )
            if accepted is None:
                return None
            who = accepted["actor_id"], accepted["tenant_id"]
            return RunView(id, "", "pending", None, *who, actor_kind=accepted["kind"])
        data = orjson.loads(audit["data"])
        error = {"code": data.get("error"), "message": data.get("reason")} if data.get("error") else None
        result = {"status": audit["status"], **({"error": error} if error else {})}
        actor = data.get("actor") or {}
        return RunView(
            id,
            audit["op"],
            audit["status"],
            result,
            audit["actor_id"],
            actor.get("tenant"),
            actor_kind=actor.get("kind"),
        )

    async def list_runs(
        self, where: RunFilter, *, before: int | None = None, after: int | None = None, limit: int = 50
    ) -> list[AuditEntry]:
        conditions, args = _run_conditions(where)
        if after is not None:
            args.append(after)
            conditions.append(f"id > ${len(args)}")
        elif before is not None:
            args.append(before)
            conditions.append(f"id < ${len(args)}")
        args.append(limit)
        order = "ASC" if after is not None else "DESC"
        rows = await self.pool.fetch(
            f"""SELECT {_AUDIT_COLUMNS} FROM oprunner_audit
                WHERE {" AND ".join(conditions) or "true"} ORDER BY id {order} LIMIT ${len(args)}""",
            *args,
        )
        return [_audit_entry(row) for row in rows]

    async def accept(self, accepted: Accepted, lease_seconds: float) -> None:
        actor = accepted.actor or {}
        await self.pool.execute(
            """INSERT INTO oprunner_accepted (command_id, command, actor, actor_id, tenant_id, claimed_until)
               VALUES ($1, $2, $3::jsonb, $4, $5, now() + make_interval(secs => $6))""",
            accepted.command_id,
            accepted.command,
            None if accepted.actor is None else _json.dumps(accepted.actor).decode(),
            actor.get("id"),
            actor.get("tenant"),
            lease_seconds,
        )

    async def take_accepted(self, limit: int, lease_seconds: float) -> Sequence[Accepted]:
        rows = await self.pool.fetch(
            """UPDATE oprunner_accepted SET claimed_until = now() + make_interval(secs => $2)
               WHERE command_id IN (SELECT command_id FROM oprunner_accepted WHERE claimed_until < now()
                                    ORDER BY accepted_at LIMIT $1 FOR UPDATE SKIP LOCKED)
               RETURNING command_id, command, actor""",
            limit,
            lease_seconds,
        )
        return [
            Accepted(r["command_id"], bytes(r["command"]), orjson.loads(r["actor"]) if r["actor"] else None)
            for r in rows
        ]

    async def finish_accepted(self, command_id: str) -> None:
        await self.pool.execute("DELETE FROM oprunner_accepted WHERE command_id = $1", command_id)

    async def backlog(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM oprunner_outbox WHERE failed_at IS NULL"))


_AUDIT_COLUMNS = """id, command_id, op, version, status, decision, actor_id,
    (data -> 'actor') ->> 'tenant' AS tenant_id, correlation_id, trace_id, recorded_at, data"""
_TENANT = "((data -> 'actor') ->> 'tenant')"  # the expression oprunner_audit_by_tenant indexes
_KIND = "((data -> 'actor') ->> 'kind')"


def _run_conditions(where: RunFilter) -> tuple[list[str], list[Any]]:
    """SQL conditions (and their arguments) for ``where``; every value is a parameter."""
    conditions: list[str] = []
    args: list[Any] = []

    def add(template: str, value: Any) -> None:
        args.append(value)
        conditions.append(template.format(f"${len(args)}"))

    for column, value in (
        ("op", where.op),
        ("status", where.status),
        ("actor_id", where.actor_id),
        (_TENANT, where.tenant_id),
        (_KIND, where.actor_kind),
        ("correlation_id", where.correlation_id),
        ("command_id", where.command_id),
    ):
        if value is not None:
            add(f"{column} = {{}}", value)
    if where.since is not None:
        add("recorded_at >= {}", where.since)
    if where.until is not None:
        add("recorded_at < {}", where.until)
    if where.actor is not None:  # "=" or IS NULL, never IS NOT DISTINCT FROM: indexes serve these
        for column, value in zip(("actor_id", _TENANT), where.actor, strict=True):
            if value is None:
                conditions.append(f"{column} IS NULL")
            else:
                add(f"{column} = {{}}", value)
    if where.ops is not None:
        add("op = ANY({}::text[])", sorted(where.ops))
    if not where.replays:
        conditions.append("NOT coalesce((data ->> 'replayed')::boolean, false)")
    return conditions, args


def _audit_entry(row: asyncpg.Record) -> AuditEntry:
    return AuditEntry(
        row["id"],
        row["command_id"],
        row["op"],
        row["version"],
        row["status"],
        row["decision"],
        row["actor_id"],
        row["tenant_id"],
        row["correlation_id"],
        row["trace_id"],
        row["recorded_at"],
        orjson.loads(row["data"]),
    )


def _outbox_row(row: asyncpg.Record) -> OutboxRow:
    headers = tuple((k, v.encode("latin-1")) for k, v in orjson.loads(row["headers"]))
    return OutboxRow(row["id"], Publication(row["topic"], row["key"], row["value"], headers))


async def _keep_session(conn: asyncpg.Connection) -> None:
    """asyncpg resets every connection it takes back (a round trip per release). Nothing here
    leaves session state behind (transactions end, the migration lock is released), so skip it."""


async def connect_pool(
    dsn: str, *, min_size: int = 2, max_size: int = 20, connect_within: float = 10.0
) -> asyncpg.Pool:
    """A pool whose connections fail fast: ``connect_within`` seconds to connect."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=connect_within,
        command_timeout=60,
        reset=_keep_session,
    )
    assert pool is not None
    return pool
