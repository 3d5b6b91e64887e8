"""The ``Store`` contract: one suite, run here on ``InMemoryStore`` and in
``tests/integration/test_store_postgres.py`` on ``PostgresStore``.

Each test goes through the protocol only (no SQL, no in-memory internals), so whatever
passes here holds for both stores. Where they differed, the in-memory store was made to
behave like Postgres. Leases that must run out are short (0.05 s), with a deadline to poll
against; nothing sleeps to wait for readiness.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import pytest

from runner.errors import LeaseLost
from runner.store import (
    Accepted,
    Claim,
    ClaimRequest,
    ClaimStatus,
    OutboxRow,
    OutcomeRecord,
    Publication,
    RunFilter,
    RunView,
    Store,
    run_key,
)
from runner.testing import InMemoryStore

T = TypeVar("T")
SHORT = 0.05  # a lease meant to run out during the test
LONG = 30.0  # a lease meant to outlive it
DEADLINE = 5.0  # how long a test polls for something that should happen in SHORT
ALICE = {"kind": "user", "id": "alice", "tenant": "t1", "roles": []}
HEADERS = (("content-type", b"application/cloudevents+json"), ("traceparent", b"00-ab-cd-01"))


def request(
    key: str = "k1",
    owner: str = "w1",
    *,
    input_hash: str = "h1",
    lease: float = LONG,
    command_id: str | None = None,
    version: str = "1.0.0",
) -> ClaimRequest:
    """What ``Executor._claim_request`` builds, for alice of tenant t1."""
    return ClaimRequest(
        key=key,
        op="docs.pay",
        version=version,
        input_hash=input_hash,
        command_id=command_id or f"cmd-{key}",
        owner=owner,
        lease_seconds=lease,
        actor_id="alice",
        tenant_id="t1",
        idempotency_key=key,
    )


def outcome(
    command_id: str,
    status: str = "succeeded",
    *,
    output: Any = None,
    error: tuple[str, str] | None = None,
    actor: dict[str, Any] | None = ALICE,
    decision: str = "allow",
    op: str = "docs.pay",
    correlation_id: str | None = None,
    replayed: bool = False,
) -> OutcomeRecord:
    """What ``Executor._record`` builds: result data, audit data, a result and an audit event."""
    data: dict[str, Any] = {"status": status}
    if output is not None:
        data["output"] = output
    if error is not None:
        data["error"] = {"code": error[0], "message": error[1]}
    audit = {
        "op": op,
        "version": "1.0.0",
        "actor": actor,
        "decision": decision,
        "status": status,
        "attempt": 1,
        "duration_ms": 1.5,
        "input": {"docId": "d1"},
        "deprecated": False,
        "replayed": replayed,
        "error": error[0] if error else None,
        "reason": error[1] if error and status in ("denied", "rejected") else None,
    }
    key = command_id.encode()
    return OutcomeRecord(
        command_id=command_id,
        op=op,
        version="1.0.0",
        status=status,
        result=data,
        audit=audit,
        publications=(
            Publication("ops.results", key, b'{"type":"docs.pay.result","id":"%s"}' % key, HEADERS),
            Publication("ops.audit", key, b'{"type":"oprunner.audit","id":"%s"}' % key, HEADERS),
        ),
        correlation_id=correlation_id or command_id,
        trace_id="ab" * 16,
    )


async def complete(store: Store, key: str, owner: str, record: OutcomeRecord) -> list[int]:
    async with store.transaction() as tx:
        return await tx.complete(key, owner, record)


async def swept_ids(store: Store, limit: int = 100, min_age: float = 0.0) -> list[int]:
    """The ids one sweep would take, leaving them in the outbox (kept)."""
    async with store.sweep(limit, min_age) as sweep:
        sweep.kept.update(row.id for row in sweep.rows)
        return [row.id for row in sweep.rows]


async def poll(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    """``probe()`` again until ``done`` says yes, failing after ``DEADLINE`` seconds."""
    until = time.monotonic() + DEADLINE
    while True:
        value = await probe()
        if done(value):
            return value
        assert time.monotonic() < until, f"still {value!r} after {DEADLINE} s"
        await asyncio.sleep(0.01)


async def not_busy(store: Store, claim: ClaimRequest) -> Claim:
    """The claim, made again until the store no longer answers BUSY (a lease ran out)."""
    return await poll(lambda: store.claim(claim), lambda c: c.status is not ClaimStatus.BUSY)


async def still_waiting(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` is blocked (not done after a while): the one wait that is not polled,
    since what it shows is something *not* happening."""
    done, _ = await asyncio.wait({task}, timeout=0.1)
    return not done


class StoreContract:
    """What every ``Store`` does; a subclass provides the ``store`` fixture."""

    # -- claims ---------------------------------------------------------------------------

    async def test_a_new_key_is_acquired_on_its_first_attempt(self, store: Store) -> None:
        assert await store.claim(request()) == Claim(ClaimStatus.ACQUIRED, 1)

    async def test_a_completed_key_replays_its_stored_result(self, store: Store) -> None:
        await store.claim(request())
        data = outcome("cmd-k1", output={"receipt": "r-1", "charged": "12.50"})
        await complete(store, "k1", "w1", data)
        for owner in ("w1", "w2"):  # whoever asks, and however often
            assert await store.claim(request(owner=owner)) == Claim(
                ClaimStatus.COMPLETED, 1, result={"status": "succeeded", "output": data.result["output"]}
            )

    async def test_unfinished_names_the_keys_claimed_and_not_completed(self, store: Store) -> None:
        """What a redelivered batch asks first: whose earlier attempt never finished."""
        await store.claim_many([request("u1"), request("u2")])
        await complete(store, "u2", "w1", outcome("cmd-u2"))
        assert await store.unfinished(["u1", "u2", "u3"]) == {"u1"}
        assert await store.unfinished([]) == set()

    async def test_a_claim_in_a_transaction_is_forgotten_with_its_rollback(self, store: Store) -> None:
        """Kafka's steady state (DESIGN.md, step 5): the claim lives in the batch's transaction."""
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                [claim] = await tx.claim_many([request()])
                assert claim == Claim(ClaimStatus.ACQUIRED, 1)
                raise RuntimeError("the batch fails")
        async with store.transaction() as tx:  # nothing was kept: the next claim is attempt 1
            claims = await tx.claim_many([request("k2"), request()])
            assert [c.attempts for c in claims] == [1, 1]
            await tx.complete_many([("k1", "w1", outcome("cmd-k1"))], [])
        assert (await store.claim(request(owner="w2"))).status is ClaimStatus.COMPLETED
        assert (await store.claim(request("k2", owner="w2"))).status is ClaimStatus.BUSY  # committed, leased

    async def test_a_key_claimed_in_an_open_transaction_is_waited_for_then_replayed(
        self, store: Store
    ) -> None:
        """A duplicate in flight elsewhere: a committed claim and another transaction's claim
        of a key a batch holds (which may have no row until its outcome) both wait for its
        commit, then find the run completed, never a second attempt."""
        async with store.transaction() as tx:
            [held] = await tx.claim_many([request()])
            assert held == Claim(ClaimStatus.ACQUIRED, 1)
            committed = asyncio.create_task(store.claim(request(owner="w2")))

            async def in_another_transaction() -> Claim:
                async with store.transaction() as other:
                    [claim] = await other.claim_many([request(owner="w3")])
                    return claim

            batched = asyncio.create_task(in_another_transaction())
            assert await still_waiting(committed) and await still_waiting(batched)
            await tx.complete_many([("k1", "w1", outcome("cmd-k1", output={"n": 1}))], [])
        replay = Claim(ClaimStatus.COMPLETED, 1, result={"status": "succeeded", "output": {"n": 1}})
        assert await committed == replay
        assert await batched == replay

    async def test_a_claim_that_waited_holds_its_lease_from_when_it_got_the_key(self, store: Store) -> None:
        """A committed claim that waited for a batch's transaction longer than its own lease
        (the batch then rolled back) counts the lease from when it took the key, not from
        when it asked: nobody else takes the run over while its handler starts."""
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                await tx.claim_many([request()])
                waiting = asyncio.create_task(store.claim(request(owner="w2", lease=0.3)))
                done, _ = await asyncio.wait({waiting}, timeout=0.5)  # past the lease it asked for
                assert not done
                raise RuntimeError("the batch fails")
        assert await waiting == Claim(ClaimStatus.ACQUIRED, 1)
        assert (await store.claim(request(owner="w3"))).status is ClaimStatus.BUSY

    async def test_a_run_left_by_a_dead_owner_is_taken_over_in_a_transaction(self, store: Store) -> None:
        """A committed claim whose lease ran out (its process died): the batch's claim takes
        it, counting the attempt, and completes it; a live lease is busy instead."""
        await store.claim(request("k1", lease=0.0))
        await store.claim(request("k2", lease=LONG))
        async with store.transaction() as tx:
            k1, k2 = await tx.claim_many([request("k1", owner="w2"), request("k2", owner="w2")])
            assert (k1.status, k1.attempts) == (ClaimStatus.ACQUIRED, 2)
            assert k2.status is ClaimStatus.BUSY
            await tx.complete_many([("k1", "w2", outcome("cmd-k1"))], [])
        done = await store.claim(request("k1", owner="w3"))
        assert (done.status, done.attempts) == (ClaimStatus.COMPLETED, 2)

    async def test_a_direct_outcome_keeps_its_events_with_the_run_for_the_same_command(
        self, store: Store
    ) -> None:
        """A Kafka command's result and audit events go in no outbox; the same command claimed
        again gets them back as they were, another command under the key does not."""
        await store.claim(request())
        record = replace(outcome("cmd-k1"), direct=True)
        assert await complete(store, "k1", "w1", record) == []
        assert await swept_ids(store) == []
        again = await store.claim(request(owner="w2"))
        assert again.events == (record.publications[0].value, record.publications[1].value)
        other = await store.claim(request(owner="w2", command_id="cmd-other"))
        assert other.status is ClaimStatus.COMPLETED and other.events is None

    async def test_the_same_key_with_another_input_conflicts(self, store: Store) -> None:
        await store.claim(request())
        running = await store.claim(request(owner="w2", input_hash="h2"))
        assert (running.status, running.attempts, running.result) == (ClaimStatus.CONFLICT, 1, None)
        await complete(store, "k1", "w1", outcome("cmd-k1"))
        done = await store.claim(request(owner="w1", input_hash="h2"))
        assert (done.status, done.result) == (ClaimStatus.CONFLICT, None)

    async def test_a_conflict_names_the_version_the_stored_run_was_claimed_with(self, store: Store) -> None:
        """So the executor can tell a changed input from a default version that moved."""
        await store.claim(request(version="1.0.0"))
        running = await store.claim(request(owner="w2", input_hash="h2", version="2.0.0"))
        assert (running.status, running.version) == (ClaimStatus.CONFLICT, "1.0.0")
        await complete(store, "k1", "w1", outcome("cmd-k1"))
        done, *_ = await store.claim_many([request(input_hash="h2", version="2.0.0")])
        assert (done.status, done.version, done.result) == (ClaimStatus.CONFLICT, "1.0.0", None)
        replay = await store.claim(request(version="2.0.0"))  # same hash: the stored result
        assert replay.status is ClaimStatus.COMPLETED

    async def test_a_live_lease_is_busy_until_it_runs_out(self, store: Store) -> None:
        await store.claim(request(lease=LONG))
        busy = await store.claim(request(owner="w2"))
        assert busy.status is ClaimStatus.BUSY and busy.attempts == 1
        assert 0 < busy.retry_after <= LONG

    async def test_an_expired_lease_is_taken_over_and_attempts_count(self, store: Store) -> None:
        assert (await store.claim(request(lease=SHORT))).attempts == 1
        assert (await store.claim(request(lease=SHORT))).attempts == 2  # its owner, again
        claim = await not_busy(store, request(owner="w2"))
        assert claim == Claim(ClaimStatus.ACQUIRED, 3)
        assert not await store.renew("k1", "w1", LONG)  # the first owner lost it
        with pytest.raises(LeaseLost):
            await complete(store, "k1", "w1", outcome("cmd-k1"))
        assert await complete(store, "k1", "w2", outcome("cmd-k1"))

    async def test_claim_many_answers_each_key_in_order(self, store: Store) -> None:
        assert await store.claim_many([]) == []
        await store.claim(request("done"))
        await complete(store, "done", "w1", outcome("cmd-done", output={"n": 1}))
        await store.claim(request("theirs", owner="w2"))
        await store.claim(request("clash", owner="w2"))
        await store.claim(request("mine"))
        claims = await store.claim_many(
            [
                request("done"),
                request("theirs"),
                request("clash", input_hash="other"),
                request("new"),
                request("mine"),
            ]
        )
        assert [(c.status, c.attempts) for c in claims] == [
            (ClaimStatus.COMPLETED, 1),
            (ClaimStatus.BUSY, 1),
            (ClaimStatus.CONFLICT, 1),
            (ClaimStatus.ACQUIRED, 1),
            (ClaimStatus.ACQUIRED, 2),
        ]
        assert claims[0].result == {"status": "succeeded", "output": {"n": 1}}
        assert claims[1].retry_after > 0

    # -- leases ---------------------------------------------------------------------------

    async def test_only_the_owner_renews_and_only_while_running(self, store: Store) -> None:
        await store.claim(request(lease=SHORT))
        assert await store.renew("k1", "w1", LONG)
        busy = await store.claim(request(owner="w2"))  # renewed past SHORT: still held
        assert busy.status is ClaimStatus.BUSY and busy.retry_after > 1
        assert not await store.renew("k1", "w2", LONG)
        assert not await store.renew("nobody", "w1", LONG)
        await complete(store, "k1", "w1", outcome("cmd-k1"))
        assert not await store.renew("k1", "w1", LONG)

    async def test_a_lease_renewed_for_zero_lets_another_take_over(self, store: Store) -> None:
        await store.claim(request(lease=LONG))
        assert await store.renew("k1", "w1", 0)  # the executor's release after a failed attempt
        claim = await not_busy(store, request(owner="w2"))
        assert claim == Claim(ClaimStatus.ACQUIRED, 2)

    async def test_renew_many_counts_the_claims_still_held(self, store: Store) -> None:
        await store.claim_many([request(k) for k in ("k1", "k2", "k3")])
        await store.claim(request("k4", owner="w2"))
        await complete(store, "k3", "w1", outcome("cmd-k3"))
        assert await store.renew_many(["k1", "k2", "k3", "k4", "nobody"], "w1", LONG) == 2
        assert await store.renew_many(["k1", "k1"], "w1", LONG) == 1  # a key counts once
        assert await store.renew_many([], "w1", LONG) == 0

    # -- transactions and outcomes --------------------------------------------------------

    async def test_complete_by_another_owner_raises_lease_lost(self, store: Store) -> None:
        await store.claim(request())
        with pytest.raises(LeaseLost):
            await complete(store, "k1", "w2", outcome("cmd-k1"))
        with pytest.raises(LeaseLost):
            await complete(store, "nobody", "w1", outcome("cmd-nobody"))
        assert await store.backlog() == 0  # the transaction rolled back: no rows
        await complete(store, "k1", "w1", outcome("cmd-k1"))
        with pytest.raises(LeaseLost):  # completed: no one holds it any more
            await complete(store, "k1", "w1", outcome("cmd-k1"))

    async def test_complete_and_record_write_the_outbox_rows_whose_ids_they_return(
        self, store: Store
    ) -> None:
        await store.claim(request())
        done = outcome("cmd-k1")
        rejected = outcome("cmd-bad", "rejected", error=("INVALID_INPUT", "no"), decision="reject")
        async with store.transaction() as tx:
            assert tx.db is not None
            completed = await tx.complete("k1", "w1", done)
            recorded = await tx.record(rejected)
        query = outcome("cmd-q")
        alone = await store.record(query)
        ids = completed + recorded + alone
        assert [len(completed), len(recorded), len(alone)] == [2, 2, 2]
        assert ids == sorted(set(ids))  # distinct, in the order written
        publications = done.publications + rejected.publications + query.publications
        async with store.sweep(100, 0.0) as sweep:  # the rows hold the publications as given
            assert sweep.rows == [OutboxRow(i, p) for i, p in zip(ids, publications, strict=True)]
            sweep.kept.update(ids)
        assert await store.backlog() == 6

    async def test_complete_many_completes_and_records_in_one_go(self, store: Store) -> None:
        await store.claim_many([request("k1"), request("k2")])
        r1, r2 = outcome("cmd-k1", output={"n": 1}), outcome("cmd-k2", "failed", error=("NOPE", "x"))
        async with store.transaction() as tx:
            completed, recorded = await tx.complete_many(
                [("k1", "w1", r1), ("k2", "w1", r2)], [outcome("cmd-r", "denied", error=("FORBIDDEN", "no"))]
            )
        assert [len(ids) for ids in completed] == [2, 2] and [len(ids) for ids in recorded] == [2]
        everything = [i for ids in completed + recorded for i in ids]
        assert sorted(everything) == everything == await swept_ids(store)
        assert (await store.claim(request("k1"))).result == {"status": "succeeded", "output": {"n": 1}}
        assert (await store.claim(request("k2"))).result == r2.result
        assert (await store.find_run("cmd-r")).status == "denied"  # type: ignore[union-attr]
        async with store.transaction() as tx:
            assert await tx.complete_many([], []) == ([], [])

    async def test_complete_many_with_one_claim_lost_commits_nothing(self, store: Store) -> None:
        await store.claim(request("k1"))
        await store.claim(request("k2", owner="w2"))
        with pytest.raises(LeaseLost):
            async with store.transaction() as tx:
                await tx.complete_many(
                    [("k1", "w1", outcome("cmd-k1")), ("k2", "w1", outcome("cmd-k2"))], [outcome("cmd-r")]
                )
        assert await store.backlog() == 0
        assert await store.renew("k1", "w1", LONG)  # still running, still w1's
        assert await store.find_run("cmd-r") is None

    async def test_a_rolled_back_transaction_leaves_nothing(self, store: Store) -> None:
        await store.claim(request())

        class Boom(Exception):
            pass

        with pytest.raises(Boom):
            async with store.transaction() as tx:
                await tx.complete("k1", "w1", outcome("cmd-k1"))
                await tx.record(outcome("cmd-r"))
                raise Boom
        assert await store.backlog() == 0 and await swept_ids(store) == []
        assert (await store.find_run("cmd-k1")).status == "running"  # type: ignore[union-attr]
        assert await store.find_run("cmd-r") is None
        assert await store.claim(request()) == Claim(ClaimStatus.ACQUIRED, 2)  # still w1's to finish

    async def test_a_savepoint_rolls_back_only_its_inner_work(self, store: Store) -> None:
        await store.claim_many([request("k1"), request("k2")])
        async with store.transaction() as tx:
            before = await tx.record(outcome("cmd-before"))
            with pytest.raises(ValueError):
                async with tx.savepoint():
                    await tx.record(outcome("cmd-inside"))
                    await tx.complete("k1", "w1", outcome("cmd-k1", "failed"))
                    raise ValueError("one command of a batch fails")
            # and its lock on k1 went with it: another worker's claim is answered at once
            busy = await asyncio.wait_for(store.claim(request("k1", owner="w2")), DEADLINE)
            assert busy.status is ClaimStatus.BUSY
            async with tx.savepoint():  # a savepoint that ends well keeps its work
                kept = await tx.complete("k2", "w1", outcome("cmd-k2"))
            # the rolled-back completion left the run as it was: it can be completed again
            again = await tx.complete("k1", "w1", outcome("cmd-k1", output={"second": True}))
        assert await swept_ids(store) == before + kept + again
        assert await store.find_run("cmd-inside") is None
        assert (await store.claim(request("k1"))).result == {
            "status": "succeeded",
            "output": {"second": True},
        }
        assert (await store.claim(request("k2"))).status is ClaimStatus.COMPLETED

    async def test_a_claim_waits_for_a_completion_still_in_its_transaction(self, store: Store) -> None:
        """A completion locks its run until commit, as Postgres's row lock does: a concurrent
        claim or renewal waits, then sees the run completed; so a lease that ran out just as
        the work finished cannot hand the run to a second worker."""
        await store.claim(request(lease=LONG))
        async with store.transaction() as tx:
            await tx.complete("k1", "w1", outcome("cmd-k1", output={"n": 1}))
            claim = asyncio.create_task(store.claim(request(owner="w2")))
            renew = asyncio.create_task(store.renew("k1", "w1", LONG))
            assert await still_waiting(claim) and await still_waiting(renew)
        assert await claim == Claim(
            ClaimStatus.COMPLETED, 1, result={"status": "succeeded", "output": {"n": 1}}
        )
        assert await renew is False

    async def test_a_claim_waiting_on_a_rolled_back_completion_finds_the_run_as_it_was(
        self, store: Store
    ) -> None:
        await store.claim(request(lease=LONG))
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                await tx.complete("k1", "w1", outcome("cmd-k1"))
                claim = asyncio.create_task(store.claim(request(owner="w2")))
                assert await still_waiting(claim)
                raise RuntimeError("the commit failed")
        busy = await claim
        assert busy.status is ClaimStatus.BUSY and busy.attempts == 1  # still w1's live lease
        assert await store.renew("k1", "w1", LONG)

    async def test_wait_returns_within_its_bound(self, store: Store) -> None:
        await store.claim(request())
        await asyncio.wait_for(store.wait("k1", 0.01), DEADLINE)
        waiter = asyncio.create_task(store.wait("k1", 60))  # bounded by the completion instead
        await asyncio.sleep(0)
        await complete(store, "k1", "w1", outcome("cmd-k1"))
        await asyncio.wait_for(waiter, DEADLINE)
        await asyncio.wait_for(store.wait("k1", 60), DEADLINE)  # completed already

    async def test_reader_errors_and_refusals(self, store: Store) -> None:
        async with store.reader() as db:
            assert db is not None
        assert isinstance(store.transient_errors, tuple)
        assert all(issubclass(e, BaseException) for e in store.transient_errors)
        assert store.refuses(ValueError("a bug in the recorded data")) is True

    # -- the outbox -----------------------------------------------------------------------

    async def test_a_sweep_takes_only_rows_older_than_min_age(self, store: Store) -> None:
        ids = await store.record(outcome("cmd-1"))
        assert await swept_ids(store, min_age=60) == []
        assert await swept_ids(store, min_age=0) == ids
        later = await store.record(outcome("cmd-2"))
        assert await poll(lambda: swept_ids(store, min_age=SHORT), lambda got: got == ids + later)

    async def test_a_sweep_deletes_what_it_published_and_keeps_what_it_kept(self, store: Store) -> None:
        ids = await store.record(outcome("cmd-1")) + await store.record(outcome("cmd-2"))
        async with store.sweep(100, 0.0) as sweep:
            assert [row.id for row in sweep.rows] == ids
            sweep.kept.add(ids[2])  # Kafka refused it for now
        assert await store.backlog() == 1
        async with store.sweep(100, 0.0) as sweep:
            assert [row.id for row in sweep.rows] == [ids[2]]
        assert await store.backlog() == 0
        assert await swept_ids(store) == []

    async def test_parked_rows_are_never_swept_again_nor_counted(self, store: Store) -> None:
        ids = await store.record(outcome("cmd-1")) + await store.record(outcome("cmd-2"))
        async with store.sweep(100, 0.0) as sweep:
            sweep.parked[ids[0]] = "MessageSizeTooLargeError: " + "x" * 1000  # a long reason is cut
            sweep.kept.add(ids[1])
        assert await store.backlog() == 1  # ids[2:] were published, ids[0] is set aside
        assert await swept_ids(store) == [ids[1]]
        async with store.sweep(100, 0.0) as sweep:
            assert [row.id for row in sweep.rows] == [ids[1]]
            sweep.parked[ids[1]] = "InvalidTopicError"
        assert await store.backlog() == 0
        assert await swept_ids(store) == []

    async def test_a_sweep_that_raises_changes_nothing(self, store: Store) -> None:
        ids = await store.record(outcome("cmd-1"))
        with pytest.raises(RuntimeError):
            async with store.sweep(100, 0.0) as sweep:
                sweep.parked[ids[0]] = "never"
                raise RuntimeError("the relay crashed mid-sweep")
        assert await store.backlog() == 2
        assert await swept_ids(store) == ids

    async def test_concurrent_sweeps_take_disjoint_rows_oldest_first(self, store: Store) -> None:
        ids = [i for n in range(3) for i in await store.record(outcome(f"cmd-{n}"))]
        async with store.sweep(4, 0.0) as first, store.sweep(100, 0.0) as second:
            assert [row.id for row in first.rows] == ids[:4]  # oldest first, at most the limit
            assert [row.id for row in second.rows] == ids[4:]  # the rest: the first's are locked
            async with store.sweep(100, 0.0) as third:
                assert third.rows == []
        assert await store.backlog() == 0

    async def test_backlog_counts_the_rows_still_to_publish(self, store: Store) -> None:
        assert await store.backlog() == 0
        await store.claim(request())
        await complete(store, "k1", "w1", outcome("cmd-k1"))
        await store.record(outcome("cmd-r"))
        assert await store.backlog() == 4

    async def test_mark_published_deletes_rows(self, store: Store) -> None:
        ids = await store.record(outcome("cmd-1"))
        await store.mark_published([])
        await store.mark_published([ids[0], 10**9])  # an id already gone is no error
        assert await store.backlog() == 1
        assert await swept_ids(store) == ids[1:]
        await store.mark_published(ids)
        assert await store.backlog() == 0

    # -- finding runs ---------------------------------------------------------------------

    async def test_find_run_by_command_id_while_running_and_once_done(self, store: Store) -> None:
        assert await store.find_run("cmd-k1") is None
        await store.claim(request())
        running = await store.find_run("cmd-k1")
        assert running is not None and running.created_at is not None and running.completed_at is None
        assert replace(running, created_at=None) == RunView(
            "cmd-k1", "docs.pay", "running", None, "alice", "t1", "k1", attempts=1, actor_kind="user"
        )
        await complete(store, "k1", "w1", outcome("cmd-k1", "failed", error=("NOPE", "no")))
        failed = {"status": "failed", "error": {"code": "NOPE", "message": "no"}}
        done = await store.find_run("cmd-k1")
        assert done is not None and done.completed_at is not None and done.created_at == running.created_at
        assert replace(done, created_at=None, completed_at=None) == RunView(
            "cmd-k1", "docs.pay", "failed", failed, "alice", "t1", "k1", attempts=1, actor_kind="user"
        )

    async def test_find_run_by_run_key_prefers_the_callers_own(self, store: Store) -> None:
        await store.claim(request("ka", command_id="x"))
        await store.claim(request("kb", command_id="y"))
        assert (await store.find_run("nothing", "kb")).command_id == "y"  # type: ignore[union-attr]
        # the id names one run, the caller's key another: the caller's own wins
        assert (await store.find_run("x", "kb")).command_id == "y"  # type: ignore[union-attr]
        assert (await store.find_run("x", "no-such-key")).command_id == "x"  # type: ignore[union-attr]
        assert await store.find_run("nothing", "no-such-key") is None

    async def test_a_run_shows_the_kind_its_key_was_claimed_for(self, store: Store) -> None:
        """The kind is part of the run key (``run_key``): what ``GET /ops/runs/{id}`` compares
        with the asking token's, so a user is never shown a service's run of its name."""
        await store.claim(request(run_key("t1", "alice", "k", kind="service"), command_id="s"))
        await store.claim(request(run_key("t1", "alice", "k", kind="user"), command_id="u"))
        assert (await store.find_run("s")).actor_kind == "service"  # type: ignore[union-attr]
        assert (await store.find_run("u")).actor_kind == "user"  # type: ignore[union-attr]

    async def test_find_run_falls_back_to_the_latest_audit_entry(self, store: Store) -> None:
        """An outcome recorded without a run (rejected before any claim) is found by its
        command id through its audit entry, the latest one when there are several."""
        await store.record(outcome("cmd-x", "denied", error=("FORBIDDEN", "not yours"), decision="deny"))
        rejected = outcome(
            "cmd-x", "rejected", error=("INVALID_INPUT", "docId: required"), actor=None, decision="reject"
        )
        await store.record(rejected)
        assert await store.find_run("cmd-x") == RunView(
            "cmd-x",
            "docs.pay",
            "rejected",
            {"status": "rejected", "error": {"code": "INVALID_INPUT", "message": "docId: required"}},
            None,
            None,
        )
        await store.record(outcome("cmd-y", "succeeded"))  # a query: no run, no error
        assert await store.find_run("cmd-y") == RunView(
            "cmd-y", "docs.pay", "succeeded", {"status": "succeeded"}, "alice", "t1", actor_kind="user"
        )

    async def test_an_accepted_command_is_pending_until_an_outcome_is_recorded(self, store: Store) -> None:
        await store.accept(Accepted("acc-1", b'{"id":"acc-1"}', ALICE), LONG)
        pending = RunView("acc-1", "", "pending", None, "alice", "t1", actor_kind="user")
        assert await store.find_run("acc-1") == pending
        await store.record(outcome("acc-1", "denied", error=("FORBIDDEN", "no"), decision="deny"))
        assert (await store.find_run("acc-1")).status == "denied"  # type: ignore[union-attr]
        await store.claim(request("k-acc", command_id="acc-1"))
        assert (await store.find_run("acc-1")).status == "running"  # type: ignore[union-attr]

    # -- the runs list ---------------------------------------------------------------------

    async def test_runs_are_listed_newest_first_and_paged_by_id(self, store: Store) -> None:
        for n in range(5):
            await store.record(outcome(f"c{n}"))
        first = await store.list_runs(RunFilter(), limit=2)
        assert [e.command_id for e in first] == ["c4", "c3"]
        rest = await store.list_runs(RunFilter(), before=first[-1].id, limit=10)
        assert [e.command_id for e in rest] == ["c2", "c1", "c0"]
        newer = await store.list_runs(RunFilter(), after=rest[0].id, limit=10)  # a live stream's next
        assert [e.command_id for e in newer] == ["c3", "c4"]
        entry = first[0]
        assert (entry.op, entry.status, entry.actor_id, entry.tenant_id) == (
            "docs.pay",
            "succeeded",
            "alice",
            "t1",
        )
        assert (entry.correlation_id, entry.trace_id, entry.data["input"]) == (
            "c4",
            "ab" * 16,
            {"docId": "d1"},
        )
        assert entry.recorded_at.tzinfo is not None

    async def test_runs_are_filtered_by_each_field(self, store: Store) -> None:
        bob = {**ALICE, "id": "bob"}
        other_tenant = {**ALICE, "tenant": "t2"}
        no_tenant = {**ALICE, "tenant": None}
        await store.record(outcome("a", correlation_id="flow-1"))
        await store.record(outcome("b", "denied", actor=bob, op="docs.read", error=("FORBIDDEN", "no")))
        await store.record(outcome("c", actor=other_tenant, correlation_id="flow-1"))
        await store.record(outcome("d", actor=no_tenant))
        await store.record(outcome("e", "rejected", actor=None, error=("INVALID_INPUT", "bad")))
        await store.record(outcome("f", actor={**ALICE, "kind": "service"}, op="docs.read"))

        async def ids(where: RunFilter) -> list[str]:
            return sorted(e.command_id for e in await store.list_runs(where))

        assert await ids(RunFilter()) == ["a", "b", "c", "d", "e", "f"]
        assert await ids(RunFilter(op="docs.read")) == ["b", "f"]
        assert await ids(RunFilter(status="succeeded")) == ["a", "c", "d", "f"]
        assert await ids(RunFilter(actor_id="bob")) == ["b"]
        assert await ids(RunFilter(tenant_id="t1")) == ["a", "b", "f"]
        assert await ids(RunFilter(correlation_id="flow-1")) == ["a", "c"]
        assert await ids(RunFilter(command_id="e")) == ["e"]
        # one actor exactly: alice of t1 is not alice of t2, nor alice of no tenant, nor the
        # service of her name
        assert await ids(RunFilter(actor=("alice", "t1"), actor_kind="user")) == ["a"]
        assert await ids(RunFilter(actor=("alice", "t1"), actor_kind="service")) == ["f"]
        assert await ids(RunFilter(actor=("alice", "t1"))) == ["a", "f"]
        assert await ids(RunFilter(actor=("alice", None), actor_kind="user")) == ["d"]
        assert await ids(RunFilter(actor=(None, None))) == ["e"]
        assert await ids(RunFilter(ops=frozenset({"docs.read", "docs.other"}))) == ["b", "f"]
        assert await ids(RunFilter(ops=frozenset(), actor=("alice", "t1"))) == []
        everything = await store.list_runs(RunFilter())
        middle = sorted(e.recorded_at for e in everything)[2]
        assert len(await ids(RunFilter(since=middle))) + len(await ids(RunFilter(until=middle))) == 6

    async def test_replays_are_listed_only_when_asked_for(self, store: Store) -> None:
        await store.record(outcome("a"))
        await store.record(outcome("a", replayed=True))
        assert [e.data["replayed"] for e in await store.list_runs(RunFilter(command_id="a"))] == [False]
        both = await store.list_runs(RunFilter(command_id="a", replays=True), after=0)
        assert [e.data["replayed"] for e in both] == [False, True]

    # -- accepted commands ----------------------------------------------------------------

    async def test_accepted_commands_are_taken_once_their_hold_runs_out(self, store: Store) -> None:
        a = Accepted("a", b'{"id":"a"}', ALICE)
        b = Accepted("b", b'{"id":"b"}', None)
        c = Accepted("c", b'{"id":"c"}', ALICE)
        await store.accept(a, 0)  # its accepting process went away at once
        await store.accept(b, 0)
        await store.accept(c, LONG)  # still held by the process that accepted it
        assert list(await store.take_accepted(10, SHORT)) == [a, b]  # in acceptance order, not c
        # held by this process for SHORT, then free again for whoever sweeps next
        again = await poll(lambda: store.take_accepted(10, LONG), lambda got: len(got) > 0)
        assert list(again) == [a, b]
        assert list(await store.take_accepted(10, LONG)) == []  # held again, for LONG

    async def test_take_accepted_takes_at_most_limit(self, store: Store) -> None:
        accepted = [Accepted(f"a{n}", b"{}", None) for n in range(3)]
        for one in accepted:
            await store.accept(one, 0)
        assert list(await store.take_accepted(2, LONG)) == accepted[:2]
        assert list(await store.take_accepted(2, LONG)) == accepted[2:]
        assert list(await store.take_accepted(2, LONG)) == []

    async def test_a_finished_accepted_command_is_gone(self, store: Store) -> None:
        await store.accept(Accepted("a", b"{}", ALICE), 0)
        await store.finish_accepted("a")
        await store.finish_accepted("never-accepted")
        assert list(await store.take_accepted(10, LONG)) == []
        assert await store.find_run("a") is None

    async def test_a_command_is_accepted_once(self, store: Store) -> None:
        await store.accept(Accepted("a", b"{}", ALICE), LONG)
        with pytest.raises(Exception):  # noqa: B017  (Postgres: a unique violation)
            await store.accept(Accepted("a", b"{}", ALICE), LONG)


class TestInMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> Store:
        return InMemoryStore()
