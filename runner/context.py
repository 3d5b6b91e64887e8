"""What a handler sees: ``ctx.db`` (its transaction), the actor, the keys, a logger, clients."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .auth import Actor
    from .spec import OperationSpec

Sender = Callable[["OperationSpec", Any, "str | None"], str]
"""What ``ctx.send`` calls: records a follow-up for the run's outbox and returns its id."""


@dataclass(slots=True)
class OperationContext:
    """Handed to every handler call.

    ``db`` is the open transaction the outcome will be committed in, so a handler's writes and
    the recorded result commit (or roll back) together. Clients the app configured (``stripe``)
    are reachable as attributes: ``ctx.stripe``.
    """

    db: Any
    actor: Actor | None
    idempotency_key: str
    spec: OperationSpec
    command_id: str
    correlation_id: str
    attempt: int
    logger: logging.LoggerAdapter[logging.Logger]
    clients: Mapping[str, Any] = field(default_factory=dict)
    run_key: str = ""
    """The idempotency key scoped to its caller, without the caller's kind (the executor's
    ``Call.effect_scope``): what ``external_key`` derives from, so two callers that chose the
    same key never share an outside API's idempotency key either, and a run's keys stay the
    same across migration 0009."""
    upcast_from: OperationSpec | None = None
    """Set when this handler runs a command of an older version through an upcast
    (``runner.versions.install_upcast``): the spec the command asked for, which its result
    and audit name. ``spec`` is then the handler's own (the newer) spec."""

    sender: Sender | None = None
    """Set by the executor when it can sign follow-up commands (see ``send``)."""

    async def send(self, spec: OperationSpec, input: Any, *, key: str | None = None) -> str:
        """Send the command ``spec(input)`` once this handler's effects commit; its id.

        Written to the outbox in this handler's transaction, so it is published only if this
        run succeeds, and once per run: a failure, a rollback or a retried attempt sends
        nothing. ``key`` tells a run's follow-ups apart (default: the spec's key and the order
        of the call), and derives the follow-up's idempotency key from this run's, so it is
        claimed once however often it is published. It runs as this operation's service
        identity, in the caller's tenant, with a token good for that one command only; it
        carries this command's ``correlationid``, and its id as ``causationid``. It is checked
        here, so the handler fails rather than commit a follow-up that could never run: its
        input, that its spec is installed and its policy can admit a service, its size, the
        depth of the chain; a failed check raises ``ValueError``. ``async`` so that a check
        may read the database one day without every handler changing."""
        if self.sender is None:
            raise RuntimeError(
                "this runner cannot sign follow-up commands: it needs OPRUNNER_JWT_SECRET, or "
                "OPRUNNER_COMMAND_TOKEN_SECRET with a public-key JWT setup"
            )
        return self.sender(spec, input, key)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.clients[name]
        except KeyError:
            raise AttributeError(f"no client {name!r} configured for this app") from None

    def external_key(self, purpose: str) -> str:
        """An idempotency key for an outside API, derived from the run's (stable on retry):
        readable where it fits Stripe's 255 characters, a digest of the run key where not."""
        scope = hashlib.sha256((self.run_key or self.idempotency_key).encode()).hexdigest()
        readable = f"oprunner:{self.spec.key}:{purpose}:{scope[:16]}:{self.idempotency_key}"
        return readable if len(readable) <= 255 else f"oprunner:{self.spec.key}:{purpose}:{scope}"


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """What a resource resolver or a callable rule gets: the actor, the input, a database handle."""

    actor: Actor | None
    spec: OperationSpec
    input: Any
    db: Any
