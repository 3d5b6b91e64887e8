"""Batches on the Postgres store, with every handler call logged outside the database.

A batch shares one transaction; each command has a savepoint of its own in it, so one
command's failure undoes only its writes and no batch-mate runs again. Claims are renewed
for as long as the batch runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from infra.postgres import PostgresStore
from runner import Executor, JwtAuthenticator, OperationRegistry, RetryableError, command, install_op
from tests.apps import ledger
from tests.support import SECRET, seed_ledger, token


@dataclass
class Calls:
    """Every handler call, by idempotency key and attempt: a log no rollback touches."""

    log: list[tuple[str, int]] = field(default_factory=list)
    delay: float = 0.0

    def of(self, key: str) -> list[int]:
        return [attempt for k, attempt in self.log if k == key]


def logged_ledger(calls: Calls) -> OperationRegistry:
    async def credit(value: ledger.CreditInput, ctx: Any) -> Any:
        calls.log.append((ctx.idempotency_key, ctx.attempt))
        if calls.delay:
            await asyncio.sleep(calls.delay)
        if value.fail == "RETRY":
            raise RetryableError("always")
        return await ledger.credit(value, ctx)

    registry = OperationRegistry()
    install_op(registry, ledger.Credit, credit)
    registry.add_resource("account", ledger.load_account)
    return registry


async def _quick(_: float) -> None:
    return None


@pytest.fixture
async def accounts(clean_db: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    await seed_ledger(clean_db, [(f"acc-{i}", "alice", "t1") for i in range(40)])
    yield clean_db


def credit(n: int, **data: Any) -> tuple[Any, str]:
    cmd = command("ledger.credit", {"accountId": f"acc-{n}", "amount": "1", **data}, id=f"k-{n}")
    return cmd, token("alice", tenant="t1")


async def test_one_failure_in_a_batch_of_31_runs_every_handler_once(accounts: asyncpg.Pool) -> None:
    calls = Calls()
    executor = Executor(
        logged_ledger(calls), PostgresStore(accounts), JwtAuthenticator(secret=SECRET), sleep=_quick
    )
    items = [credit(n) for n in range(31)]
    items[7] = credit(7, fail="UNLUCKY")  # a domain failure after its writes
    items[11] = credit(11, flaky=1)  # fails transiently once
    items[19] = credit(19, fail="RETRY")  # fails transiently every time
    outcomes = await executor.execute_many(items)

    got = {o.result["causationid"]: (o.status, o.error_code, o.audit["data"]["attempt"]) for o in outcomes}
    assert got.pop("k-7") == ("failed", "UNLUCKY", 1)
    assert got.pop("k-11") == ("succeeded", None, 2)
    assert got.pop("k-19") == ("failed", "RETRIES_EXHAUSTED", 3)
    assert set(got.values()) == {("succeeded", None, 1)} and len(got) == 28
    assert calls.of("k-7") == [1] and calls.of("k-11") == [1, 2] and calls.of("k-19") == [1, 2, 3]
    assert all(calls.of(f"k-{n}") == [1] for n in range(31) if n not in (7, 11, 19))
    effects = dict(await accounts.fetch("SELECT idempotency_key, count(*) FROM ledger_effects GROUP BY 1"))
    assert "k-7" not in effects and "k-19" not in effects  # their writes rolled back with them
    assert set(effects.values()) == {1} and len(effects) == 29

    again = await executor.execute_many(items)  # a redelivery runs nothing
    assert all(o.replayed for o in again) and len(calls.log) == 31 + 1 + 2


async def test_a_batch_longer_than_its_leases_keeps_its_claims(accounts: asyncpg.Pool) -> None:
    """Handlers take 3x the lease; a duplicate of one command arrives (as over HTTP) after the
    lease would have run out: the handler still runs once, the duplicate gets its result."""
    calls = Calls(delay=0.5)
    lease = 0.5  # the batch of 3 runs 1.5 s: three leases
    store = PostgresStore(accounts)
    executor = Executor(
        logged_ledger(calls), store, JwtAuthenticator(secret=SECRET), sleep=_quick, lease_seconds=lease
    )
    other = Executor(  # a second worker, as a second process would be
        logged_ledger(calls), store, JwtAuthenticator(secret=SECRET), sleep=_quick, lease_seconds=lease
    )
    items = [credit(n) for n in range(3)]
    batch = asyncio.create_task(executor.execute_many(items))
    deadline = asyncio.get_running_loop().time() + 10
    while len(calls.log) < 3:  # the batch reached its last handler: the first lease is long gone
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    duplicate = await other.execute(command("ledger.credit", items[0][0].data, id="k-0"), token=items[0][1])
    outcomes = await batch
    assert [o.status for o in outcomes] == ["succeeded"] * 3
    assert duplicate.replayed and duplicate.output == outcomes[0].output
    assert calls.of("k-0") == [1]
    assert await accounts.fetchval("SELECT count(*) FROM ledger_effects WHERE idempotency_key = 'k-0'") == 1


async def test_an_output_no_store_can_hold_fails_only_its_command(accounts: asyncpg.Pool) -> None:
    """An output holding U+0000 (Postgres refuses it) fails its command as OUTPUT_INVALID,
    in its savepoint: its writes undone, its batch-mates committed, each handler run once."""
    calls = Calls()
    executor = Executor(
        logged_ledger(calls), PostgresStore(accounts), JwtAuthenticator(secret=SECRET), sleep=_quick
    )
    items = [credit(n) for n in range(5)]
    items[2] = credit(2, fail="NUL_OUTPUT")
    outcomes = await executor.execute_many(items)
    assert [(o.status, o.error_code) for o in outcomes] == [("succeeded", None)] * 2 + [
        ("failed", "OUTPUT_INVALID")
    ] + [("succeeded", None)] * 2
    effects = dict(await accounts.fetch("SELECT idempotency_key, count(*) FROM ledger_effects GROUP BY 1"))
    assert effects == {"k-0": 1, "k-1": 1, "k-3": 1, "k-4": 1}
    assert len(calls.log) == 5
