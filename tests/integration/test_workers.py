"""``oprunner serve --workers N``: N workers in one consumer group behind one HTTP port, under
a supervisor that restarts a worker that dies and drains them all on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from infra.devservices import wait_until
from tests.support import Reader, Topics, auth, caused, cloudevent, ledger_check, produce, seed_ledger, token


@pytest.fixture
async def ledger(clean_db: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    await seed_ledger(clean_db, [(f"acc-{i}", "alice", "t1") for i in range(50)])
    yield clean_db


@pytest.fixture
def serve(topics: Topics, database_url: str, serving: Any) -> Any:
    return lambda **extra: serving(topics, database_url, **extra)


def stream(prefix: str, n: int) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    headers = auth()
    return [
        (
            f"acc-{i % 50}".encode(),
            cloudevent("ledger.credit", {"accountId": f"acc-{i % 50}", "amount": "1"}, id=f"{prefix}-{i}"),
            headers,
        )
        for i in range(n)
    ]


def worker_pids(proc: Any) -> dict[int, int]:
    """Worker number -> its latest pid, from the supervisor's log."""
    found = re.findall(r"worker (\d+) started \(pid (\d+)\)", proc.output())
    return {int(n): int(pid) for n, pid in found}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead too
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


async def test_two_workers_share_the_group_and_one_port_and_drain_on_sigterm(
    serve: Any, topics: Topics, kafka_bootstrap: str, ledger: asyncpg.Pool
) -> None:
    proc = serve(workers=2)
    pids = worker_pids(proc)
    assert sorted(pids) == [0, 1] and proc.proc.pid not in pids.values()
    ids = {f"w-{i}" for i in range(600)}
    await produce(kafka_bootstrap, topics.commands, stream("w", 600))
    headers = {"authorization": f"Bearer {token('alice', tenant='t1')}"}
    async with httpx.AsyncClient(timeout=30) as http:  # the one port answers, whichever worker takes it
        for i in range(6):
            body = {"accountId": f"acc-{i}", "amount": "1"}
            answer = await http.post(f"{proc.url}/ops/ledger.credit", json=body, headers=headers)
            assert answer.status_code == 200 and answer.json()["status"] == "succeeded", answer.text
    async with Reader(kafka_bootstrap, topics.results) as results:
        await results.until(lambda m: caused(m) >= ids, timeout=120)
    await ledger_check(ledger, results, ids | {r["command_id"] for r in await _http_runs(ledger)})
    async with httpx.AsyncClient(timeout=30) as http:  # every scrape counts both workers' commands
        for _ in range(4):
            scraped = (await http.get(f"{proc.url}/metrics")).text
            succeeded = r'oprunner_commands_total\{op="ledger.credit",status="succeeded"\} (\S+)'
            done = re.search(succeeded, scraped)
            assert done is not None and float(done.group(1)) == 606, scraped[-3000:]
    proc.signal(signal.SIGTERM)
    assert proc.wait(90) == 0
    assert not any(alive(pid) for pid in pids.values())
    assert "stopped 2 workers (0 restarts)" in proc.output()


async def _http_runs(db: asyncpg.Pool) -> list[Any]:
    return await db.fetch("SELECT command_id FROM oprunner_runs WHERE command_id NOT LIKE 'w-%'")


@pytest.mark.sigkills_a_member
async def test_a_worker_that_dies_is_started_again_and_nothing_is_lost_or_doubled(
    serve: Any, topics: Topics, kafka_bootstrap: str, ledger: asyncpg.Pool
) -> None:
    proc = serve(workers=2)
    victim = worker_pids(proc)[1]
    messages = stream("k", 1000)
    ids = {f"k-{i}" for i in range(1000)}
    await produce(kafka_bootstrap, topics.commands, messages[:500])
    async with Reader(kafka_bootstrap, topics.results) as results:
        await results.until(lambda m: len(m) >= 100, timeout=60)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: worker_pids(proc)[1] != victim, timeout=30, what="worker 1 started again")
        proc.wait_serving(count=3, timeout=60)
        await produce(kafka_bootstrap, topics.commands, messages[500:])
        await results.until(lambda m: caused(m) >= ids, timeout=120)
    await ledger_check(ledger, results, ids)
    assert f"worker 1 (pid {victim}) died (-9)" in proc.output()
    assert proc.proc.poll() is None


async def test_a_worker_that_cannot_start_stops_the_supervisor(serve: Any) -> None:
    proc = serve(workers=2, wait=False, OPRUNNER_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    assert proc.wait(90) != 0
    assert "before serving; stopping" in proc.output()
    assert not any(alive(pid) for pid in worker_pids(proc).values())


async def test_workers_outlive_no_supervisor_killed_by_sigkill(serve: Any, ledger: asyncpg.Pool) -> None:
    proc = serve(workers=2)
    pids = worker_pids(proc)
    proc.signal(signal.SIGKILL)
    proc.wait(10)
    wait_until(
        lambda: not any(alive(pid) for pid in pids.values()),
        timeout=60,
        what="workers gone after their supervisor",
    )
