"""One command at a time: claim, run, record, with its retries.

A command runs here unless it came in a batch and its batch could take it (see
``batching``); a batch's commands also end up here when their batch could not finish them.
"""

from __future__ import annotations

import functools
import logging

from ..errors import LeaseLost, OperationError, RetryableError
from ..observability import Metrics
from ..store import ClaimRequest, ClaimStatus, Store
from .calls import Admitted, Call, Held, Outcome, Verdict
from .claims import Claims, Restated, settled
from .invocation import Invoker, Rollback
from .outcomes import Recorder, error, exhausted, outcome
from .retries import Retrier

_log = logging.getLogger("oprunner.executor")


class Runs:
    def __init__(
        self,
        store: Store,
        claims: Claims,
        invoker: Invoker,
        recorder: Recorder,
        retrier: Retrier,
        metrics: Metrics | None,
    ) -> None:
        self.store = store
        self.claims = claims
        self.invoker = invoker
        self.recorder = recorder
        self.retrier = retrier
        self.metrics = metrics

    async def run(self, admitted: Admitted, *, crash_budget: int = 0) -> Outcome:
        if admitted.spec.kind == "query":
            return await self.query(admitted)
        return await self.once(admitted, crash_budget=crash_budget)

    async def once(
        self,
        admitted: Admitted,
        request: ClaimRequest | None = None,
        *,
        failures: int = 0,
        crash_budget: int = 0,
    ) -> Outcome:
        """Claim, run, record; ``request`` carries a claim this execution may already hold,
        ``failures`` the transient failures its attempts have had so far. A claim past
        ``crash_budget`` attempts (when set) is not run: ``exhausted``, for the caller to park."""
        request = request or self.claims.request(admitted, self.claims.owner())
        spec, call = admitted.spec, admitted.call
        restated: Restated | None = None
        while True:
            claim = await self.retrier.store(functools.partial(self.store.claim, request))
            if restated is None and claim.status is ClaimStatus.CONFLICT:
                restated = self.claims.restate(admitted, request, claim)
                if restated is not None:  # the default moved since its run was claimed
                    request = restated.request
                    continue
            if restated is not None and claim.status is ClaimStatus.COMPLETED:
                restated.relabel(call)  # its stored result is replayed as the version that ran
            if (verdict := settled(call, claim)) is not None:
                return await self.recorder.settle(verdict)
            if claim.status is ClaimStatus.BUSY:
                await self.store.wait(request.key, max(claim.retry_after, 0.01))
                continue
            if crash_budget and claim.attempts > crash_budget:
                return exhausted(claim.attempts)
            try:
                async with self.claims.heartbeat([request.key], request.owner):
                    return await self._attempt(Held(admitted, request, claim.attempts))
            except LeaseLost:
                continue  # someone else finished or holds it now: claim again to find out
            except Exception as exc:
                if not self.retrier.is_transient(exc, spec):
                    await self.claims.release(request)  # the next try may claim at once
                    raise
                failures += 1
                if failures >= spec.retry.max_attempts:
                    return await self.give_up(call, request, claim.attempts, exc)
                self.note_retry(call, exc)
                await self.retrier.pause(failures, spec.retry)

    async def again(self, held: Held, exc: BaseException | None) -> Outcome:
        """A command whose attempt in a batch did not finish: on alone, as ``once`` would.

        After a transient failure (its first: counted like ``once`` counts) that is its next
        attempt, after backoff, or its end if one was all it had; after its batch form
        failed (``exc`` None), the plain handler at once."""
        admitted, request = held.admitted, held.request
        if exc is None:
            return await self.once(admitted, request)
        retry = admitted.spec.retry
        if retry.max_attempts <= 1:  # this was its one failure allowed
            return await self.give_up(admitted.call, request, held.attempt, exc)
        self.note_retry(admitted.call, exc)
        await self.retrier.pause(1, retry)
        return await self.once(admitted, request, failures=1)

    async def _attempt(self, held: Held) -> Outcome:
        key, owner = held.request.key, held.request.owner
        call = held.admitted.call
        try:
            async with self.store.transaction() as tx:
                data = await self.invoker.invoke(held.admitted, tx.db, held.attempt)
                if data["status"] != "succeeded":
                    raise Rollback(data)  # the handler's writes must not commit with a failure
                record = self.recorder.record(
                    call, "succeeded", "allow", data, held.attempt, sent=call.follow_ups
                )
                ids = await tx.complete(key, owner, record)
        except Rollback as rollback:
            record = self.recorder.record(call, "failed", "allow", rollback.data, held.attempt)
            async with self.store.transaction() as tx:
                ids = await tx.complete(key, owner, record)
        return outcome(record, ids)

    async def query(self, admitted: Admitted) -> Outcome:
        """A query claims nothing: it runs (and is audited) every time it is asked."""
        spec, call = admitted.spec, admitted.call
        failures = 0
        while True:
            try:
                async with self.store.transaction() as tx:
                    data = await self.invoker.invoke(admitted, tx.db, failures + 1)
                    record = self.recorder.record(call, data["status"], "allow", data, failures + 1)
                    ids = await tx.record(record)
                return outcome(record, ids)
            except Exception as exc:
                if not self.retrier.is_transient(exc, spec):
                    raise
                failures += 1
                if failures >= spec.retry.max_attempts:
                    message = f"gave up after {failures} attempts: {type(exc).__name__}"
                    verdict = Verdict(call, "failed", "allow", error("RETRIES_EXHAUSTED", message))
                    return await self.recorder.settle(verdict)
                await self.retrier.pause(failures, spec.retry)

    async def give_up(self, call: Call, request: ClaimRequest, attempt: int, exc: BaseException) -> Outcome:
        cause = exc.__cause__ if isinstance(exc, RetryableError) else None
        code = cause.code if isinstance(cause, OperationError) else "RETRIES_EXHAUSTED"
        message = f"gave up after {attempt} attempts: {type(cause or exc).__name__}"
        record = self.recorder.record(
            call, "failed", "allow", {"status": "failed", "error": error(code, message)}, attempt
        )

        async def complete() -> tuple[int, ...]:
            async with self.store.transaction() as tx:
                return tuple(await tx.complete(request.key, request.owner, record))

        return outcome(record, await self.retrier.store(complete))

    def note_retry(self, call: Call, exc: BaseException) -> None:
        op = call.op
        ids = {"command_id": call.command.id, "correlation_id": call.command.correlation_id, "op": op}
        _log.warning("%s attempt failed transiently: %s; retrying", op, type(exc).__name__, extra=ids)
        if self.metrics is not None:
            self.metrics.retries.labels(op).inc()
