"""``oprunner serve`` as a process, against the real broker and Postgres, fed by a plain
aiokafka producer sending raw CloudEvents JSON."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support import (
    Reader,
    Topics,
    auth,
    caused,
    cloudevent,
    ledger_check,
    produce,
    seed_ledger,
    token,
)


@pytest.fixture
async def ledger(clean_db: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    await seed_ledger(clean_db, [(f"acc-{i}", "alice", "t1") for i in range(50)] + [("bobs", "bob", "t1")])
    yield clean_db


@pytest.fixture
def serve(topics: Topics, database_url: str, serving: Any) -> Any:
    """``serve(**OPRUNNER_settings)`` starts one more process on this test's topics."""
    return lambda **extra: serving(topics, database_url, **extra)


def credit(account: str, amount: str = "1", **ext: Any) -> bytes:
    return cloudevent("ledger.credit", {"accountId": account, "amount": amount, **ext.pop("data", {})}, **ext)


async def effects(db: asyncpg.Pool) -> dict[str, int]:
    rows = await db.fetch("SELECT idempotency_key, count(*) AS n FROM ledger_effects GROUP BY 1")
    return {r["idempotency_key"]: r["n"] for r in rows}


async def test_one_command_gives_one_result_and_one_audit(
    serve: Any, topics: Topics, kafka_bootstrap: str, ledger: asyncpg.Pool
) -> None:
    serve()
    await produce(
        kafka_bootstrap,
        topics.commands,
        [(b"acc-1", credit("acc-1", "2.5", id="cmd-1", correlationid="corr-1"), auth())],
    )
    async with (
        Reader(kafka_bootstrap, topics.results) as results,
        Reader(kafka_bootstrap, topics.audit) as audit,
    ):
        await results.until(lambda m: len(m) >= 1)
        await audit.until(lambda m: len(m) >= 1)
        [result], [event] = results.events(), audit.events()
    assert result["type"] == "ledger.credit.result"
    assert result["causationid"] == "cmd-1" and result["correlationid"] == "corr-1"
    assert result["data"] == {"status": "succeeded", "output": {"accountId": "acc-1", "balance": "2.5"}}
    assert event["type"] == "oprunner.audit" and event["causationid"] == "cmd-1"
    assert event["data"]["actor"]["id"] == "alice" and event["data"]["status"] == "succeeded"
    assert results.messages[0].key == b"acc-1"
    assert await effects(ledger) == {"cmd-1": 1}


def _by_cause(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        grouped.setdefault(event["causationid"], []).append(event)
    return grouped


async def test_redelivered_message_runs_once_and_every_delivery_is_answered(
    serve: Any, topics: Topics, kafka_bootstrap: str, ledger: asyncpg.Pool
) -> None:
    serve()
    message = (b"acc-2", credit("acc-2", id="dup-1"), auth())
    await produce(kafka_bootstrap, topics.commands, [message, message, message])
    async with Reader(kafka_bootstrap, topics.results) as results:
        await results.until(lambda m: len(m) >= 3)
    events = results.events()
    assert [e["data"]["status"] for e in events] == ["succeeded"] * 3
    assert all(e["data"] == events[0]["data"] for e in events)
    assert await effects(ledger) == {"dup-1": 1}


async def test_malformed_bytes_go_to_the_dlq_and_the_next_command_runs(
    serve: Any, topics: Topics, kafka_bootstrap: str, ledger: asyncpg.Pool
) -> None:
    serve()
    await produce(
        kafka_bootstrap,
        topics.commands,
        [
            (b"acc-3", b"\xff\x00not json", auth()),
            (b"acc-3", b'{"specversion": "1.0"}', []),
            (b"acc-3", credit("acc-3", id="after-bad"), auth()),
        ],
    )
    async with Reader(kafka_bootstrap, topics.dlq) as dlq, Reader(kafka_bootstrap, topics.results) as results:
        await dlq.until(lambda m: len(m) >= 2)
        await results.until(lambda m: len(m) >= 1)
    reasons = [dict(m.headers)["dlq-reason"].decode() for m in dlq.messages]
    assert reasons[0].startswith("not JSON") and reasons[1] == "missing 'data'"
    assert dlq.messages[0].value == b"\xff\x00not json"
    assert "authorization" not in dict(dlq.messages[0].headers)  # no credential leaks to the DLQ
    assert results.events()[0]["causationid"] == "after-bad"
    assert await effects(ledger) == {"after-bad": 1}
    audited = await ledger.fetchval("SELECT count(*) FROM oprunner_audit WHERE data->>'error' = 'MALFORMED'")
    assert audited == 2


async def test_transient_failures_are_retried_then_succeed(
    serve: Any, topics: Topics, kafka_bootstrap: str, ledger: asyncpg.Pool
) -> None:
    serve()
    await produce(
        kafka_bootstrap,
        topics.commands,
        [(b"acc-4", credit("acc-4", id="flaky-1", data={"flaky": 2}), auth())],
    )
    async with Reader(kafka_bootstrap, topics.audit) as audit:
        await audit.until(lambda m: len(m) >= 1)
    event = audit.events()[0]["data"]
    assert event["status"] == "succeeded" and event["attempt"] == 3
    assert await effects(ledger) == {"flaky-1": 1}


async def test_rejected_and_denied_commands_are_answered(
    serve: Any, topics: Topics, kafka_bootstrap: str, ledger: asyncpg.Pool
) -> None:
    serve()
    await produce(
        kafka_bootstrap,
        topics.commands,
        [
            (b"acc-5", credit("acc-5", "-1", id="bad-amount"), auth()),
            (b"bobs", credit("bobs", id="not-yours"), auth()),
            (b"acc-5", credit("acc-5", id="no-token"), []),
            (b"acc-5", cloudevent("ledger.nope", {}, id="unknown-op"), auth()),
        ],
    )
    async with Reader(kafka_bootstrap, topics.results) as results:
        await results.until(lambda m: len(m) >= 4)
    got = {e["causationid"]: (e["data"]["status"], e["data"]["error"]["code"]) for e in results.events()}
    assert got == {
        "bad-amount": ("rejected", "INVALID_INPUT"),
        "not-yours": ("denied", "FORBIDDEN"),
        "no-token": ("denied", "UNAUTHENTICATED"),
        "unknown-op": ("rejected", "UNKNOWN_OPERATION"),
    }
    assert await effects(ledger) == {}


async def test_sigterm_drains_and_exits_zero(
    serve: Any, topics: Topics, kafka_bootstrap: str, ledger: asyncpg.Pool
) -> None:
    proc = serve()
    batch = [(f"acc-{i % 50}".encode(), credit(f"acc-{i % 50}", id=f"term-{i}"), auth()) for i in range(300)]
    await produce(kafka_bootstrap, topics.commands, batch)
    async with Reader(kafka_bootstrap, topics.results) as results:
        await results.until(lambda m: len(m) >= 20)
        proc.signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    # whatever it finished has a durable effect exactly once; nothing it started was left half-done
    done = await effects(ledger)
    assert all(n == 1 for n in done.values())
    runs = await ledger.fetch("SELECT status FROM oprunner_runs WHERE status <> 'completed'")
    assert runs == []


def _stream(
    prefix: str, n: int, accounts: int = 50
) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    headers = auth()
    return [
        (f"acc-{i % accounts}".encode(), credit(f"acc-{i % accounts}", id=f"{prefix}-{i}"), headers)
        for i in range(n)
    ]


@pytest.mark.parametrize("app", ["registry", "batched"])
async def test_two_processes_in_one_group_run_each_effect_once(
    serve: Any, topics: Topics, kafka_bootstrap: str, ledger: asyncpg.Pool, app: str
) -> None:
    first, second = serve(app=f"tests.apps.ledger:{app}"), serve(app=f"tests.apps.ledger:{app}")
    messages = _stream("pair", 1000)
    messages[500] = (b"acc-0", credit("acc-0", "13", id="pair-500"), auth())  # batch form raises
    messages[501] = (b"acc-1", credit("acc-1", id="pair-501", data={"flaky": 1}), auth())
    await produce(kafka_bootstrap, topics.commands, messages)
    ids = {f"pair-{i}" for i in range(1000)}
    async with Reader(kafka_bootstrap, topics.results) as results:
        await results.until(lambda m: caused(m) >= ids, timeout=120)
    await ledger_check(ledger, results, ids, total=1000 + 12)  # pair-500 credits 13
    assert first.proc.poll() is None and second.proc.poll() is None


@pytest.mark.sigkills_a_member
async def test_sigkill_mid_stream_then_restart_loses_and_doubles_nothing(
    serve: Any, topics: Topics, kafka_bootstrap: str, ledger: asyncpg.Pool
) -> None:
    proc = serve()
    messages = _stream("kill", 1000)
    await produce(kafka_bootstrap, topics.commands, messages)
    ids = {f"kill-{i}" for i in range(1000)}
    async with Reader(kafka_bootstrap, topics.results) as results:
        await results.until(lambda m: len(m) >= 150, timeout=60)
        proc.signal(signal.SIGKILL)
        proc.wait(10)
        serve()  # the replacement, same group: it picks up from the last committed offsets
        await results.until(lambda m: caused(m) >= ids, timeout=120)
    await ledger_check(ledger, results, ids)


@pytest.mark.sigkills_a_member
async def test_a_202_survives_the_process_that_gave_it(
    serve: Any, topics: Topics, kafka_bootstrap: str, ledger: asyncpg.Pool
) -> None:
    """``Prefer: respond-async`` answers 202 only once the command is written down: killed
    right after, the process's successor runs it, and GET says ``pending`` until then."""
    first = serve()
    headers = {"authorization": f"Bearer {token('alice', tenant='t1')}", "prefer": "respond-async"}
    body = {"accountId": "acc-3", "amount": "2", "delay": 5}  # still running when killed
    async with httpx.AsyncClient(timeout=30) as http:
        accepted = await http.post(f"{first.url}/ops/ledger.credit", json=body, headers=headers)
        assert accepted.status_code == 202, accepted.text
        location, command_id = accepted.headers["location"], accepted.json()["commandId"]
        first.signal(signal.SIGKILL)
        first.wait()
        second = serve()
        seen = await http.get(f"{second.url}{location}", headers={"authorization": headers["authorization"]})
        assert seen.status_code == 200 and seen.json()["status"] in ("pending", "running"), seen.text
        async with Reader(kafka_bootstrap, topics.results) as results:
            await results.until(lambda ms: command_id in caused(ms), timeout=90)
        done = await http.get(f"{second.url}{location}", headers={"authorization": headers["authorization"]})
        assert done.json()["status"] == "succeeded", done.text
    assert (await effects(ledger)) == {command_id: 1}
    assert await ledger.fetchval("SELECT count(*) FROM oprunner_accepted") == 0
