"""Step 5: claim the idempotency key, and keep the claim while the handler runs.

A claim is a lease (DESIGN.md, "Exactly once"): it names one execution (``owner``), not the
process, so two deliveries of one key in the same process (a rebalance, HTTP and Kafka at
once) never both hold it; a crashed worker's claims are taken over once their leases end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from pydantic import ValidationError

from .. import _json
from ..auth import Actor
from ..errors import UnknownOperation
from ..model import Model, redact
from ..registry import OperationRegistry
from ..spec import OperationSpec
from ..store import Claim, ClaimRequest, ClaimStatus, Store
from .calls import Admitted, Call, Verdict
from .outcomes import error

LEASE_SECONDS = 10.0
"""How long a claim lasts without renewal. While a handler runs, its lease is renewed every
third of this, so a crashed worker's commands are taken over within about this long."""

_log = logging.getLogger("oprunner.executor")


def fingerprint(op: str, actor: Actor | None, wire: dict[str, Any]) -> str:
    """What must match for a repeated idempotency key to be a replay rather than a conflict.
    ``wire`` is the validated input as it goes on the wire (``Model.to_wire()``), as the version
    the run is claimed with (``ClaimRequest.version``) validates it: two spellings of one input
    match. Which version that is may differ between deliveries of one command sent with no
    ``opversion`` (the default moved meanwhile): ``Claims.restate`` sees to those."""
    who = None if actor is None else [actor.kind, actor.user_id, actor.tenant_id]
    body = _json.dumps({"op": op, "actor": who, "input": wire})
    return hashlib.sha256(body).hexdigest()


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def settled(call: Call, claim: Claim) -> Verdict | None:
    """What a claim that was not acquired decides: a replay of the stored result, or a
    conflict; None when the claim was acquired, or is busy (wait and claim again)."""
    if claim.status is ClaimStatus.COMPLETED:
        assert claim.result is not None
        return Verdict(call, claim.result["status"], "allow", None, claim.result)
    if claim.status is ClaimStatus.CONFLICT:
        message = "this idempotency key was used with a different input"
        return Verdict(call, "rejected", "reject", error("IDEMPOTENCY_CONFLICT", message))
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Restated:
    """A claim request fingerprinted as the version its stored run was claimed with."""

    request: ClaimRequest
    spec: OperationSpec  # that version's spec
    value: Model  # the input as that version validates it

    def relabel(self, call: Call) -> None:
        """Make ``call`` the stored run's version's, for the replay of its result: the result
        and audit say the version whose output they carry (and its input and partition)."""
        call.spec = self.spec
        call.wire = self.value.to_wire()
        call.input = redact(self.spec.io.input, call.wire)
        call.partition = self.spec.partition_value(self.value)


class Claims:
    def __init__(
        self,
        store: Store,
        worker_id: str,
        lease_seconds: float,
        registry: OperationRegistry | None = None,
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.registry = registry

    def owner(self) -> str:
        """A new execution's name: this worker, and which of its executions."""
        return f"{self.worker_id}/{uuid.uuid4().hex[:12]}"

    def request(self, admitted: Admitted, owner: str) -> ClaimRequest:
        spec, call = admitted.spec, admitted.call
        return ClaimRequest(
            key=call.run_key,
            idempotency_key=call.command.idempotency_key,
            op=spec.key,
            version=spec.version,
            input_hash=fingerprint(spec.key, call.actor, call.wire),
            command_id=call.command.id,
            owner=owner,
            lease_seconds=self.lease_seconds,
            actor_id=call.actor.user_id if call.actor else None,
            tenant_id=call.actor.tenant_id if call.actor else None,
        )

    def may_restate(self, admitted: Admitted, claim: Claim) -> bool:
        """Whether a conflict may be only the default version having moved: the command names
        no version and its stored run was claimed with another than the one it resolved to."""
        return (
            claim.status is ClaimStatus.CONFLICT
            and admitted.call.command.opversion is None
            and claim.version is not None
            and claim.version != admitted.spec.version
            and self.registry is not None
        )

    def restate(self, admitted: Admitted, request: ClaimRequest, claim: Claim) -> Restated | None:
        """For a conflict that ``may_restate``: the request fingerprinted as the stored run's
        version validates the command's data, or None when that version is gone, refuses the
        data, or gives the same fingerprint (then the conflict is real).

        This is the redelivery across a deploy: a command with no ``opversion`` completed (or
        was claimed) under ``1.0.0``, and is delivered again once ``2.0.0``, whose input differs
        (a new defaulted field), is the default. Its data is the same, so its fingerprint as
        ``1.0.0`` is too: a replay, not a conflict. Only the conflict path pays for this, and
        fingerprints stay what they were (nothing stored changes meaning, so a fleet halfway
        through deploying this agrees on every run). A command that pins its version is
        compared as that version only."""
        if not self.may_restate(admitted, claim) or self.registry is None or claim.version is None:
            return None
        call = admitted.call
        try:
            stored = self.registry.get(request.op, claim.version).spec
            value = stored.io.input.model_validate(call.command.data)
        except (UnknownOperation, ValidationError):
            return None
        input_hash = fingerprint(stored.key, call.actor, value.to_wire())
        if input_hash == request.input_hash:
            return None
        restated = dataclasses.replace(request, version=stored.version, input_hash=input_hash)
        return Restated(restated, stored, value)

    async def release(self, request: ClaimRequest) -> None:
        """Let the lease of a claim whose attempt failed unrecorded run out now (a lease of
        zero), so the command's next try, here or elsewhere, need not wait for it."""
        with contextlib.suppress(Exception):
            await self.store.renew(request.key, request.owner, 0)

    @contextlib.asynccontextmanager
    async def heartbeat(
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
