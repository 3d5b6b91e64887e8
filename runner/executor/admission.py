"""Steps 2-4: find the spec, validate the input, authenticate the caller, authorize the call.

Every command leaves admission as an ``Admitted`` command or a ``Verdict`` (rejected or
denied, with the reason). Nothing here writes: a verdict is recorded by the outcome step.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import ValidationError

from ..auth import Actor, Authenticator
from ..context import PolicyContext
from ..envelope import CommandEnvelope, nul_paths, without_nul
from ..errors import AuthError, RegistryError, StoreUnavailable, UnknownOperation
from ..model import Model, redact
from ..observability import start_span, traceparent_of
from ..policy import ALLOW, Decision, authorize
from ..registry import Installed, OperationRegistry, Upcasted
from ..spec import OperationSpec
from ..store import Store
from ..validation import field_errors
from .calls import Admitted, Call, Verdict
from .outcomes import error
from .retries import Retrier

_log = logging.getLogger("oprunner.executor")


def bearer(token: str | None) -> str | None:
    """The token without its ``Bearer `` prefix, if it has one."""
    if token is not None and token[:7].lower() == "bearer ":
        return token[7:].strip()
    return token


def _invalid(call: Call, message: str, fields: list[dict[str, str]]) -> Verdict:
    return Verdict(call, "rejected", "reject", error("INVALID_INPUT", message, fields=fields))


class Admission:
    def __init__(
        self,
        registry: OperationRegistry,
        authenticator: Authenticator | None,
        store: Store,
        retrier: Retrier,
    ) -> None:
        self.registry = registry
        self.authenticator = authenticator
        self.store = store
        self.retrier = retrier

    async def admit(
        self, command: CommandEnvelope, token: str | None, db: Any = None, *, verified: Actor | None = None
    ) -> Verdict | Admitted:
        """Admit ``command`` sent with ``token`` (or by ``verified``, an actor this process
        verified earlier). ``db`` is a handle that policy resolvers share (a batch's)."""
        call = Call(command=command, started=time.monotonic())
        call.span = start_span(command.type, command.id, command.correlation_id, command.traceparent)
        call.traceparent = traceparent_of(call.span) or command.traceparent
        actor, auth_failure = (verified, None) if verified is not None else self._authenticate(bearer(token))
        if actor is not None and actor.bound is not None and not actor.bound.admits(command):
            auth_failure = "the token authorizes another command (its id or data differ)"
        call.actor = actor
        call.authenticated = actor is not None and auth_failure is None
        try:
            installed = self.registry.get(command.type, command.opversion)
        except UnknownOperation as exc:
            return Verdict(call, "rejected", "reject", error("UNKNOWN_OPERATION", str(exc)))
        spec = call.spec = installed.spec
        if not isinstance(command.data, dict):
            call.input = without_nul(command.data)
            return _invalid(call, f"data must be a JSON object, got {type(command.data).__name__}", [])
        if nul := nul_paths(command.data):  # valid JSON that no store can hold
            call.input = redact(spec.io.input, without_nul(command.data))
            fields = [{"field": f, "message": "contains U+0000", "type": "nul_character"} for f in nul]
            message = "invalid input: " + ", ".join(sorted(set(nul))) + " (U+0000 cannot be stored)"
            return _invalid(call, message, fields)
        try:
            value = spec.io.input.model_validate(command.data)
        except ValidationError as exc:
            call.input = redact(spec.io.input, command.data)  # audited as sent, secrets hidden
            fields = field_errors(exc)
            return _invalid(call, "invalid input: " + ", ".join(sorted({f["field"] for f in fields})), fields)
        call.partition = spec.partition_value(value)
        call.wire = value.to_wire()
        call.input = redact(spec.io.input, call.wire)
        if auth_failure is None and actor is None and spec.policy.auth != "public":
            auth_failure = "a bearer token is required"
        if auth_failure is not None:
            return Verdict(call, "denied", "deny", error("UNAUTHENTICATED", auth_failure))
        decision = await self._authorize(spec, actor, value, db)
        if not decision.allowed:
            return Verdict(call, "denied", "deny", error("FORBIDDEN", decision.reason))
        if installed.upcast_to is None:
            return Admitted(installed, call, value)
        upcast, decision = await self._upcast(installed, actor, value, db)
        if not decision.allowed:
            return Verdict(call, "denied", "deny", error("FORBIDDEN", decision.reason))
        return Admitted(installed, call, value, upcast)

    async def _upcast(
        self, installed: Installed, actor: Actor | None, value: Model, db: Any
    ) -> tuple[Upcasted, Decision]:
        """Carry an older version's input up its upcast chain (``runner.versions``), and
        authorize the command by each version's policy on that version's input, exactly as a
        command sent to it is authorized: the newest one's handler runs it, so its rules must
        hold (say it added an owner rule). The first refusal decides.

        What stops the chain (an upcast that raised, its target not installed) is kept in the
        ``Upcasted``: the handler step raises it, and the command fails as it would have, with
        no handler beyond that step run."""
        inputs: list[Any] = []
        asked = installed.spec.version
        while (target_spec := installed.upcast_to) is not None:
            try:
                assert installed.upcast is not None  # set together (``registry.install``)
                target = self.registry.serving(target_spec)
                if target is None:
                    raise RegistryError(f"{target_spec.key} {target_spec.version} is not installed as such")
                value = await installed.upcast(value)
            except Exception as exc:  # a failed upcast is a handler failure, at run time
                return Upcasted(tuple(inputs), exc), ALLOW
            decision = await self._authorize(target_spec, actor, value, db)
            if not decision.allowed:
                reason = f"{decision.reason} ({target_spec.version}'s policy, which runs {asked} commands)"
                return Upcasted(()), Decision(False, reason)
            inputs.append(value)
            installed = target
        return Upcasted(tuple(inputs)), ALLOW

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
        self, spec: OperationSpec, actor: Actor | None, value: Model, shared: Any
    ) -> Decision:
        async def check() -> Decision:
            if shared is not None or not any(rule.needs_resource() for rule in spec.policy.rules):
                return await authorize(spec, actor, self.registry, PolicyContext(actor, spec, value, shared))
            async with self.store.reader() as db:
                return await authorize(spec, actor, self.registry, PolicyContext(actor, spec, value, db))

        try:
            decision: Decision = await self.retrier.store(check)
            return decision
        except StoreUnavailable:
            raise
        except Exception as exc:  # a resolver bug must not let anyone in: fail closed
            _log.exception("policy check of %s failed", spec.key)
            return Decision(False, f"policy check failed ({type(exc).__name__})")
