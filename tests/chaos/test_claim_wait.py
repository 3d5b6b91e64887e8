"""SIGKILL while a duplicate waits on another process's claim (DESIGN.md, step 5: the claim is
taken in the batch's transaction, and a duplicate held by another live transaction waits on
its lock).

Two ``serve`` processes share the group. The original command lands on a partition of one
(the holder), whose handler keeps its batch's transaction open for 3 s; the duplicate (the
same idempotency key, data and caller under another command id, keyed onto the other
process's partition) makes the other (the waiter) block on the claim's lock (a transaction
advisory lock on the run key: the holder's run row is written only with its outcome). Then one of
them is killed: the holder (its claim dies with its transaction, and the waiter takes the key
itself) or the waiter (its duplicate is redelivered to the holder, which replays). Either way
the effect happens once and both commands get a result."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from infra.devservices import Postgres
from tests.support import Reader, ServeProcess, Topics, auth, caused, cloudevent, produce

pytestmark = pytest.mark.sigkills_a_member  # the survivor needs the dead one's session expired


def assigned(serve: ServeProcess) -> set[int]:
    """The partitions the process's last rebalance gave it, from its log."""
    lines = re.findall(r"assigned \[([^\]]*)\]", serve.output())
    return {int(p) for p in re.findall(r"', (\d+)\)", lines[-1])} if lines else set()


def key_on(partitions: set[int], count: int = 4) -> bytes:
    """A Kafka key the default partitioner puts on one of ``partitions``."""
    partitioner = DefaultPartitioner()
    every = list(range(count))
    return next(key for i in range(1000) if partitioner(key := f"k-{i}".encode(), every, every) in partitions)


async def until(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := await check()):
        assert time.monotonic() < deadline, f"not seen in {timeout}s: {what}"
        await asyncio.sleep(0.05)
    return found


@pytest.mark.parametrize("killed", ["holder", "waiter"])
async def test_a_sigkill_while_a_duplicate_waits_on_a_claim_leaves_one_effect_and_two_answers(
    kafka_bootstrap: str,
    own_postgres: tuple[Postgres, asyncpg.Pool],
    serving: Any,
    tmp_path: Path,
    killed: str,
) -> None:
    server, db = own_postgres
    topics = Topics()
    await topics.create(kafka_bootstrap)
    hold = tmp_path / "holding"
    env = {"OPRUNNER_TEST_CRASH_AT": "hold", "OPRUNNER_TEST_HOLD_FILE": str(hold)}
    first = serving(topics, server.dsn, app="tests.apps.crashing:registry", **env)
    second = serving(topics, server.dsn, app="tests.apps.crashing:registry", **env)

    async def split() -> bool:  # the group settled: two partitions each
        mine, theirs = assigned(first), assigned(second)
        return len(mine) == 2 and len(theirs) == 2 and not mine & theirs

    await until(split, "the group's partitions split between the two")
    # a first command on every partition: a partition's first fetch after its assignment
    # takes committed claims (its commands may be redeliveries), later ones claim in the
    # batch's transaction, which is the path under test
    warm = [
        (
            key_on({p}),
            cloudevent("ledger.credit", {"accountId": f"acc-{p}", "amount": "1"}, id=f"warm-{p}"),
            auth(),
        )
        for p in range(4)
    ]
    await produce(kafka_bootstrap, topics.commands, warm)
    async with Reader(kafka_bootstrap, topics.results) as results:
        await results.until(lambda ms: caused(ms) >= {f"warm-{p}" for p in range(4)}, timeout=60)
    data = {"accountId": "acc-7", "amount": "77"}
    command = {"idempotencykey": "claim-wait-1"}
    original = cloudevent("ledger.credit", data, id="original", **command)
    duplicate = cloudevent("ledger.credit", data, id="duplicate", **command)
    await produce(kafka_bootstrap, topics.commands, [(key_on(assigned(first)), original, auth())])

    async def holding() -> bool:
        return hold.exists()

    await until(holding, "the original's handler holding its transaction open")
    await produce(kafka_bootstrap, topics.commands, [(key_on(assigned(second)), duplicate, auth())])

    async def waiting() -> bool:
        return bool(
            await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND wait_event = 'advisory' AND query LIKE '%pg_advisory_xact_lock%'"
            )
        )

    await until(waiting, "the duplicate's claim waiting on the original's claim lock", timeout=2.5)
    (first if killed == "holder" else second).stop()  # SIGKILL
    async with Reader(kafka_bootstrap, topics.results) as results:
        await results.until(lambda ms: caused(ms) >= {"original", "duplicate"}, timeout=120)
    effects = await db.fetch("SELECT idempotency_key FROM ledger_effects WHERE account_id = 'acc-7'")
    assert [r["idempotency_key"] for r in effects] == ["claim-wait-1"]  # once
    assert await db.fetchval("SELECT balance FROM ledger_accounts WHERE id = 'acc-7'") == 77
    ours = [e for e in results.events() if not e["causationid"].startswith("warm-")]
    answers = {(e["causationid"], e["data"]["status"]) for e in ours}
    assert answers == {("original", "succeeded"), ("duplicate", "succeeded")}
    outputs = {orjson.dumps(e["data"].get("output"), option=orjson.OPT_SORT_KEYS) for e in ours}
    assert len(outputs) == 1  # the duplicate's answer is the original's outcome, replayed
