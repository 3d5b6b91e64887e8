"""A batch of commands in one transaction: the claims of all its keys at once
(``Transaction.claim_many``), the handlers one after another (one savepoint each), all
outcomes at once (``Transaction.complete_many``), one commit.

The consumer gives a batch only commands that may run in any order relative to each other
(distinct Kafka keys). Whatever the batch cannot finish goes to the per-command path
(``runs``) with the claim it holds, so each command's outcome is what it would have been alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

from ..envelope import CommandEnvelope
from ..errors import LeaseLost, StoreUnavailable
from ..observability import Metrics
from ..store import Claim, ClaimRequest, ClaimStatus, OutcomeRecord, Store
from .admission import Admission, bearer
from .calls import DEFAULT_MODE, Admitted, ExecutionMode, Held, Outcome, Verdict
from .claims import Claims, settled
from .invocation import BatchAbort, InTurn, Invoker, Rollback
from .outcomes import Recorder, exhausted, outcome
from .retries import Retrier
from .runs import Runs

_log = logging.getLogger("oprunner.executor")


async def _gather_all(runs: Iterable[Awaitable[tuple[int, Outcome]]]) -> list[tuple[int, Outcome]]:
    """Every run to its end, then the first error if any: none is left running unseen."""
    results = await asyncio.gather(*runs, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if not isinstance(r, BaseException)]


async def _at(i: int, run: Awaitable[Outcome]) -> tuple[int, Outcome]:
    return i, await run


@dataclasses.dataclass
class _Sorted:
    """A batch's claims, sorted by what they decide (``Batches._sort``)."""

    held: dict[int, Held] = dataclasses.field(default_factory=dict)
    verdicts: dict[int, Verdict] = dataclasses.field(default_factory=dict)
    ready: dict[int, Outcome] = dataclasses.field(default_factory=dict)  # decided, nothing to write
    alone: list[int] = dataclasses.field(default_factory=list)


class Batches:
    def __init__(
        self,
        store: Store,
        admission: Admission,
        claims: Claims,
        invoker: Invoker,
        recorder: Recorder,
        runs: Runs,
        retrier: Retrier,
        metrics: Metrics | None,
    ) -> None:
        self.store = store
        self.admission = admission
        self.claims = claims
        self.invoker = invoker
        self.recorder = recorder
        self.runs = runs
        self.retrier = retrier
        self.metrics = metrics

    def _stage(self, name: str, since: float) -> float:
        """Count the time since ``since`` to stage ``name``; the time now."""
        now = time.perf_counter()
        if self.metrics is not None:
            self.metrics.stage(name, now - since)
        return now

    async def execute(
        self, items: Sequence[tuple[CommandEnvelope, str | None]], mode: ExecutionMode = DEFAULT_MODE
    ) -> list[Outcome]:
        started = time.perf_counter()
        try:
            async with self._reader(len(items)) as db:
                admitted = await asyncio.gather(*(self.admission.admit(c, bearer(t), db) for c, t in items))
        except Exception as exc:
            if self.retrier.is_transient(exc):
                raise StoreUnavailable(f"store unavailable: {exc!r}") from exc
            raise
        verdicts: dict[int, Verdict] = {}
        batch: dict[int, Admitted] = {}
        alone: list[int] = []  # queries, and repeated idempotency keys: the per-command path
        keys: set[str] = set()
        for i, a in enumerate(admitted):
            if isinstance(a, Verdict):
                verdicts[i] = a
            elif a.spec.kind == "query" or a.call.run_key in keys:
                alone.append(i)
            else:
                keys.add(a.call.run_key)
                batch[i] = a
        if mode.crash_budget and batch:
            # A run claimed before and never finished may have taken its process down. Such
            # commands run alone, one after another, each claimed only as it starts: a command
            # that kills its process spends its own crash budget, not its neighbours'.
            suspects = await self.retrier.store(lambda: self.store.unfinished(list(keys)))
            for i in [i for i, a in batch.items() if a.call.run_key in suspects]:
                del batch[i]
                alone.append(i)
            alone.sort()
        owner = self.claims.owner()  # one execution holds the whole batch's claims
        requests = {i: self.claims.request(a, owner) for i, a in batch.items()}
        claiming = self._stage("admit", started)
        if mode.committed_claims:
            done = await self._committed(batch, requests, verdicts, alone, mode, claiming)
        else:
            try:
                sorted_, done, again = await self._transact(batch, requests, None, verdicts, mode)
            except Exception as exc:
                if not isinstance(exc, LeaseLost) and not self.retrier.is_transient(exc):
                    _log.exception("batch of %d failed; running its commands one by one", len(batch))
                done = await self._unbatch({i: (a, None) for i, a in batch.items()}, verdicts)
            else:
                alone += sorted_.alone
                held = sorted_.held
                done += await _gather_all(_at(i, self.runs.again(held[i], exc)) for i, exc in again.items())
        outcomes: dict[int, Outcome] = {}
        for i, result in done:
            outcomes[i] = result
            self.recorder.finish(admitted[i].call, result)
        for i in alone:
            a = admitted[i]
            outcomes[i] = await (
                self.recorder.settle(a)
                if isinstance(a, Verdict)
                else self.runs.run(a, crash_budget=mode.crash_budget)
            )
            self.recorder.finish(a.call, outcomes[i])
        if self.metrics is not None and batch:
            self.metrics.batches.inc()
        return [outcomes[i] for i in range(len(items))]

    async def _committed(
        self,
        batch: dict[int, Admitted],
        requests: dict[int, ClaimRequest],
        verdicts: dict[int, Verdict],
        alone: list[int],
        mode: ExecutionMode,
        claiming: float,
    ) -> list[tuple[int, Outcome]]:
        """Claims committed first, each with a lease renewed while the batch runs."""
        found = await self.retrier.store(lambda: self.store.claim_many(list(requests.values())))
        sorted_ = self._sort(batch, requests, found, mode)
        verdicts.update(sorted_.verdicts)
        alone += sorted_.alone
        held = sorted_.held
        self._stage("claim", claiming)
        owner = next(iter(requests.values())).owner if requests else ""
        try:
            async with self.claims.heartbeat([h.request.key for h in held.values()], owner) as quiet:
                _, done, again = await self._transact(batch, requests, sorted_, verdicts, mode, quiet)
        except Exception as exc:
            if not isinstance(exc, LeaseLost) and not self.retrier.is_transient(exc):
                _log.exception("batch of %d failed; running its commands one by one", len(held))
            return await self._unbatch(
                {i: (h.admitted, h.request) for i, h in held.items()}, verdicts, sorted_.ready
            )
        return done + await _gather_all(_at(i, self.runs.again(held[i], exc)) for i, exc in again.items())

    def _sort(
        self,
        batch: dict[int, Admitted],
        requests: dict[int, ClaimRequest],
        found: Sequence[Claim],
        mode: ExecutionMode,
    ) -> _Sorted:
        """What each claim decides: run it here, a verdict (a replay, a conflict), the stored
        events to publish again, left unrun past the crash budget, or the per-command path
        (a live worker holds it: wait there)."""
        out = _Sorted()
        for (i, request), claim in zip(requests.items(), found, strict=True):
            admitted = batch[i]
            if claim.status is ClaimStatus.ACQUIRED:
                if mode.crash_budget and claim.attempts > mode.crash_budget:
                    out.ready[i] = exhausted(claim.attempts)
                else:
                    out.held[i] = Held(admitted, request, claim.attempts)
            elif self.claims.may_restate(admitted, claim):
                out.alone.append(i)  # perhaps only the default version moved: ``Runs.once`` sees
            elif mode.offset_outbox and claim.events is not None:
                out.ready[i] = self.recorder.republish(admitted.call, claim.events)
            elif (verdict := settled(admitted.call, claim)) is not None:
                out.verdicts[i] = verdict
            else:
                out.alone.append(i)
        return out

    async def _transact(
        self,
        batch: dict[int, Admitted],
        requests: dict[int, ClaimRequest],
        sorted_: _Sorted | None,
        verdicts: dict[int, Verdict],
        mode: ExecutionMode,
        quiet_heartbeat: Callable[[], Awaitable[None]] | None = None,
    ) -> tuple[_Sorted, list[tuple[int, Outcome]], dict[int, BaseException | None]]:
        """One transaction for the batch (its claims first, when ``sorted_`` is None), one
        savepoint per command (or per batch-handler call): a command that fails rolls back
        only its own writes, and its failure is recorded with the rest. Returns what the
        claims decided, the outcomes, and the commands whose attempt must be run again alone,
        with the transient error that ended it (None when their batch form failed: each then
        runs the plain handler)."""
        again: dict[int, BaseException | None] = {}
        async with self.store.transaction() as tx:
            if sorted_ is None:
                claiming = time.perf_counter()
                sorted_ = self._sort(batch, requests, await tx.claim_many(list(requests.values())), mode)
                self._stage("claim", claiming)
            held = sorted_.held
            running = time.perf_counter()
            outputs: dict[int, dict[str, Any]] = {}  # the result data of each command run
            groups: dict[int, list[int]] = {}  # operations with a batch handler -> their commands
            for i, h in held.items():
                installed = h.admitted.installed
                if installed.batch is not None:
                    groups.setdefault(id(installed), []).append(i)
                    continue
                try:
                    async with tx.savepoint():
                        data = await self.invoker.invoke(h.admitted, tx.db, h.attempt)
                        if data["status"] != "succeeded":
                            raise Rollback(data)  # undo its writes; record its failure
                except Rollback as rollback:
                    data = rollback.data
                except Exception as exc:
                    if not self.retrier.is_transient(exc, installed.spec):
                        raise
                    again[i] = exc
                    continue
                outputs[i] = data
            for members in groups.values():
                try:
                    async with tx.savepoint():
                        datas = await self.invoker.invoke_batch([held[i] for i in members], tx.db)
                except BatchAbort:
                    again.update(dict.fromkeys(members))
                    continue
                outputs.update(zip(members, datas, strict=True))
            completed: dict[int, OutcomeRecord] = {
                i: self.recorder.record(
                    h.admitted.call,
                    outputs[i]["status"],
                    "allow",
                    outputs[i],
                    h.attempt,
                    sent=h.admitted.call.follow_ups,  # kept only when it succeeded
                    direct=mode.offset_outbox,
                )
                for i, h in held.items()
                if i in outputs
            }
            decided = {i: self.recorder.verdict(v) for i, v in (verdicts | sorted_.verdicts).items()}
            if quiet_heartbeat is not None:
                # The heartbeat and the commit lock the same rows, in other orders: stop it first.
                await quiet_heartbeat()
            committing = self._stage("run", running)
            completed_ids, decided_ids = await tx.complete_many(
                [(held[i].request.key, held[i].request.owner, r) for i, r in completed.items()],
                list(decided.values()),
            )
        self._stage("commit", committing)
        out = [(i, outcome(r, ids)) for (i, r), ids in zip(completed.items(), completed_ids, strict=True)]
        replays = verdicts | sorted_.verdicts
        out += [
            (i, outcome(r, ids, replayed=replays[i].replay is not None))
            for (i, r), ids in zip(decided.items(), decided_ids, strict=True)
        ]
        out += list(sorted_.ready.items())
        return sorted_, out, again

    async def _unbatch(
        self,
        runs: dict[int, tuple[Admitted, ClaimRequest | None]],
        verdicts: dict[int, Verdict],
        ready: dict[int, Outcome] | None = None,
    ) -> list[tuple[int, Outcome]]:
        """The commands of a batch that could not commit, each on the per-command path (with
        the claim it holds, if committed); its verdicts recorded on their own."""
        once = [_at(i, self.runs.once(a, request)) for i, (a, request) in runs.items()]
        settles = [_at(i, self.recorder.settle(v)) for i, v in verdicts.items()]
        return [*await _gather_all([*once, *settles]), *(ready or {}).items()]

    @contextlib.asynccontextmanager
    async def _reader(self, size: int) -> AsyncIterator[Any]:
        """One database handle for the resolvers of a whole batch, its calls taken in turn."""
        if size < 2:
            yield None
            return
        async with self.store.reader() as db:
            yield InTurn(db)
