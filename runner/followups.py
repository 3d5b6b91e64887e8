"""Follow-up commands: ``await ctx.send(Spec, input, key=...)`` from a handler.

A capture asks for a receipt, a saga takes its next step. What a handler sends is a command
like any other, written to the outbox in the handler's own transaction: it is published only
if the handler's effects commit (a failure, a rollback or a retried attempt sends nothing),
and exactly once per parent run, because the parent's outcome is recorded once.

Its ids are derived, not drawn: from the parent's run key (scoped to the parent's caller),
the parent's command id and ``key``, through an HMAC under the command-token key, so the
follow-up is claimed once however often the outbox relay publishes it, and nobody who knows
the parent's key can claim the follow-up's first. ``correlationid`` is the parent's,
``causationid`` the parent's id, ``traceparent`` the parent's trace.

It is authorized as the handler's service identity (``sub`` = ``op:<parent operation key>``,
kind ``service``, the parent's tenant) by a one-command token (``runner.auth.CommandSigner``)
bound to that command's id, operation, data, cause and correlation, and counting its depth:
lifting it from the topic gains nothing, and a chain of sends ends at ``MAX_DEPTH``. A parent
without a tenant (a user without one, an anonymous caller) gives its follow-up none either:
a ``service`` condition then holds only on resources without a tenant (``runner.policy.scoped``),
never on every tenant's, since the binding's ``cause`` tells a follow-up from the runner's own
webhook-made commands.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .envelope import CONTENT_TYPE, CommandEnvelope, now_iso
from .store import Publication

if TYPE_CHECKING:
    from .auth import Actor, CommandSigner
    from .spec import OperationSpec, Policy

_IDS = uuid.UUID("6f1d2a4e-8c3b-4d5e-9a7f-0b1c2d3e4f50")  # the namespace follow-up ids are made in
MAX_KEY = 128
MAX_FOLLOW_UPS = 64
"""Per handler run: a saga's next step is a handful; more is a loop gone wrong."""
MAX_DEPTH = 16
"""Sends in a chain (A sends B sends C ...): past it a send raises, so A -> A cannot loop."""
HEADROOM = 4096
"""Bytes left in a message for the token and headers besides the envelope itself."""


@dataclass(frozen=True, slots=True)
class FollowUp:
    """One command a handler sent: what its outbox row is built from."""

    command: CommandEnvelope
    partition: str | None
    depth: int  # 1 for a command's own follow-up, its parent's and one after that


def follow_up(
    spec: OperationSpec,
    wire: dict[str, Any],
    partition: str | None,
    *,
    key: str,
    scope: str,
    parent: CommandEnvelope,
    traceparent: str | None,
    source: str,
    depth: int,
) -> FollowUp:
    """The follow-up command ``key`` of the parent run whose secret digest is ``scope``."""
    command = CommandEnvelope(
        id=str(uuid.uuid5(_IDS, f"{scope}\n{key}")),
        source=source,
        type=spec.key,
        data=wire,
        opversion=spec.version,
        idempotencykey=f"followup:{scope}:{key}",
        correlationid=parent.correlation_id,
        causationid=parent.id,
        time=now_iso(),
        traceparent=traceparent,
    )
    return FollowUp(command, partition, depth)


def admits_a_service(policy: Policy) -> str | None:
    """Why a follow-up's actor (kind service, no roles, owns nothing) can never pass
    ``policy``; None when it may. Checked at ``ctx.send``, before the parent commits, so a
    follow-up that would only ever be denied fails its parent instead."""
    if policy.auth == "admin":
        return "its policy needs an admin"
    for rule in policy.rules:
        if not any(callable(c) or c in ("service", "tenant") for c in rule.conditions):
            return f"no condition of its rule on {rule.resource!r} can hold for a service"
    return None


class FollowUpWriter:
    """Makes the outbox rows of a run's follow-ups: the command, and its one-command token."""

    def __init__(self, signer: CommandSigner, commands_topic: str) -> None:
        self.signer = signer
        self.commands_topic = commands_topic

    def publications(
        self, parent_op: str, actor: Actor | None, sent: list[FollowUp]
    ) -> tuple[Publication, ...]:
        """The outbox rows of ``sent``, each with a token acting as ``op:<parent_op>`` in the
        parent actor's tenant; made when the parent's outcome is recorded."""
        out = []
        tenant = actor.tenant_id if actor is not None else None
        for item in sent:
            command = item.command
            token = self.signer.token_for(command, subject=f"op:{parent_op}", tenant=tenant, depth=item.depth)
            headers: tuple[tuple[str, bytes], ...] = (
                ("authorization", f"Bearer {token}".encode()),
                ("content-type", CONTENT_TYPE.encode()),
            )
            if command.traceparent:
                headers += (("traceparent", command.traceparent.encode()),)
            key = (item.partition or command.idempotency_key).encode()
            out.append(Publication(self.commands_topic, key, command.encode(), headers))
        return tuple(out)
