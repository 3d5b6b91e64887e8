"""Step 5: claim the idempotency key, and keep the claim while the handler runs.

A claim is a lease (DESIGN.md, "Exactly once"): it names one execution (``owner``), not the
process, so two deliveries of one key in the same process (a rebalance, HTTP and Kafka at
once) never both hold it; a crashed worker's claims are taken over once their leases end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from .. import _json
from ..auth import Actor
from ..store import Claim, ClaimRequest, ClaimStatus, Store
from .calls import Admitted, Call, Verdict
from .outcomes import error

LEASE_SECONDS = 10.0
"""How long a claim lasts without renewal. While a handler runs, its lease is renewed every
third of this, so a crashed worker's commands are taken over within about this long."""

_log = logging.getLogger("oprunner.executor")


def fingerprint(op: str, actor: Actor | None, wire: dict[str, Any]) -> str:
    """What must match for a repeated idempotency key to be a replay rather than a conflict.
    ``wire`` is the validated input as it goes on the wire (``Model.to_wire()``)."""
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


class Claims:
    def __init__(self, store: Store, worker_id: str, lease_seconds: float) -> None:
        self.store = store
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds

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
