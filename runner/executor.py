"""The executor: steps 2-7 of DESIGN.md for one parsed command.

find spec -> validate -> authenticate and authorize -> claim the idempotency key -> run the
handler in a transaction -> record the outcome and its outbox rows in that transaction.
Every path ends in an ``Outcome`` whose result and audit events are in the outbox; the only
exceptions that escape are ``StoreUnavailable`` (nothing could be recorded: do not ack the
message) and cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from . import _json
from .auth import Actor, Authenticator
from .context import OperationContext, PolicyContext
from .envelope import (
    AUDIT_TYPE,
    CONTENT_TYPE,
    CommandEnvelope,
    build_event,
    now_iso,
    nul_paths,
    parse_command,
    visible,
    without_nul,
)
from .errors import (
    AuthError,
    LeaseLost,
    OperationError,
    RetryableError,
    StoreUnavailable,
    UnknownOperation,
)
from .model import Model, redact
from .observability import Metrics, end_span, start_span, traceparent_of
from .policy import Decision, authorize
from .registry import Installed, OperationRegistry
from .spec import OperationSpec, Retry
from .store import ClaimRequest, ClaimStatus, OutcomeRecord, Publication, Store, run_key

Status = Literal["succeeded", "failed", "rejected", "denied"]
AuditDecision = Literal["allow", "deny", "reject"]

LEASE_SECONDS = 10.0
"""How long a claim lasts without renewal. While a handler runs, its lease is renewed every
third of this, so a crashed worker's commands are taken over within about this long."""

STORE_RETRY = Retry(max_attempts=5, initial_backoff=0.1, max_backoff=2.0)
"""How long to keep trying a store that does not answer before giving the command back."""

_log = logging.getLogger("oprunner.executor")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one command. ``result`` and ``audit`` are the events in the outbox."""

    status: Status
    result: dict[str, Any]
    audit: dict[str, Any]
    publications: tuple[Publication, ...]
    outbox_ids: tuple[int, ...]
    replayed: bool = False

    @property
    def error_code(self) -> str | None:
        error = self.result["data"].get("error")
        return error["code"] if error else None

    @property
    def output(self) -> dict[str, Any] | None:
        out: dict[str, Any] | None = self.result["data"].get("output")
        return out


MAX_MESSAGE = 500
"""An error message is cut to this: it may name what a caller sent (field names, reasons),
and what any caller can make long must stay small where it is kept."""


def _error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": _cut(message), **extra}


def _cut(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


MAX_FIELD_ERRORS = 100
MAX_AUDIT_INPUT = 64 * 1024


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Pydantic's errors as ``{field, message, type}`` with wire names (``invoiceId``); at most
    ``MAX_FIELD_ERRORS`` of them, so a hostile input cannot make a huge result."""
    return [
        {
            "field": ".".join(str(p) for p in err["loc"])[:200] or "data",
            "message": err["msg"][:500],
            "type": err["type"],
        }
        for err in exc.errors(include_url=False, include_input=False)[:MAX_FIELD_ERRORS]
    ]


def _bounded(value: Any) -> Any:
    """The audit's copy of an input, or a note of its size when it is too large to carry."""
    size = len(_json.dumps(value))
    return value if size <= MAX_AUDIT_INPUT else {"omitted": True, "bytes": size}


def _withheld(data: Any, why: str) -> dict[str, Any]:
    """What the audit keeps of input it must not store: its size and digest, enough to match
    it against a copy, not enough to let an unauthenticated caller fill the audit log."""
    raw = _json.dumps(data)
    return {"omitted": True, "why": why, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def fingerprint(op: str, actor: Actor | None, wire: dict[str, Any]) -> str:
    """What must match for a repeated idempotency key to be a replay rather than a conflict.
    ``wire`` is the validated input as it goes on the wire (``Model.to_wire()``)."""
    who = None if actor is None else [actor.kind, actor.user_id, actor.tenant_id]
    body = _json.dumps({"op": op, "actor": who, "input": wire})
    return hashlib.sha256(body).hexdigest()


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class _OutputInvalid(Exception):
    pass


class _InTurn:
    """A database handle shared by concurrent resolvers: each call waits for the one before
    (one asyncpg connection runs one query at a time). Batch resolvers make this one call."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self._lock = asyncio.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._db, name)
        if not callable(attr):
            return attr

        async def in_turn(*args: Any, **kwargs: Any) -> Any:
            async with self._lock:
                return await attr(*args, **kwargs)

        return in_turn


class _BatchAbort(Exception):
    """A batch handler did not succeed: its commands run one by one, on the plain handler."""


@dataclass(frozen=True, slots=True)
class _Verdict:
    """An outcome decided without running a handler: rejected, denied, or a replay."""

    call: _Call
    status: Status
    decision: AuditDecision
    error: dict[str, Any] | None
    replay: dict[str, Any] | None = None


class _Rollback(Exception):
    """Leave the handler's transaction without committing; ``data`` is the failure to record."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data


@dataclass(slots=True)
class _Call:
    """One command on its way through: what the audit event needs, gathered as steps pass."""

    command: CommandEnvelope
    started: float
    spec: OperationSpec | None = None
    actor: Actor | None = None
    input: Any = None
    partition: str | None = None
    span: Any = None
    traceparent: str | None = None
    wire: dict[str, Any] = field(default_factory=dict)  # the validated input, dumped once
    authenticated: bool = False  # a verified actor (or one this process verified earlier)


class Executor:
    """Runs commands against a registry and a store. Safe to share between tasks."""

    def __init__(
        self,
        registry: OperationRegistry,
        store: Store,
        authenticator: Authenticator | None,
        *,
        results_topic: str = "ops.results",
        audit_topic: str = "ops.audit",
        source: str = "oprunner",
        clients: Mapping[str, Any] | None = None,
        transient_errors: tuple[type[BaseException], ...] = (),
        worker_id: str | None = None,
        lease_seconds: float = LEASE_SECONDS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        metrics: Metrics | None = None,
    ) -> None:
        self.registry = registry
        self.store = store
        self.authenticator = authenticator
        self.results_topic = results_topic
        self.audit_topic = audit_topic
        self.source = source
        self.clients = dict(clients or {})
        self.worker_id = worker_id or default_worker_id()
        self.lease_seconds = lease_seconds
        self.metrics = metrics
        self._transient: tuple[type[BaseException], ...] = (
            ConnectionError,
            TimeoutError,
            RetryableError,
            *store.transient_errors,
            *transient_errors,
        )
        self._sleep = sleep

    # -- the pipeline ---------------------------------------------------------------------

    async def execute(
        self,
        command: CommandEnvelope | bytes | str | Mapping[str, Any],
        *,
        token: str | None = None,
        actor: Actor | None = None,
    ) -> Outcome:
        """Take one command to an outcome recorded in the store (steps 2-7).

        ``command`` may be raw CloudEvents JSON or a dict, parsed here (an ``EnvelopeError``
        then means it belongs on the dead-letter topic). ``token`` is the bearer token, with
        or without its ``Bearer `` prefix. ``actor`` instead is an actor this process verified
        earlier (a command it accepted to run later): never one taken from a message.
        """
        if not isinstance(command, CommandEnvelope):
            raw = _json.dumps(dict(command)) if isinstance(command, Mapping) else command
            command = parse_command(raw)
        return await self._execute_prepared(await self._prepare(command, token, verified=actor))

    async def _execute_prepared(self, prepared: _Verdict | tuple[Installed, _Call, Model]) -> Outcome:
        if isinstance(prepared, _Verdict):
            call = prepared.call
            outcome = await self._settle(call, prepared.status, prepared.decision, prepared.error)
        else:
            installed, call, value = prepared
            if installed.spec.kind == "query":
                outcome = await self._run_query(installed, call, value)
            else:
                outcome = await self._run_once(installed, call, value)
        self._finish(call, outcome)
        return outcome

    def _finish(self, call: _Call, outcome: Outcome) -> None:
        """Close the command's span and count its outcome."""
        if call.span is not None:
            end_span(call.span, outcome.status, outcome.error_code)
        if self.metrics is not None:
            op = call.spec.key if call.spec else "unknown"
            self.metrics.commands.labels(op, outcome.status).inc()

    async def execute_many(self, items: Sequence[tuple[CommandEnvelope, str | None]]) -> list[Outcome]:
        """Execute a batch of commands together: one claim statement, the handlers one after
        another in one transaction, one statement for all outcomes, one commit.

        Give it commands that may run in any order relative to each other (distinct Kafka keys).
        If any handler fails or anything goes wrong, the batch's transaction is rolled back and
        each of its commands runs on the per-command path instead (same claims, same external
        idempotency keys), so the outcome is what ``execute`` would have given.
        """
        try:
            async with self._batch_reader(items) as db:
                prepared = await asyncio.gather(*(self._prepare(c, self._strip(t), db) for c, t in items))
        except Exception as exc:
            if isinstance(exc, self._transient):
                raise StoreUnavailable(f"store unavailable: {exc!r}") from exc
            raise
        outcomes: list[Outcome | None] = [None] * len(items)
        verdicts: list[tuple[int, _Verdict]] = []
        batch: list[tuple[int, Installed, _Call, Model]] = []
        alone: list[int] = []  # queries, and repeated idempotency keys: the per-command path
        keys: set[str] = set()
        for i, p in enumerate(prepared):
            if isinstance(p, _Verdict):
                verdicts.append((i, p))
            elif p[0].spec.kind == "query" or (key := self._run_key(p[1])) in keys:
                alone.append(i)
            else:
                keys.add(key)
                batch.append((i, *p))
        owner = f"{self.worker_id}/{uuid.uuid4().hex[:12]}"
        requests = [self._claim_request(installed, call, value, owner) for _, installed, call, value in batch]
        claims = await self._with_store_retries(lambda: self.store.claim_many(requests)) if requests else []
        acquired: list[tuple[int, Installed, _Call, Model, ClaimRequest, int]] = []
        for (i, installed, call, value), request, claim in zip(batch, requests, claims, strict=True):
            if claim.status is ClaimStatus.ACQUIRED:
                acquired.append((i, installed, call, value, request, claim.attempts))
            elif claim.status is ClaimStatus.COMPLETED:
                assert claim.result is not None
                verdicts.append((i, _Verdict(call, claim.result["status"], "allow", None, claim.result)))
            elif claim.status is ClaimStatus.CONFLICT:
                message = "this idempotency key was used with a different input"
                verdicts.append(
                    (i, _Verdict(call, "rejected", "reject", _error("IDEMPOTENCY_CONFLICT", message)))
                )
            else:
                alone.append(i)  # a live worker holds it: wait for it on the per-command path
        try:
            async with self._heartbeat([a[4].key for a in acquired], owner) as quiet:
                done, again = await self._run_batch(acquired, verdicts, quiet)
        except Exception as exc:
            if not isinstance(exc, LeaseLost) and not isinstance(exc, self._transient):
                _log.exception("batch of %d failed; running its commands one by one", len(acquired))
            done = await self._unbatch(acquired, verdicts)
        else:
            done += await self._gather_all(self._next_attempt(acquired[n], exc) for n, exc in again)
        calls = {i: p.call if isinstance(p, _Verdict) else p[1] for i, p in enumerate(prepared)}
        for i, outcome in done:
            outcomes[i] = outcome
            self._finish(calls[i], outcome)
        for i in alone:
            outcomes[i] = await self._execute_prepared(prepared[i])
        if self.metrics is not None and acquired:
            self.metrics.batches.inc()
        return [o for o in outcomes if o is not None]

    async def _run_batch(
        self,
        acquired: list[tuple[int, Installed, _Call, Model, ClaimRequest, int]],
        verdicts: list[tuple[int, _Verdict]],
        quiet_heartbeat: Callable[[], Awaitable[None]],
    ) -> tuple[list[tuple[int, Outcome]], list[tuple[int, BaseException | None]]]:
        """One transaction for the batch, one savepoint per command (or per batch-handler
        call): a command that fails rolls back only its own writes, and its failure is
        recorded with the rest. Returns the outcomes, and the commands (index in
        ``acquired``) whose attempt must be run again alone, with the transient error that
        ended it (None when their batch form failed: each then runs the plain handler)."""
        again: list[tuple[int, BaseException | None]] = []
        async with self.store.transaction() as tx:
            outputs: dict[int, dict[str, Any]] = {}  # index in ``acquired`` -> result data
            groups: dict[int, list[int]] = {}  # operations with a batch handler -> their commands
            for n, (_, installed, call, value, _, attempt) in enumerate(acquired):
                if installed.batch is not None:
                    groups.setdefault(id(installed), []).append(n)
                    continue
                try:
                    async with tx.savepoint():
                        data = await self._invoke(installed, call, value, tx.db, attempt)
                        if data["status"] != "succeeded":
                            raise _Rollback(data)  # undo its writes; record its failure
                except _Rollback as rollback:
                    data = rollback.data
                except Exception as exc:
                    if not self._is_transient(exc, installed.spec):
                        raise
                    again.append((n, exc))
                    continue
                outputs[n] = data
            for members in groups.values():
                try:
                    async with tx.savepoint():
                        datas = await self._invoke_batch([acquired[n] for n in members], tx.db)
                except _BatchAbort:
                    again += [(n, None) for n in members]
                    continue
                outputs.update(zip(members, datas, strict=True))
            completions = [
                (
                    request.key,
                    request.owner,
                    self._record(call, outputs[n]["status"], "allow", outputs[n], attempt),
                )
                for n, (_, _, call, _, request, attempt) in enumerate(acquired)
                if n in outputs
            ]
            records = [self._verdict_record(v) for _, v in verdicts]
            # The heartbeat and the commit lock the same rows, in other orders: stop it first.
            await quiet_heartbeat()
            completed_ids, record_ids = await tx.complete_many(completions, records)
        ran = [a for n, a in enumerate(acquired) if n in outputs]
        out = [
            (a[0], self._outcome(c[2], ids))
            for a, c, ids in zip(ran, completions, completed_ids, strict=True)
        ]
        out += [
            (i, self._outcome(r, ids, replayed=v.replay is not None))
            for (i, v), r, ids in zip(verdicts, records, record_ids, strict=True)
        ]
        return out, again

    async def _next_attempt(
        self, item: tuple[int, Installed, _Call, Model, ClaimRequest, int], exc: BaseException | None
    ) -> tuple[int, Outcome]:
        """A command whose attempt in a batch did not finish: on alone, as ``execute`` would.

        After a transient failure (its first: counted like ``execute`` counts) that is its
        next attempt, after backoff, or its end if one was all it had; after its batch form
        failed, the plain handler at once."""
        i, installed, call, value, request, attempt = item
        if exc is None:
            return i, await self._run_once(installed, call, value, request)
        if installed.spec.retry.max_attempts <= 1:  # this was its one failure allowed
            return i, await self._give_up(call, request, attempt, exc)
        self._note_retry(call, exc)
        await self._sleep(backoff(1, installed.spec.retry))
        return i, await self._run_once(installed, call, value, request, failures=1)

    @staticmethod
    async def _gather_all(runs: Iterable[Awaitable[tuple[int, Outcome]]]) -> list[tuple[int, Outcome]]:
        """Every run to its end, then the first error if any: none is left running unseen."""
        results = await asyncio.gather(*runs, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if not isinstance(r, BaseException)]

    async def _unbatch(
        self,
        acquired: list[tuple[int, Installed, _Call, Model, ClaimRequest, int]],
        verdicts: list[tuple[int, _Verdict]],
    ) -> list[tuple[int, Outcome]]:
        async def one(
            i: int, installed: Installed, call: _Call, value: Model, request: ClaimRequest
        ) -> tuple[int, Outcome]:
            return i, await self._run_once(installed, call, value, request)

        runs = [one(i, inst, call, value, req) for i, inst, call, value, req, _ in acquired]
        settles = [self._settle_verdict(i, v) for i, v in verdicts]
        return await self._gather_all([*runs, *settles])

    async def _settle_verdict(self, i: int, v: _Verdict) -> tuple[int, Outcome]:
        return i, await self._settle(v.call, v.status, v.decision, v.error, replay=v.replay)

    def _verdict_record(self, v: _Verdict) -> OutcomeRecord:
        data = v.replay if v.replay is not None else {"status": v.status, "error": v.error}
        return self._record(v.call, v.status, v.decision, data, 0, replayed=v.replay is not None)

    @staticmethod
    def _strip(token: str | None) -> str | None:
        if token is not None and token[:7].lower() == "bearer ":
            return token[7:].strip()
        return token

    @contextlib.asynccontextmanager
    async def _batch_reader(self, items: Sequence[tuple[CommandEnvelope, str | None]]) -> AsyncIterator[Any]:
        """One database handle for the resolvers of a whole batch, its calls taken in turn."""
        if len(items) < 2:
            yield None
            return
        async with self.store.reader() as db:
            yield _InTurn(db)

    async def _prepare(
        self, command: CommandEnvelope, token: str | None, db: Any = None, *, verified: Actor | None = None
    ) -> _Verdict | tuple[Installed, _Call, Model]:
        """Steps 2-4: find the spec, validate, authenticate, authorize."""
        token = self._strip(token)
        call = _Call(command=command, started=time.monotonic())
        call.span = start_span(command.type, command.id, command.correlation_id, command.traceparent)
        call.traceparent = traceparent_of(call.span) or command.traceparent
        actor, auth_failure = (verified, None) if verified is not None else self._authenticate(token)
        if actor is not None and actor.bound is not None and not actor.bound.admits(command):
            auth_failure = "the token authorizes another command (its id or data differ)"
        call.actor = actor
        call.authenticated = actor is not None and auth_failure is None
        try:
            installed = self.registry.get(command.type, command.opversion)
        except UnknownOperation as exc:
            return _Verdict(call, "rejected", "reject", _error("UNKNOWN_OPERATION", str(exc)))
        spec = call.spec = installed.spec
        if not isinstance(command.data, dict):
            call.input = without_nul(command.data)
            message = f"data must be a JSON object, got {type(command.data).__name__}"
            return _Verdict(call, "rejected", "reject", _error("INVALID_INPUT", message, fields=[]))
        if nul := nul_paths(command.data):  # valid JSON that no store can hold
            call.input = redact(spec.io.input, without_nul(command.data))
            fields = [{"field": f, "message": "contains U+0000", "type": "nul_character"} for f in nul]
            message = "invalid input: " + ", ".join(sorted(set(nul))) + " (U+0000 cannot be stored)"
            return _Verdict(call, "rejected", "reject", _error("INVALID_INPUT", message, fields=fields))
        try:
            value = spec.io.input.model_validate(command.data)
        except ValidationError as exc:
            call.input = redact(spec.io.input, command.data)  # audited as sent, secrets hidden
            fields = field_errors(exc)
            message = "invalid input: " + ", ".join(sorted({f["field"] for f in fields}))
            return _Verdict(call, "rejected", "reject", _error("INVALID_INPUT", message, fields=fields))
        call.partition = spec.partition_value(value)
        call.wire = value.to_wire()
        call.input = redact(spec.io.input, call.wire)
        if auth_failure is None and actor is None and spec.policy.auth != "public":
            auth_failure = "a bearer token is required"
        if auth_failure is not None:
            return _Verdict(call, "denied", "deny", _error("UNAUTHENTICATED", auth_failure))
        decision = await self._authorize(spec, actor, value, db)
        if not decision.allowed:
            return _Verdict(call, "denied", "deny", _error("FORBIDDEN", decision.reason))
        return installed, call, value

    def _authenticate(self, token: str | None) -> tuple[Actor | None, str | None]:
        if token is None:
            return None, None
        if self.authenticator is None:
            return None, "no token verification is configured"
        try:
            return self.authenticator.authenticate(token), None
        except AuthError as exc:
            return None, exc.reason

    async def _authorize(
        self, spec: OperationSpec, actor: Actor | None, value: Model, shared: Any = None
    ) -> Decision:
        async def check() -> Decision:
            if shared is not None or not any(rule.needs_resource() for rule in spec.policy.rules):
                return await authorize(spec, actor, self.registry, PolicyContext(actor, spec, value, shared))
            async with self.store.reader() as db:
                return await authorize(spec, actor, self.registry, PolicyContext(actor, spec, value, db))

        try:
            decision: Decision = await self._with_store_retries(check)
            return decision
        except StoreUnavailable:
            raise
        except Exception as exc:  # a resolver bug must not let anyone in: fail closed
            _log.exception("policy check of %s failed", spec.key)
            return Decision(False, f"policy check failed ({type(exc).__name__})")

    @staticmethod
    def _run_key(call: _Call) -> str:
        actor = call.actor
        return run_key(
            actor.tenant_id if actor else None, actor.user_id if actor else None, call.command.idempotency_key
        )

    def _claim_request(self, installed: Installed, call: _Call, value: Model, owner: str) -> ClaimRequest:
        spec, command = installed.spec, call.command
        return ClaimRequest(
            key=self._run_key(call),
            idempotency_key=command.idempotency_key,
            op=spec.key,
            version=spec.version,
            input_hash=fingerprint(spec.key, call.actor, call.wire),
            command_id=command.id,
            owner=owner,
            lease_seconds=self.lease_seconds,
            actor_id=call.actor.user_id if call.actor else None,
            tenant_id=call.actor.tenant_id if call.actor else None,
        )

    async def _run_once(
        self,
        installed: Installed,
        call: _Call,
        value: Model,
        request: ClaimRequest | None = None,
        *,
        failures: int = 0,
    ) -> Outcome:
        """Claim, run, record; ``request`` carries a claim this execution may already hold,
        ``failures`` the transient failures its attempts have had so far."""
        # One execution owns the lease, not the process: two deliveries of one key in the
        # same process (a rebalance, HTTP and Kafka at once) must not both hold it.
        request = request or self._claim_request(
            installed, call, value, f"{self.worker_id}/{uuid.uuid4().hex[:12]}"
        )
        spec = installed.spec
        while True:
            claim = await self._with_store_retries(lambda: self.store.claim(request))
            if claim.status is ClaimStatus.COMPLETED:
                assert claim.result is not None
                return await self._settle(call, claim.result["status"], "allow", replay=claim.result)
            if claim.status is ClaimStatus.CONFLICT:
                message = "this idempotency key was used with a different input"
                return await self._settle(call, "rejected", "reject", _error("IDEMPOTENCY_CONFLICT", message))
            if claim.status is ClaimStatus.BUSY:
                await self.store.wait(request.key, max(claim.retry_after, 0.01))
                continue
            try:
                async with self._heartbeat([request.key], request.owner):
                    return await self._attempt(installed, call, value, request, claim.attempts)
            except LeaseLost:
                continue  # someone else finished or holds it now: claim again to find out
            except Exception as exc:
                if not self._is_transient(exc, spec):
                    await self._release(request)  # the next try may claim at once
                    raise
                failures += 1
                if failures >= spec.retry.max_attempts:
                    return await self._give_up(call, request, claim.attempts, exc)
                self._note_retry(call, exc)
                await self._sleep(backoff(failures, spec.retry))

    async def _attempt(
        self, installed: Installed, call: _Call, value: Model, request: ClaimRequest, attempt: int
    ) -> Outcome:
        key, owner = request.key, request.owner
        try:
            async with self.store.transaction() as tx:
                data = await self._invoke(installed, call, value, tx.db, attempt)
                if data["status"] != "succeeded":
                    raise _Rollback(data)  # the handler's writes must not commit with a failure
                record = self._record(call, "succeeded", "allow", data, attempt)
                ids = await tx.complete(key, owner, record)
        except _Rollback as rollback:
            record = self._record(call, "failed", "allow", rollback.data, attempt)
            async with self.store.transaction() as tx:
                ids = await tx.complete(key, owner, record)
        return self._outcome(record, ids)

    def _context(self, spec: OperationSpec, call: _Call, db: Any, attempt: int) -> OperationContext:
        command = call.command
        return OperationContext(
            db=db,
            actor=call.actor,
            idempotency_key=command.idempotency_key,
            run_key=self._run_key(call),
            spec=spec,
            command_id=command.id,
            correlation_id=command.correlation_id,
            attempt=attempt,
            logger=logging.LoggerAdapter(
                logging.getLogger(f"oprunner.op.{spec.key}"),
                {
                    "command_id": command.id,
                    "correlation_id": command.correlation_id,
                    "op": spec.key,
                },
            ),
            clients=self.clients,
        )

    async def _invoke(
        self,
        installed: Installed,
        call: _Call,
        value: Model,
        db: Any,
        attempt: int,
    ) -> dict[str, Any]:
        """Run the handler; return the result data. Transient errors propagate."""
        spec = installed.spec
        ctx = self._context(spec, call, db, attempt)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(spec.timeout):
                raw = await installed.handler(value, ctx)
            output = _validate_output(spec.io.output, raw)
        except OperationError as exc:
            if exc.retryable:
                raise RetryableError(exc.code) from exc
            error = _error(visible(exc.code), visible(exc.message), **without_nul(_details(exc)))
            return {"status": "failed", "error": error}
        except _OutputInvalid as exc:
            return {"status": "failed", "error": _error("OUTPUT_INVALID", str(exc))}
        except Exception as exc:
            if self._is_transient(exc, spec):
                raise
            ctx.logger.exception("handler of %s raised", spec.key)
            return {"status": "failed", "error": _error("HANDLER_ERROR", type(exc).__name__)}
        finally:
            if self.metrics is not None:
                self.metrics.handler_seconds.labels(spec.key).observe(time.perf_counter() - started)
        return {"status": "succeeded", "output": output}

    async def _invoke_batch(
        self, items: list[tuple[int, Installed, _Call, Model, ClaimRequest, int]], db: Any
    ) -> list[dict[str, Any]]:
        """Run one operation's batch handler for ``items``; the result data of each, or
        ``_BatchAbort`` when anything at all goes wrong (each command then runs alone)."""
        installed = items[0][1]
        spec, batch = installed.spec, installed.batch
        assert batch is not None
        contexts = [(value, self._context(spec, call, db, n)) for _, _, call, value, _, n in items]
        started = time.perf_counter()
        try:
            async with asyncio.timeout(spec.timeout):
                raws = await batch(contexts)
            if len(raws) != len(items):
                raise _OutputInvalid(f"batch handler returned {len(raws)} outputs for {len(items)} inputs")
            outputs = [_validate_output(spec.io.output, raw) for raw in raws]
        except Exception as exc:
            # Not a retry of any one command (which one failed is unknown): each runs alone
            # next, where its own failures and retries are counted.
            transient = self._is_transient(exc, spec)
            _log.log(
                logging.INFO if transient else logging.WARNING,
                "batch handler of %s raised %s; running its %d commands one by one",
                spec.key,
                type(exc).__name__,
                len(items),
                exc_info=not transient and not isinstance(exc, (OperationError, _OutputInvalid)),
            )
            raise _BatchAbort() from exc
        finally:
            if self.metrics is not None:
                share = (time.perf_counter() - started) / len(items)
                for _ in items:
                    self.metrics.handler_seconds.labels(spec.key).observe(share)
        return [{"status": "succeeded", "output": output} for output in outputs]

    async def _run_query(self, installed: Installed, call: _Call, value: Model) -> Outcome:
        failures = 0
        while True:
            try:
                async with self.store.transaction() as tx:
                    data = await self._invoke(installed, call, value, tx.db, failures + 1)
                    record = self._record(call, data["status"], "allow", data, failures + 1)
                    ids = await tx.record(record)
                return self._outcome(record, ids)
            except Exception as exc:
                if not self._is_transient(exc, installed.spec):
                    raise
                failures += 1
                if failures >= installed.spec.retry.max_attempts:
                    error = _error(
                        "RETRIES_EXHAUSTED",
                        f"gave up after {failures} attempts: {type(exc).__name__}",
                    )
                    return await self._settle(call, "failed", "allow", error)
                await self._sleep(backoff(failures, installed.spec.retry))

    async def _give_up(self, call: _Call, request: ClaimRequest, attempt: int, exc: BaseException) -> Outcome:
        cause = exc.__cause__ if isinstance(exc, RetryableError) else None
        code = cause.code if isinstance(cause, OperationError) else "RETRIES_EXHAUSTED"
        message = f"gave up after {attempt} attempts: {type(cause or exc).__name__}"
        data = {"status": "failed", "error": _error(code, message)}
        record = self._record(call, "failed", "allow", data, attempt)

        async def complete() -> tuple[int, ...]:
            async with self.store.transaction() as tx:
                return tuple(await tx.complete(request.key, request.owner, record))

        return self._outcome(record, await self._with_store_retries(complete))

    def _note_retry(self, call: _Call, exc: BaseException) -> None:
        op = call.spec.key if call.spec else call.command.type
        ids = {"command_id": call.command.id, "correlation_id": call.command.correlation_id, "op": op}
        _log.warning("%s attempt failed transiently: %s; retrying", op, type(exc).__name__, extra=ids)
        if self.metrics is not None:
            self.metrics.retries.labels(op).inc()

    async def _release(self, request: ClaimRequest) -> None:
        """Let the lease of a claim whose attempt failed unrecorded run out now (a lease of
        zero), so the command's next try, here or elsewhere, need not wait for it."""
        with contextlib.suppress(Exception):
            await self.store.renew(request.key, request.owner, 0)

    @contextlib.asynccontextmanager
    async def _heartbeat(
        self, keys: Sequence[str], owner: str
    ) -> AsyncIterator[Callable[[], Awaitable[None]]]:
        """Keep renewing the claims ``owner`` holds (one command's, or a batch's) while their
        work runs: one statement for all the keys. A claim lost anyway fails the outcome's
        ``complete`` (``LeaseLost``) before commit. Yields a function that stops the renewals
        (a batch calls it before committing)."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.lease_seconds / 3)
                try:
                    held = await self.store.renew_many(keys, owner, self.lease_seconds)
                except Exception:
                    _log.warning("lease renewal of %d claims failed", len(keys), exc_info=True)
                    continue
                if held == 0:
                    return  # all taken over: nothing left to renew
                if held < len(keys):
                    _log.warning("lost %d of %d claims", len(keys) - held, len(keys))

        task = asyncio.create_task(beat()) if keys else None

        async def stop() -> None:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        try:
            yield stop
        finally:
            await stop()

    # -- recording ------------------------------------------------------------------------

    async def _settle(
        self,
        call: _Call,
        status: Status,
        decision: AuditDecision,
        error: dict[str, Any] | None = None,
        *,
        replay: dict[str, Any] | None = None,
    ) -> Outcome:
        """Record an outcome that owns no run: a rejection, a denial or a replay."""
        data = replay if replay is not None else {"status": status, "error": error}
        record = self._record(call, status, decision, data, 0, replayed=replay is not None)
        ids = await self._with_store_retries(lambda: self.store.record(record))
        return self._outcome(record, ids, replayed=replay is not None)

    def _record(
        self,
        call: _Call,
        status: Status,
        decision: AuditDecision,
        data: dict[str, Any],
        attempt: int,
        *,
        replayed: bool = False,
    ) -> OutcomeRecord:
        command, spec = call.command, call.spec
        version = spec.version if spec else command.opversion
        op = spec.key if spec else command.type
        stamp = now_iso()
        result = build_event(
            type=f"{op}.result", source=self.source, data=data, command=command, opversion=version, time=stamp
        )
        error = data.get("error")
        audit_data: dict[str, Any] = {
            "op": op,
            "version": version,
            "actor": call.actor.audit() if call.actor else None,
            "decision": decision,
            "status": status,
            "attempt": attempt,
            "duration_ms": round((time.monotonic() - call.started) * 1000, 3),
            "input": self._audited_input(call, status),
            "deprecated": bool(spec and spec.deprecated),
            "replayed": replayed,
            "error": error["code"] if error else None,
            "reason": _cut(error["message"], 200) if error and status in ("denied", "rejected") else None,
        }
        audit = build_event(
            type=AUDIT_TYPE,
            source=self.source,
            data=audit_data,
            command=command,
            opversion=version,
            time=stamp,
        )
        key = (call.partition or command.idempotency_key).encode()
        headers: tuple[tuple[str, bytes], ...] = (("content-type", CONTENT_TYPE.encode()),)
        if call.traceparent:  # the command's span: subscribers continue the same trace
            headers += (("traceparent", call.traceparent.encode()),)
            result["traceparent"] = audit["traceparent"] = call.traceparent
        return OutcomeRecord(
            command_id=command.id,
            op=op,
            version=version,
            status=status,
            result=data,
            audit=audit_data,
            publications=(
                Publication(self.results_topic, key, _json.dumps(result), headers),
                Publication(self.audit_topic, key, _json.dumps(audit), headers),
            ),
            events=(result, audit),
        )

    @staticmethod
    def _audited_input(call: _Call, status: Status) -> Any:
        """The input, secrets redacted; only its size and digest when the caller was denied, or
        was turned away unauthenticated: input is recorded only for callers it was run for
        or who proved who they are."""
        if status == "denied":
            return _withheld(call.command.data, "denied")
        if status == "rejected" and not call.authenticated:
            return _withheld(call.command.data, "unauthenticated")
        return _bounded(call.input)

    @staticmethod
    def _outcome(record: OutcomeRecord, ids: Any, *, replayed: bool = False) -> Outcome:
        result, audit = record.events
        return Outcome(
            status=record.status,  # type: ignore[arg-type]
            result=result,
            audit=audit,
            publications=record.publications,
            outbox_ids=tuple(ids),
            replayed=replayed,
        )

    # -- transient failures ---------------------------------------------------------------

    def _is_transient(self, exc: BaseException, spec: OperationSpec) -> bool:
        return isinstance(exc, (*self._transient, *spec.retry.retry_on))

    async def _with_store_retries(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Call the store, riding out a short outage; past it, give the command back."""
        for attempt in range(1, STORE_RETRY.max_attempts + 1):
            try:
                return await fn()
            except Exception as exc:
                if not isinstance(exc, self._transient):
                    raise
                if attempt == STORE_RETRY.max_attempts:
                    raise StoreUnavailable(f"store unavailable: {exc!r}") from exc
                await self._sleep(backoff(attempt, STORE_RETRY))
        raise AssertionError("unreachable")


def backoff(failures: int, retry: Retry) -> float:
    """Exponential backoff with jitter: uniform in [c/2, c], c = min(max, initial * 2^(n-1))."""
    ceiling = min(retry.max_backoff, retry.initial_backoff * 2 ** (failures - 1))
    return random.uniform(ceiling / 2, ceiling)


def _details(exc: OperationError) -> dict[str, Any]:
    return {"details": exc.details} if exc.details else {}


def _validate_output(output_model: type[Model], raw: Any) -> dict[str, Any]:
    """The handler's output on the wire, or ``_OutputInvalid`` (also for U+0000 anywhere in
    it, which no store can record: the command fails rather than its batch's commit)."""
    wire = _wire_output(output_model, raw)
    if nul := nul_paths(wire):
        raise _OutputInvalid(f"handler output holds U+0000 at {', '.join(nul)}")
    return wire


def _wire_output(output_model: type[Model], raw: Any) -> dict[str, Any]:
    try:
        if type(raw) is output_model:  # built through its validating constructor already
            return raw.to_wire()
        if isinstance(raw, BaseModel):
            value = output_model.model_validate(raw.model_dump(by_alias=True))
        else:
            value = output_model.model_validate(raw)
    except ValidationError as exc:
        fields = ", ".join(sorted({f["field"] for f in field_errors(exc)}))
        raise _OutputInvalid(f"handler output does not match {output_model.__name__}: {fields}") from None
    return value.to_wire()
