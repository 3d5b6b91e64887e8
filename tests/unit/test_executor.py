"""The executor's outcomes, one per path of DESIGN.md's steps 2-7, on InMemoryStore."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from runner import EnvelopeError, Executor, OperationError, RetryableError, command
from runner.auth import JwtAuthenticator
from runner.envelope import nul_paths
from runner.model import REDACTED

from .conftest import GOOD, SECRET, App


async def _published(app: App, topic: str) -> int:
    """Outbox rows for ``topic`` (this suite also runs on the Postgres store)."""
    pool = getattr(app.store, "pool", None)
    if pool is not None:
        return int(await pool.fetchval("SELECT count(*) FROM oprunner_outbox WHERE topic = $1", topic))
    return sum(1 for row in app.store.outbox if row.publication.topic == topic)


async def test_valid_command_succeeds_with_result_and_audit(app: App) -> None:
    out = await app.run("docs.pay", GOOD, id="cmd-1")
    assert out.status == "succeeded"
    assert out.output == {"receipt": "r-d1", "charged": "12.50"}
    assert out.result["type"] == "docs.pay.result"
    assert out.result["causationid"] == "cmd-1"
    assert out.result["correlationid"] == "cmd-1"
    assert out.result["idempotencykey"] == "cmd-1"
    assert out.result["opversion"] == "1.0.0"
    assert out.audit["type"] == "oprunner.audit"
    assert out.audit["data"]["decision"] == "allow"
    assert out.audit["data"]["actor"]["id"] == "alice"
    assert len(out.outbox_ids) == 2
    assert await _published(app, "ops.results") == 1 and await _published(app, "ops.audit") == 1
    # the Kafka key of the events is the partition key, so one document's events stay ordered
    assert {p.key for p in out.publications} == {b"d1"}


async def test_sensitive_fields_are_redacted_in_audit(app: App) -> None:
    out = await app.run("docs.pay", GOOD)
    assert out.audit["data"]["input"]["card"] == REDACTED
    assert b"4242-secret" not in b"".join(p.value for p in out.publications)
    rejected = await app.run("docs.pay", {**GOOD, "amount": "-1"})
    assert rejected.audit["data"]["input"]["card"] == REDACTED


async def test_invalid_input_is_rejected_naming_fields(app: App) -> None:
    out = await app.run("docs.pay", {"docId": "", "amount": "zero", "card": "x", "extra": 1})
    assert out.status == "rejected"
    assert out.error_code == "INVALID_INPUT"
    fields = {f["field"] for f in out.result["data"]["error"]["fields"]}
    assert fields == {"docId", "amount", "extra"}
    assert app.behaviour.calls == 0
    assert out.audit["data"]["decision"] == "reject"


async def test_data_that_is_not_an_object_is_rejected(app: App) -> None:
    out = await app.run("docs.pay", "a string")
    assert out.status == "rejected" and out.error_code == "INVALID_INPUT"


async def test_unknown_operation_and_version_are_rejected(app: App) -> None:
    assert (await app.run("docs.nope", GOOD)).error_code == "UNKNOWN_OPERATION"
    out = await app.run("docs.pay", GOOD, opversion="9.0.0")
    assert out.status == "rejected" and out.error_code == "UNKNOWN_OPERATION"


async def test_missing_or_bad_token_is_denied(app: App) -> None:
    out = await app.run("docs.pay", GOOD, token=None)
    assert out.status == "denied" and out.error_code == "UNAUTHENTICATED"
    out = await app.run("docs.pay", GOOD, token="not-a-jwt")
    assert out.status == "denied" and out.error_code == "UNAUTHENTICATED"
    assert out.audit["data"]["decision"] == "deny"
    assert app.behaviour.calls == 0


async def test_someone_elses_resource_is_denied(app: App) -> None:
    out = await app.run("docs.pay", {**GOOD, "docId": "d2"})  # bob's
    assert out.status == "denied" and out.error_code == "FORBIDDEN"
    assert app.behaviour.calls == 0
    # a denial claims no idempotency key: the corrected command under the same key runs
    fixed = await app.run("docs.pay", GOOD, idempotency_key=out.result["idempotencykey"])
    assert fixed.status == "succeeded" and not fixed.replayed


async def test_same_owner_in_another_tenant_is_denied(app: App) -> None:
    out = await app.run("docs.pay", {**GOOD, "docId": "d3"})  # alice, but tenant t2
    assert out.status == "denied"


async def test_actor_claimed_in_data_changes_nothing(app: App) -> None:
    out = await app.run("docs.pay", {**GOOD, "docId": "d2", "userId": "bob"}, token="alice")
    assert out.status == "rejected"  # unknown fields are refused outright
    assert app.behaviour.calls == 0


async def test_duplicate_replays_the_stored_result_and_runs_nothing(app: App) -> None:
    first = await app.run("docs.pay", GOOD, id="a", idempotency_key="k1")
    again = await app.run("docs.pay", GOOD, id="b", idempotency_key="k1")
    assert app.behaviour.calls == 1
    assert again.status == "succeeded" and again.replayed
    assert again.result["data"] == first.result["data"]
    assert again.result["causationid"] == "b"
    assert again.audit["data"]["replayed"] is True
    assert await _published(app, "ops.results") == 2  # every delivery is answered


async def test_same_key_different_input_is_a_conflict(app: App) -> None:
    await app.run("docs.pay", GOOD, idempotency_key="k1")
    out = await app.run("docs.pay", {**GOOD, "amount": "13"}, idempotency_key="k1")
    assert out.status == "rejected" and out.error_code == "IDEMPOTENCY_CONFLICT"
    assert app.behaviour.calls == 1


async def test_concurrent_executions_of_one_key_run_the_handler_once(app: App) -> None:
    app.behaviour.gate = asyncio.Event()
    tasks = [asyncio.create_task(app.run("docs.pay", GOOD, idempotency_key="same")) for _ in range(5)]
    for _ in range(50):
        await asyncio.sleep(0)
    app.behaviour.gate.set()
    outcomes = await asyncio.gather(*tasks)
    assert app.behaviour.calls == 1
    assert [o.status for o in outcomes] == ["succeeded"] * 5
    assert sum(o.replayed for o in outcomes) == 4


async def test_transient_errors_retry_then_succeed(app: App) -> None:
    app.behaviour.transient_failures = 2
    out = await app.run("docs.pay", GOOD)
    assert out.status == "succeeded"
    assert app.behaviour.calls == 3
    assert out.audit["data"]["attempt"] == 3


async def test_transient_errors_past_the_limit_fail(app: App) -> None:
    app.behaviour.transient_failures = 10
    out = await app.run("docs.pay", GOOD)
    assert out.status == "failed" and out.error_code == "RETRIES_EXHAUSTED"
    assert app.behaviour.calls == 3  # Retry() default: 3 attempts
    again = await app.run("docs.pay", GOOD, id=out.result["causationid"])
    assert again.replayed and again.status == "failed"


async def test_retryable_operation_error_keeps_its_code_when_exhausted(app: App) -> None:
    app.behaviour.raise_error = OperationError("UPSTREAM_BUSY", "later", retryable=True)
    out = await app.run("docs.pay", GOOD)
    assert out.status == "failed" and out.error_code == "UPSTREAM_BUSY"
    app.behaviour.raise_error = RetryableError("x")
    assert (await app.run("docs.pay", GOOD)).error_code == "RETRIES_EXHAUSTED"


async def test_domain_error_is_failed_with_its_code(app: App) -> None:
    app.behaviour.raise_error = OperationError("TOO_MUCH", "limit is 10", details={"limit": 10})
    out = await app.run("docs.pay", GOOD)
    assert out.status == "failed"
    assert out.result["data"]["error"] == {
        "code": "TOO_MUCH",
        "message": "limit is 10",
        "details": {"limit": 10},
    }
    assert app.behaviour.calls == 1


async def test_wrong_output_shape_is_output_invalid(app: App) -> None:
    app.behaviour.bad_output = True
    out = await app.run("docs.pay", GOOD)
    assert out.status == "failed" and out.error_code == "OUTPUT_INVALID"


async def test_unexpected_exception_is_failed_not_a_crash(app: App) -> None:
    app.behaviour.raise_error = KeyError("boom")
    out = await app.run("docs.pay", GOOD)
    assert out.status == "failed" and out.error_code == "HANDLER_ERROR"


async def test_query_runs_every_time_and_admin_may_view(app: App) -> None:
    first = await app.run("docs.view", {"docId": "d1"})
    second = await app.run("docs.view", {"docId": "d1"})
    assert first.status == second.status == "succeeded" and not second.replayed
    admin = app.token("root", kind="admin")
    assert (await app.run("docs.view", {"docId": "d2"}, token=admin)).status == "succeeded"
    assert (await app.run("docs.view", {"docId": "d2"}, token="alice")).status == "denied"


async def test_amounts_keep_exact_decimal_value(app: App) -> None:
    out = await app.run("docs.pay", {**GOOD, "amount": 19.99})
    assert Decimal(out.output["charged"]) == Decimal("19.99")


async def test_raw_bytes_dicts_and_bearer_prefix_are_accepted(app: App) -> None:
    raw = command("docs.pay", GOOD, id="raw-1").encode()
    out = await app.executor.execute(raw, token="Bearer " + app.token())
    assert out.status == "succeeded"
    doc = {"specversion": "1.0", "id": "raw-2", "source": "s", "type": "docs.pay", "data": GOOD}
    assert (await app.executor.execute(doc, token=app.token())).status == "succeeded"
    with pytest.raises(EnvelopeError):
        await app.executor.execute(b"garbage", token=app.token())


async def test_long_handler_keeps_its_lease_and_a_crashed_claim_is_taken_over(app: App) -> None:
    from runner.store import ClaimRequest, ClaimStatus

    app.executor.lease_seconds = 0.6  # renewed every 0.2 s: a 0.4 s stall would be needed to lose it
    app.behaviour.gate = asyncio.Event()
    first = asyncio.create_task(app.run("docs.pay", GOOD, idempotency_key="long"))
    await asyncio.sleep(2.0)  # over three lease lengths: only renewal keeps the claim ours
    second = asyncio.create_task(app.run("docs.pay", GOOD, idempotency_key="long"))
    await asyncio.sleep(0.2)
    app.behaviour.gate.set()
    outcomes = await asyncio.gather(first, second)
    assert app.behaviour.calls == 1 and sorted(o.replayed for o in outcomes) == [False, True]
    # a claim whose owner died (no renewal) is taken over once its lease runs out
    dead = ClaimRequest("orphan", "docs.pay", "1.0.0", "h", "c", "dead-worker", 0.05)
    assert (await app.store.claim(dead)).status is ClaimStatus.ACQUIRED
    await asyncio.sleep(0.3)
    took = await app.store.claim(ClaimRequest("orphan", "docs.pay", "1.0.0", "h", "c", "new-worker", 10))
    assert took.status is ClaimStatus.ACQUIRED and took.attempts == 2


async def test_a_batch_gives_the_outcomes_single_commands_would(app: App) -> None:
    await app.run("docs.pay", GOOD, idempotency_key="done-before")
    alice, bob = app.token("alice"), app.token("bob")
    items = [
        (command("docs.pay", GOOD, id="b1"), alice),
        (command("docs.pay", {**GOOD, "docId": "d2"}, id="b2"), bob),
        (command("docs.pay", {**GOOD, "amount": "-1"}, id="b3"), alice),
        (command("docs.pay", {**GOOD, "docId": "d2"}, id="b4"), alice),
        (command("docs.pay", GOOD, id="b5", idempotency_key="done-before"), alice),
        (command("docs.pay", {**GOOD, "amount": "2"}, id="b6", idempotency_key="done-before"), alice),
        (command("docs.view", {"docId": "d1"}, id="b7"), alice),
        (command("docs.pay", GOOD, id="b8", idempotency_key="b1"), alice),  # same key as b1, same batch
        (command("docs.nope", {}, id="b9"), "Bearer " + alice),
    ]
    outcomes = await app.executor.execute_many(items)
    got = [(o.result["causationid"], o.status, o.error_code, o.replayed) for o in outcomes]
    assert got == [
        ("b1", "succeeded", None, False),
        ("b2", "succeeded", None, False),
        ("b3", "rejected", "INVALID_INPUT", False),
        ("b4", "denied", "FORBIDDEN", False),
        ("b5", "succeeded", None, True),
        ("b6", "rejected", "IDEMPOTENCY_CONFLICT", False),
        ("b7", "succeeded", None, False),
        ("b8", "succeeded", None, True),
        ("b9", "rejected", "UNKNOWN_OPERATION", False),
    ]
    assert app.behaviour.calls == 3  # done-before, b1, b2
    assert await _published(app, "ops.results") == 10 and await _published(app, "ops.audit") == 10


async def test_a_failing_handler_in_a_batch_fails_alone_and_runs_once(app: App) -> None:
    seen: list[str] = []
    real = app.registry.get("docs.pay").handler

    async def fails_for_d2(value: Any, ctx: Any) -> Any:
        seen.append(value.doc_id)
        if value.doc_id == "d2":
            raise OperationError("TOO_MUCH", "no")
        return await real(value, ctx)

    object.__setattr__(app.registry.get("docs.pay"), "handler", fails_for_d2)
    items = [
        (command("docs.pay", GOOD, id="c1"), app.token("alice")),
        (command("docs.pay", {**GOOD, "docId": "d2"}, id="c2"), app.token("bob")),
    ]
    outcomes = await app.executor.execute_many(items)
    assert [(o.status, o.error_code) for o in outcomes] == [("succeeded", None), ("failed", "TOO_MUCH")]
    # c2's failure rolled back its own savepoint only: each handler ran once, in one attempt
    assert app.behaviour.effects == ["c1"] and sorted(seen) == ["d1", "d2"]
    assert [o.audit["data"]["attempt"] for o in outcomes] == [1, 1]
    again = await app.executor.execute_many(items)
    assert all(o.replayed for o in again)


def _with_batch(app: App, batch: Any) -> None:
    object.__setattr__(app.registry.get("docs.pay"), "batch", batch)


async def test_a_batch_handler_does_a_batchs_work_in_one_call(app: App) -> None:
    calls: list[list[tuple[str, str, int]]] = []

    async def pay_many(items: Any) -> list[dict[str, str]]:
        calls.append([(value.doc_id, ctx.idempotency_key, ctx.attempt) for value, ctx in items])
        assert len({id(ctx.db) for _, ctx in items}) == 1  # one transaction for all of them
        return [{"receipt": f"many-{value.doc_id}", "charged": str(value.amount)} for value, _ in items]

    _with_batch(app, pay_many)
    items = [
        (command("docs.pay", GOOD, id="m1"), app.token("alice")),
        (command("docs.pay", {**GOOD, "docId": "d2"}, id="m2"), app.token("bob")),
        (command("docs.pay", {**GOOD, "docId": "d2"}, id="m3"), app.token("alice")),  # denied
    ]
    outcomes = await app.executor.execute_many(items)
    assert [(o.status, o.output) for o in outcomes] == [
        ("succeeded", {"receipt": "many-d1", "charged": "12.50"}),
        ("succeeded", {"receipt": "many-d2", "charged": "12.50"}),
        ("denied", None),
    ]
    assert calls == [[("d1", "m1", 1), ("d2", "m2", 1)]] and app.behaviour.calls == 0
    assert all(o.replayed for o in (await app.executor.execute_many(items))[:2])
    assert len(calls) == 1  # replays run nothing
    single = await app.run("docs.pay", {**GOOD, "docId": "d3"}, token=app.token("alice", tenant="t2"))
    assert single.status == "succeeded" and app.behaviour.calls == 1  # alone: the plain handler


@pytest.mark.parametrize(
    "failure",
    [OperationError("TOO_MUCH", "no"), ConnectionError("flaky"), "wrong count", "bad output"],
)
async def test_a_failing_batch_handler_leaves_each_command_to_the_plain_handler(
    app: App, failure: Any
) -> None:
    async def pay_many(items: Any) -> list[Any]:
        if isinstance(failure, Exception):
            raise failure
        if failure == "wrong count":
            return [{"receipt": "x", "charged": "1"}]
        return [{"receipt": 42} for _ in items]

    _with_batch(app, pay_many)
    items = [
        (command("docs.pay", GOOD, id="f1"), app.token("alice")),
        (command("docs.pay", {**GOOD, "docId": "d2"}, id="f2"), app.token("bob")),
    ]
    outcomes = await app.executor.execute_many(items)
    got = [(o.status, o.output["receipt"]) for o in outcomes]
    assert got == [("succeeded", "r-d1"), ("succeeded", "r-d2")]
    assert sorted(app.behaviour.effects) == ["f1", "f2"]  # run alone, concurrently: any order


def test_queries_take_no_batch_handler() -> None:
    from runner import OperationRegistry, RegistryError, install_op

    from .conftest import VIEW

    async def view(value: Any, ctx: Any) -> Any: ...

    async def view_many(items: Any) -> list[Any]:
        return []

    with pytest.raises(RegistryError, match="queries run alone"):
        install_op(OperationRegistry(), VIEW, view, batch=view_many)


async def test_logs_are_json_with_ids_and_never_carry_input_values(app: App) -> None:
    import io
    import json
    import logging

    from runner.observability import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    try:
        app.behaviour.raise_error = ValueError(f"bad card {GOOD['card']}")  # a handler quoting its input
        await app.run("docs.pay", GOOD, id="logged-1")
    finally:
        logging.getLogger().removeHandler(handler)
    output = stream.getvalue()
    assert GOOD["card"] not in output
    [entry] = [json.loads(line) for line in output.splitlines() if "handler of" in line]
    assert entry["command_id"] == "logged-1" and entry["op"] == "docs.pay" and entry["error"] == "ValueError"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**GOOD, "docId": "d1\x00"}, "docId"),
        ({**GOOD, "card": "\x00"}, "card"),
        ({**GOOD, "no\x00te": 1}, "no\\u0000te"),
        ({**GOOD, "meta": {"tags": ["ok", "b\x00d"]}}, "meta.tags.1"),
    ],
)
async def test_nul_anywhere_in_the_input_is_rejected_naming_the_field(
    app: App, data: Any, field: str
) -> None:
    """U+0000 is valid JSON that Postgres refuses in text and jsonb: it is answered before
    it reaches the store, and the audit records the input with it written out."""
    out = await app.run("docs.pay", data)
    assert (out.status, out.error_code) == ("rejected", "INVALID_INPUT")
    assert [f["field"] for f in out.result["data"]["error"]["fields"]] == [field]
    assert not nul_paths(out.result) and not nul_paths(out.audit)
    assert app.behaviour.calls == 0
    assert (await app.run("docs.pay", GOOD)).status == "succeeded"  # the store is still fine


async def test_a_token_with_nul_in_its_claims_is_denied(app: App) -> None:
    out = await app.run("docs.pay", GOOD, token=app.token("ali\x00ce"))
    assert (out.status, out.error_code) == ("denied", "UNAUTHENTICATED")
    assert "U+0000" in out.result["data"]["error"]["message"]


async def test_an_idempotency_key_belongs_to_its_caller(app: App) -> None:
    """Bob using Alice's key first (the README's ``order-991-pay``, or a ``stripe:evt_`` one)
    neither blocks her command, nor replays his result to her, nor tells him hers exists."""
    bob = app.token("bob")
    squat = await app.run("docs.pay", {**GOOD, "docId": "d2"}, token=bob, idempotency_key="order-991-pay")
    assert squat.status == "succeeded"
    alice = await app.run("docs.pay", GOOD, idempotency_key="order-991-pay")
    assert (alice.status, alice.replayed, alice.output["receipt"]) == ("succeeded", False, "r-d1")
    again = await app.run("docs.pay", GOOD, idempotency_key="order-991-pay")
    assert again.replayed and again.output == alice.output
    other_tenant = await app.run(
        "docs.pay",
        {**GOOD, "docId": "d3"},
        token=app.token("alice", tenant="t2"),
        idempotency_key="order-991-pay",
    )
    assert other_tenant.status == "succeeded" and not other_tenant.replayed
    conflict = await app.run("docs.pay", {**GOOD, "amount": "1"}, idempotency_key="order-991-pay")
    assert conflict.error_code == "IDEMPOTENCY_CONFLICT"  # her own key, her own conflict
    assert app.behaviour.effects == ["order-991-pay"] * 3


async def test_an_idempotency_key_belongs_to_its_callers_kind_too(app: App) -> None:
    """A service and a user of one subject and tenant are two callers: the same key is two
    runs, each replayed to its own kind only."""
    service = app.token("alice", kind="service")
    as_service = await app.run("docs.pay", GOOD, token=service, idempotency_key="shared-key")
    as_user = await app.run("docs.pay", GOOD, idempotency_key="shared-key")
    assert (as_service.status, as_service.replayed) == ("succeeded", False)
    assert (as_user.status, as_user.replayed) == ("succeeded", False)
    again = await app.run("docs.pay", GOOD, token=service, idempotency_key="shared-key")
    assert again.replayed and again.output == as_service.output
    assert app.behaviour.effects == ["shared-key"] * 2


async def test_strangers_input_is_audited_by_size_and_digest_only(app: App) -> None:
    """Denied, and rejected before the caller proved who they are: the audit keeps who (or
    nobody), the input's size and SHA-256, never the input."""
    padding = {**GOOD, "card": "x" * 250}
    cases = [
        (await app.run("docs.pay", padding, token=None), "denied"),  # no token
        (await app.run("docs.pay", padding, token="not-a-jwt"), "denied"),
        (await app.run("docs.pay", {**padding, "amount": "-1"}, token=None), "unauthenticated"),
        (await app.run("docs.pay", padding, token="bob"), "denied"),  # d1 is not bob's
    ]
    for out, why in cases:
        audited = out.audit["data"]["input"]
        assert audited["omitted"] is True and audited["why"] == why, audited
        assert len(audited["sha256"]) == 64 and audited["bytes"] > 250
        assert "xxxxx" not in str(out.audit)
    assert cases[3][0].audit["data"]["actor"]["id"] == "bob"  # who tried is kept
    # an authenticated caller's invalid input is audited (secrets redacted) as before
    mine = await app.run("docs.pay", {**GOOD, "amount": "-1"})
    assert mine.audit["data"]["input"]["card"] == REDACTED


async def test_a_one_command_token_runs_only_its_command(app: App) -> None:
    from runner.auth import CommandSigner, command_key

    key = command_key(SECRET, None)
    assert key is not None
    app.executor.authenticator = JwtAuthenticator(secret=SECRET, command_key=key)
    signer = CommandSigner(key, subject="hooks", ttl=60)
    token = signer.token_for(command("docs.pay", GOOD, id="cmd-1"))
    other_data = await app.run("docs.pay", {**GOOD, "amount": "999"}, token=token, id="cmd-1")
    other_id = await app.run("docs.pay", GOOD, token=token, id="cmd-2")
    other_key = await app.run("docs.pay", GOOD, token=token, id="cmd-1", idempotency_key="k2")
    assert other_data.status == other_id.status == other_key.status == "denied"
    assert other_data.error_code == other_id.error_code == other_key.error_code == "UNAUTHENTICATED"
    # its own command passes the binding and meets the policy like any service actor's
    own = await app.run("docs.pay", dict(reversed(GOOD.items())), token=token, id="cmd-1")
    assert own.error_code == "FORBIDDEN"
    assert app.behaviour.calls == 0


async def test_what_a_stranger_makes_long_stays_short_in_the_audit(app: App) -> None:
    import json

    noisy = {**GOOD, **{f"{'k' * 190}{i:03}": 1 for i in range(100)}}  # 100 long unknown fields
    out = await app.run("docs.pay", noisy, token=None)
    assert out.status == "rejected"
    assert len(json.dumps(out.audit["data"])) < 2048, len(json.dumps(out.audit["data"]))
    assert len(out.result["data"]["error"]["message"]) <= 500


async def test_a_batch_counts_its_time_in_each_stage(app: App) -> None:
    """What the benchmark's stage breakdown reads: one observation per stage per batch."""
    from runner.observability import Metrics

    metrics = Metrics()
    executor = Executor(app.registry, app.store, app.executor.authenticator, metrics=metrics)
    token = app.token("alice")
    items = [(command("docs.pay", {**GOOD, "docId": f"d{i}"}, id=f"staged-{i}"), token) for i in (1, 2)]
    await executor.execute_many(items)
    text = metrics.render().decode()
    for stage in ("admit", "claim", "run", "commit"):
        assert f'oprunner_stage_seconds_count{{stage="{stage}"}} 1.0' in text, stage


def test_outside_keys_keep_their_pre_0009_scope_whatever_the_kind() -> None:
    """The run key holds the kind (0009); what a run's Stripe keys and follow-up ids derive
    from does not, so a service's run left half done across the upgrade calls Stripe again
    under the key it used before, not a new one (a second PaymentIntent)."""
    from runner.auth import Actor
    from runner.envelope import command as new_command
    from runner.executor.calls import Call
    from runner.store import run_key

    command = new_command("docs.pay", GOOD, idempotency_key="k1")
    for kind in ("user", "service", "admin"):
        actor = Actor(kind=kind, user_id="op:billing.capturePayment", tenant_id="t1")  # type: ignore[arg-type]
        call = Call(command=command, started=0.0, actor=actor)
        assert call.effect_scope == run_key("t1", "op:billing.capturePayment", "k1", kind=None)
        assert (call.run_key == call.effect_scope) == (kind == "user")
