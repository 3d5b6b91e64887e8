"""Follow-up commands: ``await ctx.send(Spec, input, key=...)`` from a handler.

A capture asks for a receipt, a saga takes its next step. What a handler sends is a command
like any other, written to the outbox in the handler's own transaction: it is published only
if the handler's effects commit (a failure, a rollback or a retried attempt sends nothing),
and exactly once per parent run, because the parent's outcome is recorded once.

Its ids are derived, not drawn: the idempotency key from the parent's run key (which is
scoped to the parent's caller) and ``key``, so the follow-up is claimed once however often
the outbox relay publishes it; its id likewise. ``correlationid`` is the parent's,
``causationid`` the parent's id, ``traceparent`` the parent's trace.

It is authorized as the handler's service identity (``sub`` = ``op:<parent key>``, kind
``service``, the parent's tenant) by a one-command token (``runner.auth.CommandSigner``) bound
to that command's id, operation and data: lifting it from the topic gains nothing.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .envelope import CONTENT_TYPE, CommandEnvelope, now_iso
from .store import Publication

if TYPE_CHECKING:
    from .auth import Actor, CommandSigner
    from .spec import OperationSpec

_IDS = uuid.UUID("6f1d2a4e-8c3b-4d5e-9a7f-0b1c2d3e4f50")  # the namespace follow-up ids are made in
MAX_KEY = 128
MAX_FOLLOW_UPS = 64
"""Per handler run: a saga's next step is a handful; more is a loop gone wrong."""


@dataclass(frozen=True, slots=True)
class FollowUp:
    """One command a handler sent: what its outbox row is built from."""

    command: CommandEnvelope
    partition: str | None


def follow_up(
    spec: OperationSpec,
    wire: dict[str, Any],
    partition: str | None,
    *,
    key: str,
    parent_run_key: str,
    parent: CommandEnvelope,
    traceparent: str | None,
    source: str,
) -> FollowUp:
    scope = hashlib.sha256(parent_run_key.encode()).hexdigest()[:32]
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
    return FollowUp(command, partition)


class FollowUpWriter:
    """Makes the outbox rows of a run's follow-ups: the command, and its one-command token."""

    def __init__(self, signer: CommandSigner, commands_topic: str) -> None:
        self.signer = signer
        self.commands_topic = commands_topic

    def publications(
        self, parent_op: str, actor: Actor | None, sent: list[FollowUp]
    ) -> tuple[Publication, ...]:
        out = []
        tenant = actor.tenant_id if actor is not None else None
        for item in sent:
            command = item.command
            token = self.signer.token_for(command, subject=f"op:{parent_op}", tenant=tenant)
            headers: tuple[tuple[str, bytes], ...] = (
                ("authorization", f"Bearer {token}".encode()),
                ("content-type", CONTENT_TYPE.encode()),
            )
            if command.traceparent:
                headers += (("traceparent", command.traceparent.encode()),)
            key = (item.partition or command.idempotency_key).encode()
            out.append(Publication(self.commands_topic, key, command.encode(), headers))
        return tuple(out)
