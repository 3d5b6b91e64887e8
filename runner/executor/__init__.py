"""The executor: steps 2-7 of DESIGN.md, one module per step.

    admission   find spec -> validate -> authenticate -> authorize   -> Admitted | Verdict
    claims      claim the idempotency key, keep its lease            -> Held | Verdict
    invocation  run the handler in the command's transaction          -> result data
    outcomes    the result and audit events (and dead letters), as outbox rows
    runs        one command at a time, with its retries
    batching    many commands in one transaction, falling back to ``runs``

``calls`` holds what the steps pass each other; ``retries`` what counts as transient. Every
path ends in an ``Outcome`` whose result and audit events are in the outbox; the only
exceptions that escape are ``StoreUnavailable`` (nothing could be recorded: do not ack the
message) and cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from .. import _json
from ..auth import Actor, Authenticator, CommandSigner
from ..envelope import CommandEnvelope, parse_command
from ..errors import StoreUnavailable
from ..followups import FollowUpWriter
from ..observability import Metrics
from ..registry import OperationRegistry
from ..store import OutcomeRecord, Store
from ..validation import field_errors
from .admission import Admission
from .batching import Batches
from .calls import DEFAULT_MODE, ExecutionMode, Outcome, Status, Verdict
from .claims import LEASE_SECONDS, Claims, default_worker_id, fingerprint
from .invocation import Invoker
from .outcomes import MAX_DLQ_VALUE, MAX_MESSAGE, Recorder, Undeliverable
from .retries import STORE_RETRY, Retrier, backoff
from .runs import Runs

__all__ = [
    "LEASE_SECONDS",
    "MAX_MESSAGE",
    "STORE_RETRY",
    "ExecutionMode",
    "Executor",
    "Outcome",
    "Status",
    "Undeliverable",
    "backoff",
    "default_worker_id",
    "field_errors",
    "fingerprint",
]


class Executor:
    """Runs commands against a registry and a store. Safe to share between tasks.

    Its steps are built once, from the arguments: build another executor to change its
    store, registry, topics or clients (``authenticator`` and ``lease_seconds`` may be set)."""

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
        commands_topic: str = "ops.commands",
        command_signer: CommandSigner | None = None,
        max_message_bytes: int = 1024 * 1024,
    ) -> None:
        """``command_signer`` signs the handlers' follow-up commands (``ctx.send``), published
        to ``commands_topic``, each at most ``max_message_bytes``; without one, ``ctx.send``
        raises."""
        self.registry = registry
        self.store = store
        self.results_topic = results_topic
        self.audit_topic = audit_topic
        self.commands_topic = commands_topic
        self.source = source
        self.clients = dict(clients or {})
        self.worker_id = worker_id or default_worker_id()
        self.metrics = metrics
        retrier = Retrier((*store.transient_errors, *transient_errors), sleep)
        self._admission = Admission(registry, authenticator, store, retrier)
        self._recorder = Recorder(
            store,
            retrier,
            source=source,
            results_topic=results_topic,
            audit_topic=audit_topic,
            metrics=metrics,
            follow_ups=FollowUpWriter(command_signer, commands_topic) if command_signer else None,
        )
        self._claims = claims = Claims(store, self.worker_id, lease_seconds, registry)
        invoker = Invoker(
            self.clients,
            metrics,
            retrier,
            source=source,
            registry=registry,
            signer=command_signer,
            max_message_bytes=max_message_bytes,
        )
        self._runs = Runs(store, claims, invoker, self._recorder, retrier, metrics)
        self._batches = Batches(
            store, self._admission, claims, invoker, self._recorder, self._runs, retrier, metrics
        )

    @property
    def authenticator(self) -> Authenticator | None:
        """Verifies bearer tokens (None: only public operations run)."""
        return self._admission.authenticator

    @authenticator.setter
    def authenticator(self, value: Authenticator | None) -> None:
        self._admission.authenticator = value

    @property
    def lease_seconds(self) -> float:
        return self._claims.lease_seconds

    @lease_seconds.setter
    def lease_seconds(self, value: float) -> None:
        self._claims.lease_seconds = value

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
        admitted = await self._admission.admit(command, token, verified=actor)
        if isinstance(admitted, Verdict):
            outcome = await self._recorder.settle(admitted)
        else:
            outcome = await self._runs.run(admitted)
        self._recorder.finish(admitted.call, outcome)
        return outcome

    async def execute_many(
        self, items: Sequence[tuple[CommandEnvelope, str | None]], mode: ExecutionMode = DEFAULT_MODE
    ) -> list[Outcome]:
        """Execute a batch of commands together: all claims at once, the handlers one after
        another in one transaction, all outcomes at once, one commit.

        Give it commands that may run in any order relative to each other (distinct Kafka keys).
        If any handler fails or anything goes wrong, the batch's transaction is rolled back and
        each of its commands runs on the per-command path instead (same claims, same external
        idempotency keys), so the outcome is what ``execute`` would have given. ``mode`` says
        how claims are taken and outcomes recorded (``ExecutionMode``: Kafka's consumer holds
        the offset back until it published, so its outcomes need no outbox).
        """
        return await self._batches.execute(items, mode)

    async def dead_letter(
        self,
        message: Undeliverable,
        reason: str,
        *,
        topic: str,
        code: str = "MALFORMED",
        sender: Actor | None = None,
        last_error: str | None = None,
        attempts: int = 0,
        max_value: int = MAX_DLQ_VALUE,
    ) -> tuple[OutcomeRecord, list[int]]:
        """Record ``message`` for the dead-letter ``topic``, and its audit event, through the
        outbox (``StoreUnavailable`` if the store cannot take it now: do not ack)."""
        record = self._recorder.dead_letter(
            message,
            reason,
            topic=topic,
            code=code,
            sender=sender,
            last_error=last_error,
            attempts=attempts,
            max_value=max_value,
        )
        try:
            ids = await self.store.record(record)
        except Exception as exc:
            if self._recorder.retrier.is_transient(exc):  # the store's, or a lost connection
                raise StoreUnavailable(str(exc)) from exc
            raise
        return record, ids
