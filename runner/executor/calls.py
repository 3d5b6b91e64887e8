"""What the steps hand each other: one command's ``Call``, and what each step decides of it.

admission turns a ``Call`` into a ``Verdict`` (no handler runs: rejected, denied) or an
``Admitted`` command; claiming turns an ``Admitted`` one into a ``Held`` one (this execution
holds its idempotency key), a ``Verdict`` (a replay or a conflict), or nothing yet (busy);
invocation and recording turn either into an ``Outcome``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .._records import frozen
from ..auth import Actor
from ..envelope import CommandEnvelope
from ..followups import FollowUp
from ..model import Model
from ..registry import Installed, Upcasted
from ..spec import OperationSpec
from ..store import ClaimRequest, Publication, run_key

Status = Literal["succeeded", "failed", "rejected", "denied"]
AuditDecision = Literal["allow", "deny", "reject"]


@dataclass(slots=True)
class Call:
    """One command on its way through: what its audit event needs, gathered as steps pass."""

    command: CommandEnvelope
    started: float
    spec: OperationSpec | None = None
    actor: Actor | None = None
    input: Any = None  # as the audit may show it: secrets redacted
    partition: str | None = None
    span: Any = None
    traceparent: str | None = None
    wire: dict[str, Any] = field(default_factory=dict)  # the validated input, dumped once
    authenticated: bool = False  # a verified actor (or one this process verified earlier)
    follow_ups: list[FollowUp] = field(default_factory=list)  # what its latest attempt sent

    @property
    def op(self) -> str:
        return self.spec.key if self.spec else self.command.type

    @property
    def run_key(self) -> str:
        """Where this caller's idempotency key is claimed (``runner.store.run_key``)."""
        actor = self.actor
        if actor is None:
            return run_key(None, None, self.command.idempotency_key, kind=None)
        return run_key(actor.tenant_id, actor.user_id, self.command.idempotency_key, kind=actor.kind)

    @property
    def effect_scope(self) -> str:
        """What the run's outside keys (``ctx.external_key``) and its follow-ups' ids derive
        from: the run key without the caller's kind, as it was before migration 0009 added
        it, so a run left half done across that upgrade calls Stripe again under the same key
        and sends the same follow-ups. A user and a service of one subject that chose one key
        then share those: a replay at Stripe, never a second effect."""
        actor = self.actor
        if actor is None:
            return run_key(None, None, self.command.idempotency_key, kind=None)
        return run_key(actor.tenant_id, actor.user_id, self.command.idempotency_key, kind=None)


@frozen
class Verdict:
    """An outcome decided without running a handler: rejected, denied, or a replay."""

    call: Call
    status: Status
    decision: AuditDecision
    error: dict[str, Any] | None
    replay: dict[str, Any] | None = None  # the stored result data, for a replay

    @property
    def data(self) -> dict[str, Any]:
        return self.replay if self.replay is not None else {"status": self.status, "error": self.error}


@frozen
class Admitted:
    """A command that passed admission: valid, authenticated, authorized."""

    installed: Installed
    call: Call
    value: Model
    upcast: Upcasted | None = None
    """For a spec served through an upcast: its input up the chain, as admission authorized it."""

    @property
    def spec(self) -> OperationSpec:
        return self.installed.spec

    @property
    def handler_input(self) -> Any:
        """What the handler gets: the input, or for an upcast spec the ``Upcasted`` chain."""
        return self.value if self.upcast is None else self.upcast


@frozen
class Held:
    """An admitted command whose claim this execution holds, on its ``attempt``-th attempt."""

    admitted: Admitted
    request: ClaimRequest
    attempt: int


@dataclass(frozen=True, slots=True)
class ExecutionMode:
    """How a batch is claimed and recorded; the default is what every surface but Kafka needs.

    ``offset_outbox``: the caller holds the command's offset back until it published what
    the outcome returns (DESIGN.md, step 8), so a completed run's result and audit events go
    in no outbox: they are stored with the run and published by the caller, and the same
    command delivered again finds them and publishes them again, original ids and all.

    ``committed_claims``: claim each key in a transaction of its own, with a lease renewed
    while the batch runs, before the batch's transaction; otherwise the claims are taken in
    the batch's transaction (one statement, no lease, nothing to renew). A claim that lives
    only in an open transaction forgets its attempt if the process dies, so commands that
    may be redeliveries (fetched right after a partition assignment) take committed claims,
    whose attempts count; ``crash_budget`` then leaves unrun, to be parked, a command whose
    claim shows more than that many attempts (0: no budget)."""

    offset_outbox: bool = False
    committed_claims: bool = True
    crash_budget: int = 0


DEFAULT_MODE = ExecutionMode()


@frozen
class Outcome:
    """What became of one command. ``result`` and ``audit`` are the events in the outbox."""

    status: Status
    result: dict[str, Any]
    audit: dict[str, Any]
    publications: tuple[Publication, ...]
    outbox_ids: tuple[int, ...]
    replayed: bool = False
    direct: bool = False
    """Its result and audit events are in no outbox: the caller publishes ``publications``
    and must not let the command go (commit its offset) before the broker acknowledged them;
    a redelivery publishes the same events again (``ExecutionMode.offset_outbox``)."""
    exhausted: int = 0
    """Not run: this many attempts of it claimed and never finished (each took its process
    down, as far as anyone can tell), past the crash budget. Nothing is recorded; the caller
    parks the command (``ExecutionMode.crash_budget``)."""

    @property
    def error_code(self) -> str | None:
        error = self.result["data"].get("error")
        return error["code"] if error else None

    @property
    def output(self) -> dict[str, Any] | None:
        out: dict[str, Any] | None = self.result["data"].get("output")
        return out
