"""Kafka's execution mode (DESIGN.md, steps 5-9): the offset is the outbox, claims are taken
in the batch's transaction, and a redelivery publishes the stored events with their ids."""

from __future__ import annotations

import contextlib

from runner import command
from runner.executor import ExecutionMode

from .conftest import GOOD, App

KAFKA = ExecutionMode(offset_outbox=True, committed_claims=False)
REDELIVERED = ExecutionMode(offset_outbox=True, committed_claims=True, crash_budget=3)


async def test_a_kafka_outcome_writes_no_outbox_row_and_a_redelivery_republishes_its_events(
    app: App,
) -> None:
    alice = app.token("alice")
    [first] = await app.executor.execute_many([(command("docs.pay", GOOD, id="k1"), alice)], KAFKA)
    assert first.status == "succeeded" and first.direct and first.outbox_ids == ()
    assert app.store.outbox == []  # the caller publishes first.publications, then commits the offset
    for mode in (KAFKA, REDELIVERED):  # the same command again, in either mode
        [again] = await app.executor.execute_many([(command("docs.pay", GOOD, id="k1"), alice)], mode)
        assert again.direct and again.replayed and again.outbox_ids == ()
        assert [p.value for p in again.publications] == [p.value for p in first.publications[:2]]
        assert again.result["id"] == first.result["id"] and again.audit["id"] == first.audit["id"]
    assert app.behaviour.calls == 1
    assert len(app.store.audit_log) == 1  # a redelivery records nothing anew
    # The same key under another command id is a replay for that command: its own events.
    [other] = await app.executor.execute_many(
        [(command("docs.pay", GOOD, id="k2", idempotency_key="k1"), alice)], KAFKA
    )
    assert other.replayed and other.result["causationid"] == "k2" and other.result["id"] != first.result["id"]
    assert app.behaviour.calls == 1


async def test_a_batch_in_kafka_mode_gives_the_outcomes_of_the_default_mode(app: App) -> None:
    alice, bob = app.token("alice"), app.token("bob")
    items = [
        (command("docs.pay", GOOD, id="b1"), alice),
        (command("docs.pay", {**GOOD, "amount": "-1"}, id="b3"), alice),
        (command("docs.pay", {**GOOD, "docId": "d2"}, id="b4"), alice),
        (command("docs.pay", {**GOOD, "docId": "d2"}, id="b2"), bob),
    ]
    outcomes = await app.executor.execute_many(items, KAFKA)
    got = [(o.result["causationid"], o.status, o.error_code, o.direct) for o in outcomes]
    assert got == [
        ("b1", "succeeded", None, True),
        ("b3", "rejected", "INVALID_INPUT", False),  # no run row to find again: the outbox keeps it
        ("b4", "denied", "FORBIDDEN", False),
        ("b2", "succeeded", None, True),
    ]
    assert len(app.store.outbox) == 4  # the rejection's and the denial's result and audit events


async def test_a_batch_that_fails_forgets_its_claims_in_kafka_mode(app: App) -> None:
    """A claim taken in the batch's transaction rolls back with it: the per-command path that
    runs the commands next claims them afresh, and each runs once."""
    recorder = app.executor._recorder
    real = recorder.record
    failed: list[int] = []

    def fails_once(*args: object, **kwargs: object) -> object:
        if not failed:
            failed.append(1)
            raise RuntimeError("the batch's transaction rolls back")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    recorder.record = fails_once  # type: ignore[assignment,method-assign]
    alice = app.token("alice")
    items = [(command("docs.pay", GOOD, id=f"f{i}"), alice) for i in (1, 2)]
    outcomes = await app.executor.execute_many(items, KAFKA)
    assert failed and [o.status for o in outcomes] == ["succeeded", "succeeded"]
    assert sorted(a["attempt"] for a in app.store.audit_log) == [1, 1]  # the first try left nothing
    assert {run.attempts for run in app.store.runs.values()} == {1}  # the rolled-back claim is gone


async def test_attempts_that_died_past_the_crash_budget_leave_the_command_unrun(app: App) -> None:
    """A committed claim counts an attempt that never finishes (its process died): past the
    budget the command comes back ``exhausted``, for the consumer to park, and nothing runs."""
    alice = app.token("alice")
    cmd = command("docs.pay", GOOD, id="dies")
    for attempt in range(1, 4):  # three attempts claim it and "die" (their leases run out)
        [claimed] = await app.executor.store.claim_many(
            [app.executor._claims.request(await _admitted(app, cmd, alice), f"dead-{attempt}")]
        )
        assert claimed.attempts == attempt
        app.store.runs[next(iter(app.store.runs))].lease_until = 0.0
    [out] = await app.executor.execute_many([(cmd, alice)], REDELIVERED)
    assert out.exhausted == 4 and out.error_code == "RETRIES_EXHAUSTED" and out.publications == ()
    assert app.behaviour.calls == 0


async def _admitted(app: App, cmd: object, token: str) -> object:
    return await app.executor._admission.admit(cmd, token)  # type: ignore[arg-type]


async def test_a_command_that_kills_its_process_spends_only_its_own_crash_budget(app: App) -> None:
    """A redelivered batch whose runs were claimed and never finished (the process died while
    the batch ran): those commands run alone, one after another, each claimed as it starts.
    So a command that kills the process every time reaches the budget while its neighbours,
    claimed with it the first time, are run and finish."""
    alice = app.token("alice")
    killer = command("docs.pay", GOOD, id="killer")
    neighbours = [command("docs.pay", GOOD, id=f"n{i}") for i in range(3)]
    batch = [killer, *neighbours]
    # The first time, the whole batch was claimed together, and the process died.
    requests = [app.executor._claims.request(await _admitted(app, c, alice), "dead") for c in batch]
    await app.executor.store.claim_many(requests)
    for run in app.store.runs.values():
        run.lease_until = 0.0

    class Died(BaseException):
        """What the killer's handler does to its process, as far as this executor can tell."""

    real = app.executor._runs._attempt

    async def attempt(held: object) -> object:
        if held.admitted.call.command.id == "killer":  # type: ignore[attr-defined]
            raise Died
        return await real(held)  # type: ignore[arg-type]

    app.executor._runs._attempt = attempt  # type: ignore[method-assign]
    for _ in range(2):  # each redelivery: the killer first, as it was sent; it dies every time
        with contextlib.suppress(Died):
            await app.executor.execute_many([(c, alice) for c in batch], REDELIVERED)
        for run in app.store.runs.values():
            if run.status == "running":
                run.lease_until = 0.0
    outcomes = await app.executor.execute_many([(c, alice) for c in batch], REDELIVERED)
    assert outcomes[0].exhausted == 4  # died in the batch, then twice alone: past the budget of 3
    assert [o.status for o in outcomes[1:]] == ["succeeded"] * 3
    assert {app.store.runs[r.key].attempts for r in requests[1:]} == {2}  # the batch's, and once alone
