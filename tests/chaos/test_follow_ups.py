"""Follow-up commands across crashes: a capture's receipt is lost by no crash and doubled by
no second publication.

``ledger.pay`` credits an account and sends ``ledger.receipt`` (``ctx.send``); both write an
effect row keyed by their idempotency key, so "once" is a count.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import orjson
import pytest

from infra.postgres import PostgresStore
from runner import Executor, JwtAuthenticator
from runner.auth import CommandSigner, command_key
from tests.apps.ledger import registry
from tests.support import SECRET, Reader, Topics, auth, cloudevent, produce, seed_ledger


def _by_type(messages: list[Any], type_: str) -> list[dict[str, Any]]:
    events = [orjson.loads(m.value) for m in messages]
    return [e for e in events if e["type"] == type_]


async def _effects(db: asyncpg.Pool) -> dict[str, int]:
    rows = await db.fetch("SELECT idempotency_key, count(*) AS n FROM ledger_effects GROUP BY 1")
    return {r["idempotency_key"]: r["n"] for r in rows}


async def _until_running(db: asyncpg.Pool, op: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await db.fetchval("SELECT count(*) FROM oprunner_runs WHERE op = $1", op):
        assert time.monotonic() < deadline, f"no {op} run in {timeout} s"
        await asyncio.sleep(0.05)  # a poll interval, not a wait for something to happen


@pytest.mark.sigkills_a_member
async def test_a_crash_while_the_follow_up_runs(
    topics: Topics, kafka_bootstrap: str, database_url: str, clean_db: asyncpg.Pool, serving: Any
) -> None:
    await seed_ledger(clean_db, [("a1", "alice", "t1")])
    server = serving(topics, database_url)
    pay = cloudevent("ledger.pay", {"accountId": "a1", "amount": "5", "receiptDelay": 3}, id="pay-1")
    await produce(kafka_bootstrap, topics.commands, [(b"a1", pay, auth())])
    await _until_running(clean_db, "ledger.receipt")  # the receipt is in its handler now
    server.signal(9)
    server.wait(10)
    serving(topics, database_url)
    async with Reader(kafka_bootstrap, topics.results) as results:
        await results.until(lambda ms: len(_by_type(ms, "ledger.receipt.result")) >= 1, timeout=90)
    async with Reader(kafka_bootstrap, topics.commands) as commands:
        await commands.until(lambda ms: len(_by_type(ms, "ledger.receipt")) >= 1)
    (child,) = {e["id"]: e for e in _by_type(commands.messages, "ledger.receipt")}.values()
    assert child["causationid"] == "pay-1" and child["correlationid"] == "pay-1"
    # the pay's offset may not have been committed before the kill: then it is read again and
    # its stored result published again, the same result (a replay runs nothing)
    paid = _by_type(results.messages, "ledger.pay.result")
    assert all(p["data"] == paid[0]["data"] for p in paid)
    assert paid[0]["data"]["status"] == "succeeded"
    receipts = _by_type(results.messages, "ledger.receipt.result")
    assert {r["causationid"] for r in receipts} == {child["id"]}
    assert all(r["data"] == receipts[0]["data"] for r in receipts)
    assert receipts[0]["data"]["status"] == "succeeded"

    # The relay publishing it again (a crash between its send and its delete) runs nothing.
    raw = next(m for m in commands.messages if orjson.loads(m.value)["type"] == "ledger.receipt")
    await produce(kafka_bootstrap, topics.commands, [(raw.key, raw.value, list(raw.headers))])
    async with Reader(kafka_bootstrap, topics.results) as again:
        await again.until(lambda ms: len(_by_type(ms, "ledger.receipt.result")) >= len(receipts) + 1)
    effects = await _effects(clean_db)
    assert sorted(effects.values()) == [1, 1] and child["idempotencykey"] in effects, effects
    assert await clean_db.fetchval("SELECT balance FROM ledger_accounts WHERE id = 'a1'") == 5


async def test_committed_but_never_published_is_sent_by_the_relay(
    topics: Topics, kafka_bootstrap: str, database_url: str, clean_db: asyncpg.Pool, serving: Any
) -> None:
    """The process that ran the capture died after its commit, before publishing anything:
    its outbox holds the result, the audit and the follow-up, and a ``serve``'s relay sends them."""
    await seed_ledger(clean_db, [("a1", "alice", "t1")])
    key = command_key(SECRET, None)
    assert key is not None
    gone = Executor(
        registry,
        PostgresStore(clean_db),
        JwtAuthenticator(secret=SECRET, command_key=key),
        results_topic=topics.results,
        audit_topic=topics.audit,
        commands_topic=topics.commands,
        command_signer=CommandSigner(key, subject="x", ttl=600),
    )
    token = dict(auth())["authorization"].decode()
    outcome = await gone.execute(
        cloudevent("ledger.pay", {"accountId": "a1", "amount": "2"}, id="pay-2"), token=token
    )
    assert outcome.status == "succeeded" and len(outcome.outbox_ids) == 3  # nothing published
    serving(topics, database_url)
    async with Reader(kafka_bootstrap, topics.results) as results:
        await results.until(
            lambda ms: (
                {e["type"] for e in (orjson.loads(m.value) for m in ms)}
                >= {"ledger.pay.result", "ledger.receipt.result"}
            ),
            timeout=90,
        )
    (receipt,) = _by_type(results.messages, "ledger.receipt.result")
    assert receipt["data"]["status"] == "succeeded", receipt
    assert sorted((await _effects(clean_db)).values()) == [1, 1]
