"""What a handler sees: ``ctx.db`` (its transaction), the actor, the keys, a logger, clients."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .auth import Actor
    from .spec import OperationSpec


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
    """The idempotency key scoped to its caller (``runner.store.run_key``): what the run is
    stored under, and what ``external_key`` derives from, so two callers that chose the same
    key never share an outside API's idempotency key either."""
    upcast_from: OperationSpec | None = None
    """Set when this handler runs a command of an older version through an upcast
    (``runner.versions.install_upcast``): the spec the command asked for, which its result
    and audit name. ``spec`` is then the handler's own (the newer) spec."""

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
