"""SIGKILL at each gap the offset-as-outbox design opens (DESIGN.md, steps 5-9), counted from
outside the database: the events on the topics and the ledger's rows.

``tests.apps.crashing`` kills its own ``serve`` at the gap; a plain ``serve`` of the ledger
then takes the partitions over. Each test ends with effects once and every result and audit
event published at least once, with the id the run stored."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
import pytest

from infra.devservices import Postgres
from tests.support import Reader, Topics, auth, caused, cloudevent, ledger_check, produce

pytestmark = pytest.mark.sigkills_a_member  # the next serve needs the dead one's session expired


Message = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


def credits(prefix: str, n: int, amount: str = "1") -> list[Message]:
    return [
        (
            f"acc-{i % 20}".encode(),
            cloudevent("ledger.credit", {"accountId": f"acc-{i % 20}", "amount": amount}, id=f"{prefix}-{i}"),
            auth(),
        )
        for i in range(n)
    ]


async def stored_ids(db: asyncpg.Pool) -> dict[str, tuple[str, str]]:
    """Each completed run's command id -> the ids of the result and audit events it stored."""
    rows = await db.fetch(
        "SELECT command_id, result_event, audit_event FROM oprunner_runs WHERE result_event IS NOT NULL"
    )
    return {
        r["command_id"]: (orjson.loads(r["result_event"])["id"], orjson.loads(r["audit_event"])["id"])
        for r in rows
    }


def published(messages: list[Any]) -> dict[str, set[str]]:
    """Command id -> the ids of the events published for it."""
    out: dict[str, set[str]] = {}
    for m in messages:
        event = orjson.loads(m.value)
        out.setdefault(event["causationid"], set()).add(event["id"])
    return out


@pytest.mark.parametrize("gap", ["after-commit", "after-publish"])
async def test_a_sigkill_at_a_gap_loses_no_event_and_doubles_no_effect(
    kafka_bootstrap: str, own_postgres: tuple[Postgres, asyncpg.Pool], serving: Any, gap: str
) -> None:
    server, db = own_postgres
    topics = Topics()
    await topics.create(kafka_bootstrap)
    ids = {f"g-{i}" for i in range(400)}
    await produce(kafka_bootstrap, topics.commands, credits("g", 400))
    crashing = serving(
        topics,
        server.dsn,
        app="tests.apps.crashing:registry",
        OPRUNNER_TEST_CRASH_AT=gap,
        OPRUNNER_BATCH_SIZE="16",  # several batches, so the crash comes after some went through
        wait=False,
    )
    assert crashing.wait(60) == -9, crashing.output()[-2000:]
    at_crash = await stored_ids(db)
    assert at_crash and len(at_crash) < len(ids)  # it died mid-stream, some outcomes committed
    serving(topics, server.dsn)
    async with (
        Reader(kafka_bootstrap, topics.results) as results,
        Reader(kafka_bootstrap, topics.audit) as audit,
    ):
        await results.until(lambda ms: caused(ms) >= ids, timeout=180)
        await audit.until(lambda ms: set(published(ms)) >= ids, timeout=60)
    await ledger_check(db, results, ids)
    stored = await stored_ids(db)
    assert {k: v for k, v in stored.items() if k in at_crash} == at_crash  # nothing stored anew
    result_ids, audit_ids = published(results.messages), published(audit.messages)
    for command in ids:  # at least once, always with one id: the one its run stored, if it did
        assert len(result_ids[command]) == 1 and len(audit_ids[command]) == 1, command
        if command in stored:
            assert (*result_ids[command], *audit_ids[command]) == stored[command], command


async def test_a_handler_that_kills_serve_every_time_is_parked_and_spares_its_batch(
    kafka_bootstrap: str, own_postgres: tuple[Postgres, asyncpg.Pool], serving: Any
) -> None:
    """The claim in a batch's transaction dies with the process, so only a committed claim
    can count such attempts: past the budget the command is dead-lettered unrun, and the
    commands fetched with it, claimed with it the first time, still run once."""
    server, db = own_postgres
    topics = Topics()
    await topics.create(kafka_bootstrap)
    killer = credits("kill", 1, amount="66")
    others = credits("ok", 30)
    await produce(kafka_bootstrap, topics.commands, [*killer, *others])
    env = {"OPRUNNER_TEST_CRASH_AT": "in-handler", "OPRUNNER_PARK_AFTER_ATTEMPTS": "2"}
    ids = {f"ok-{i}" for i in range(30)}
    deaths = 0
    async with (
        Reader(kafka_bootstrap, topics.results) as results,
        Reader(kafka_bootstrap, topics.dlq) as dlq,
    ):
        while not dlq.messages:  # each serve runs until the killer kills it, or it is parked
            proc = serving(topics, server.dsn, app="tests.apps.crashing:registry", wait=False, **env)
            assert proc.proc is not None
            await dlq.until(lambda ms, p=proc.proc: bool(ms) or p.poll() is not None, timeout=90)
            if proc.proc.poll() == -9:
                deaths += 1
            assert deaths <= 3, "redelivered past its budget"
        await results.until(lambda ms: caused(ms) >= ids, timeout=120)
    headers = dict(dlq.messages[0].headers)
    assert headers["dlq-code"] == b"RETRIES_EXHAUSTED"
    assert b"CrashedAttempts" in headers["dlq-last-error"]
    assert deaths == 2  # the budget: two attempts died, the third claim parked it
    await ledger_check(db, results, ids)  # the others: each once, none parked with the killer
    assert caused(results.messages) == ids  # the killer got no result: it is on the DLQ
