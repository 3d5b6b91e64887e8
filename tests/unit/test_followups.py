"""``ctx.send``: follow-up commands written with the handler's outcome, once per run.

On the in-memory engine: what a run sends is in its outbox rows only when it succeeded, is
gone with a failed or retried attempt, is not sent again by a replay, carries the parent's
correlation and its id as causation, and runs as the handler's service identity with a token
good for that one command.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from runner import (
    IO,
    Executor,
    JwtAuthenticator,
    Meta,
    Model,
    OperationContext,
    OperationError,
    OperationRegistry,
    Policy,
    Rule,
    command,
    define_command,
    define_query,
    install_op,
    mint_token,
)
from runner.auth import CommandSigner, command_key
from runner.envelope import parse_command
from runner.executor import Outcome
from runner.followups import MAX_DEPTH
from runner.registry import Resource
from runner.store import RunFilter
from runner.testing import InMemoryStore

SECRET = "follow-up-test-secret-0123456789-abcdef"
KEY = command_key(SECRET, None)


class CaptureIn(Model):
    invoice_id: str
    target: str = "t.receipt"
    big: bool = False
    explicit_key: str | None = None
    fail: str | None = None
    flaky: int = 0
    receipts: int = 1
    bad_receipt: bool = False
    same_key: bool = False


class CaptureOut(Model):
    invoice_id: str
    receipt_ids: list[str]


class ReceiptIn(Model):
    invoice_id: str
    n: int = 1


class ReceiptOut(Model):
    invoice_id: str
    by: str
    tenant: str | None


Capture = define_command(
    meta=Meta(key="t.capture", version="1.0.0", description="capture"),
    io=IO(input=CaptureIn, output=CaptureOut, errors={"DECLINED": "declined"}),
    policy=Policy(auth="user"),
    partition_key="invoice_id",
)
Receipt = define_command(
    meta=Meta(key="t.receipt", version="1.0.0", description="receipt"),
    io=IO(input=ReceiptIn, output=ReceiptOut),
    policy=Policy(auth="service"),
    partition_key="invoice_id",
)
Unowned = define_command(  # a follow-up's actor owns nothing: this one could never run
    meta=Meta(key="t.unowned", version="1.0.0", description="unowned"),
    io=IO(input=ReceiptIn, output=ReceiptOut),
    policy=Policy(
        auth="service", rules=[Rule(resource="invoice", action="x", condition="owner", id_field="invoice_id")]
    ),
)
Tenanted = define_command(  # a service may act, in its own tenant
    meta=Meta(key="t.tenanted", version="1.0.0", description="tenanted"),
    io=IO(input=ReceiptIn, output=ReceiptOut),
    policy=Policy(
        auth="service",
        rules=[Rule(resource="invoice", action="x", condition=("owner", "service"), id_field="invoice_id")],
    ),
)
Stray = define_command(  # never installed
    meta=Meta(key="t.stray", version="1.0.0", description="stray"), io=IO(input=ReceiptIn, output=ReceiptOut)
)


class LoopIn(Model):
    n: int = 0


Loop = define_command(
    meta=Meta(key="t.loop", version="1.0.0", description="sends itself"),
    io=IO(input=LoopIn, output=LoopIn),
    policy=Policy(auth="user"),
)


async def loop(value: LoopIn, ctx: OperationContext) -> LoopIn:
    await ctx.send(Loop, {"n": value.n + 1}, key="next")
    return value


Look = define_query(
    meta=Meta(key="t.look", version="1.0.0", description="look"), io=IO(input=ReceiptIn, output=ReceiptOut)
)

ran: dict[str, int] = {}


async def capture(value: CaptureIn, ctx: OperationContext) -> CaptureOut:
    ids = []
    target = TARGETS[value.target]
    for n in range(value.receipts):
        data: Any = {"invoiceId": "x" * 1_100_000 if value.big else value.invoice_id}
        data["n"] = "not a number" if value.bad_receipt else n
        key = value.explicit_key or ("receipt" if value.same_key else f"receipt-{n}")
        ids.append(await ctx.send(target, data, key=key))
    if ctx.attempt <= value.flaky:
        raise ConnectionError("flaky")
    if value.fail:
        raise OperationError(value.fail, "asked to")
    return CaptureOut(invoice_id=value.invoice_id, receipt_ids=ids)


async def receipt(value: ReceiptIn, ctx: OperationContext) -> ReceiptOut:
    ran[value.invoice_id] = ran.get(value.invoice_id, 0) + 1
    assert ctx.actor is not None
    return ReceiptOut(invoice_id=value.invoice_id, by=ctx.actor.user_id, tenant=ctx.actor.tenant_id)


async def look(value: ReceiptIn, ctx: OperationContext) -> ReceiptOut:
    await ctx.send(Receipt, {"invoiceId": value.invoice_id})
    raise AssertionError("a query may not send")


TARGETS = {"t.receipt": Receipt, "t.unowned": Unowned, "t.tenanted": Tenanted, "t.stray": Stray}
INVOICES = {
    "mine": Resource("mine", "alice", "t1"),
    "theirs": Resource("theirs", "carol", "t2"),
    "loose": Resource("loose", "carol", None),
}


async def _no_sleep(_: float) -> None:
    return None


def _executor(signer: bool = True) -> Executor:
    registry = OperationRegistry()
    install_op(registry, Capture, capture)
    install_op(registry, Receipt, receipt)
    install_op(registry, Look, look)
    install_op(registry, Unowned, receipt)
    install_op(registry, Tenanted, receipt)
    install_op(registry, Loop, loop)
    registry.add_resource("invoice", lambda invoice_id, ctx: INVOICES.get(invoice_id))
    return Executor(
        registry,
        InMemoryStore(),
        JwtAuthenticator(secret=SECRET, command_key=KEY),
        sleep=_no_sleep,
        transient_errors=(ConnectionError,),
        commands_topic="t.commands",
        command_signer=CommandSigner(KEY, subject="unused", ttl=60) if signer else None,
    )


def _token(sub: str = "alice", tenant: str | None = "t1") -> str:
    return mint_token(SECRET, sub=sub, tenant=tenant)


def _sent(outcome: Outcome) -> list[Any]:
    return [p for p in outcome.publications if p.topic == "t.commands"]


async def test_a_succeeded_run_sends_its_follow_up_with_its_ids() -> None:
    executor = _executor()
    parent = command("t.capture", {"invoiceId": "i1"}, correlation_id="corr-1")
    outcome = await executor.execute(parent, token=_token())
    assert outcome.status == "succeeded"
    (row,) = _sent(outcome)
    child = parse_command(row.value)
    assert (child.type, child.opversion, child.causationid, child.correlationid) == (
        "t.receipt",
        "1.0.0",
        parent.id,
        "corr-1",
    )
    assert child.idempotency_key.startswith("followup:") and child.id in outcome.output["receiptIds"]
    assert row.key == b"i1"  # the follow-up's own partition key
    headers = dict(row.headers)
    done = await executor.execute(row.value, token=headers["authorization"].decode())
    assert done.status == "succeeded", done.result
    assert done.output == {"invoiceId": "i1", "by": "op:t.capture", "tenant": "t1"}
    assert done.result["causationid"] == child.id and done.result["correlationid"] == "corr-1"
    assert done.audit["data"]["causedBy"] == parent.id  # what the runs API and console link by
    assert "causedBy" not in outcome.audit["data"]  # a command nobody sent has none
    assert outcome.audit["data"]["followUps"] == [child.id]  # and the parent's names what it sent
    entries = await executor.store.list_runs(RunFilter(command_id=child.id), after=0, limit=10)
    assert [e.to_json()["causedBy"] for e in entries] == [parent.id]


async def test_published_twice_it_runs_once() -> None:
    executor = _executor()
    ran.clear()
    outcome = await executor.execute(command("t.capture", {"invoiceId": "twice"}), token=_token())
    (row,) = _sent(outcome)
    token = dict(row.headers)["authorization"].decode()
    first = await executor.execute(row.value, token=token)
    again = await executor.execute(row.value, token=token)  # the relay published it again
    assert ran["twice"] == 1 and again.replayed and again.output == first.output


async def test_its_token_is_good_for_that_command_only() -> None:
    executor = _executor()
    outcome = await executor.execute(command("t.capture", {"invoiceId": "i2"}), token=_token())
    (row,) = _sent(outcome)
    token = dict(row.headers)["authorization"].decode()
    other = command("t.receipt", {"invoiceId": "someone-elses"})
    lifted = await executor.execute(other, token=token)
    assert lifted.status == "denied"  # the token names another command
    capture_again = await executor.execute(command("t.capture", {"invoiceId": "i3"}), token=token)
    assert capture_again.status == "denied"


async def test_a_failed_run_sends_nothing() -> None:
    outcome = await _executor().execute(
        command("t.capture", {"invoiceId": "i4", "fail": "DECLINED"}), token=_token()
    )
    assert (outcome.status, outcome.error_code, _sent(outcome)) == ("failed", "DECLINED", [])


async def test_a_retried_attempt_leaves_nothing_behind() -> None:
    outcome = await _executor().execute(
        command("t.capture", {"invoiceId": "i5", "flaky": 2, "receipts": 2}), token=_token()
    )
    assert outcome.status == "succeeded"
    assert len(_sent(outcome)) == 2  # the third attempt's two, not six


async def test_a_replay_sends_nothing_again() -> None:
    executor = _executor()
    parent = command("t.capture", {"invoiceId": "i6"}, idempotency_key="k1")
    first = await executor.execute(parent, token=_token())
    replay = await executor.execute(
        command("t.capture", {"invoiceId": "i6"}, idempotency_key="k1"), token=_token()
    )
    assert len(_sent(first)) == 1 and replay.replayed and _sent(replay) == []


async def test_the_same_parent_key_from_two_callers_makes_two_follow_ups() -> None:
    executor = _executor()
    a = await executor.execute(
        command("t.capture", {"invoiceId": "i7"}, idempotency_key="k"), token=_token("alice")
    )
    b = await executor.execute(
        command("t.capture", {"invoiceId": "i7"}, idempotency_key="k"), token=_token("bob")
    )
    (ra,), (rb,) = _sent(a), _sent(b)
    assert parse_command(ra.value).idempotency_key != parse_command(rb.value).idempotency_key
    assert parse_command(ra.value).id != parse_command(rb.value).id


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ({"invoiceId": "i8", "badReceipt": True}, "invalid input: n"),
        ({"invoiceId": "i9", "receipts": 2, "sameKey": True}, "with key 'receipt' already"),
        ({"invoiceId": "i9b", "big": True}, "over the 1048576-byte message limit"),
        ({"invoiceId": "mine", "target": "t.unowned"}, "would always be denied"),
        ({"invoiceId": "i9c", "target": "t.stray"}, "t.stray 1.0.0 is not installed"),
        ({"invoiceId": "i9d", "explicitKey": "a#1"}, "without U+0000 or '#'"),
    ],
)
async def test_a_bad_send_fails_the_handler(data: dict[str, Any], why: str, caplog: Any) -> None:
    with caplog.at_level(logging.ERROR):
        outcome = await _executor().execute(command("t.capture", data), token=_token())
    assert (outcome.status, outcome.error_code, _sent(outcome)) == ("failed", "HANDLER_ERROR", [])
    assert why in caplog.text


async def test_a_query_cannot_send(caplog: Any) -> None:
    with caplog.at_level(logging.ERROR):
        outcome = await _executor().execute(command("t.look", {"invoiceId": "i10"}), token=_token())
    assert (outcome.status, outcome.error_code) == ("failed", "HANDLER_ERROR")
    assert "a query reads" in caplog.text


async def test_without_a_signer_send_says_what_to_set(caplog: Any) -> None:
    with caplog.at_level(logging.ERROR):
        outcome = await _executor(signer=False).execute(
            command("t.capture", {"invoiceId": "i11"}), token=_token()
        )
    assert outcome.error_code == "HANDLER_ERROR" and "OPRUNNER_COMMAND_TOKEN_SECRET" in caplog.text


def test_the_follow_up_envelope_round_trips() -> None:
    raw = command("t.receipt", {"invoiceId": "x"})
    assert orjson.loads(raw.encode()).get("causationid") is None


async def test_a_tenant_scoped_follow_up_acts_in_its_tenant_only() -> None:
    executor = _executor()
    for invoice, status in (("mine", "succeeded"), ("theirs", "denied")):
        outcome = await executor.execute(
            command("t.capture", {"invoiceId": invoice, "target": "t.tenanted"}), token=_token()
        )
        (row,) = _sent(outcome)
        child = await executor.execute(row.value, token=dict(row.headers)["authorization"].decode())
        assert child.status == status, (invoice, child.result)


async def test_a_follow_up_of_a_tenant_less_parent_reaches_no_tenants_resources() -> None:
    """Its parent acts in no tenant, so neither does it: not every tenant's (issue 26)."""
    executor = _executor()
    for invoice, status in (("mine", "denied"), ("theirs", "denied"), ("loose", "succeeded")):
        outcome = await executor.execute(
            command("t.capture", {"invoiceId": invoice, "target": "t.tenanted"}), token=_token(tenant=None)
        )
        (row,) = _sent(outcome)
        child = await executor.execute(row.value, token=dict(row.headers)["authorization"].decode())
        assert child.status == status, (invoice, child.result)


async def test_a_lifted_token_cannot_restate_the_lineage() -> None:
    executor = _executor()
    outcome = await executor.execute(command("t.capture", {"invoiceId": "i12"}), token=_token())
    (row,) = _sent(outcome)
    forged = {**orjson.loads(row.value), "correlationid": "attacker"}
    lifted = await executor.execute(orjson.dumps(forged), token=dict(row.headers)["authorization"].decode())
    assert lifted.status == "denied"


async def test_a_chain_of_sends_ends() -> None:
    executor = _executor()
    outcome = await executor.execute(command("t.loop", {"n": 0}), token=_token())
    depth = 0
    while outcome.status == "succeeded" and depth < 40:
        (row,) = _sent(outcome)
        outcome = await executor.execute(row.value, token=dict(row.headers)["authorization"].decode())
        depth += 1
    assert (outcome.status, outcome.error_code, depth) == ("failed", "HANDLER_ERROR", MAX_DEPTH)


async def test_a_batch_sends_for_the_commands_that_commit() -> None:
    executor = _executor()
    token = _token()
    items = [
        (command("t.capture", {"invoiceId": "b1"}), token),
        (command("t.capture", {"invoiceId": "b2", "fail": "DECLINED"}), token),
        (command("t.capture", {"invoiceId": "b3", "flaky": 1}), token),
    ]
    outcomes = await executor.execute_many(items)
    assert [o.status for o in outcomes] == ["succeeded", "failed", "succeeded"]
    assert [len(_sent(o)) for o in outcomes] == [1, 0, 1]
