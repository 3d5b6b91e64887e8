"""Metrics, traces and logs of a running ``serve``, as an operator would look at them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.support import Reader, ServeProcess, Topics, auth, cloudevent, produce, seed_ledger

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
async def ledger(clean_db: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    await seed_ledger(clean_db, [(f"o{i}", "alice", "t1") for i in range(20)])
    yield clean_db


@pytest.fixture
def server(topics: Topics, database_url: str, ledger: Any, serving: Any) -> tuple[ServeProcess, Topics]:
    return serving(topics, database_url), topics


async def test_metrics_traces_and_logs(server: tuple[ServeProcess, Topics], kafka_bootstrap: str) -> None:
    proc, topics = server
    headers = auth()
    token = headers[0][1].decode().split()[1]
    messages = [
        (
            f"o{i % 20}".encode(),
            cloudevent("ledger.credit", {"accountId": f"o{i % 20}", "amount": "1"}, id=f"m-{i}"),
            headers,
        )
        for i in range(60)
    ]
    messages += [
        (
            b"o1",
            cloudevent("ledger.credit", {"accountId": "o1", "amount": "1", "flaky": 1}, id="flaky"),
            headers,
        ),
        (b"o2", b"not json", headers),
        (
            b"o3",
            cloudevent("ledger.credit", {"accountId": "o3", "amount": "1"}, id="traced"),
            [*headers, ("traceparent", TRACEPARENT.encode())],
        ),
    ]
    await produce(kafka_bootstrap, topics.commands, messages)
    async with Reader(kafka_bootstrap, topics.results) as results:
        await results.until(lambda ms: len({orjson.loads(m.value)["causationid"] for m in ms}) >= 62)

    # a trace runs from the command's header through its result event
    [traced] = [m for m in results.messages if orjson.loads(m.value)["causationid"] == "traced"]
    event = orjson.loads(traced.value)
    header = dict(traced.headers)["traceparent"].decode()
    assert event["traceparent"] == header
    assert header.split("-")[1] == TRACE_ID  # the same trace ...
    assert header.split("-")[2] != "00f067aa0ba902b7"  # ... continued by the command's own span

    async with httpx.AsyncClient(base_url=proc.url) as http:
        deadline = time.monotonic() + 20
        while True:  # all done: every partition's lag and the oldest unfinished age come to 0
            scraped = (await http.get("/metrics")).text
            lags = [line for line in scraped.splitlines() if line.startswith("oprunner_consumer_lag{")]
            settled = len(lags) == 4 and all(line.endswith(" 0.0") for line in lags)
            if settled and "oprunner_oldest_unfinished_seconds 0.0" in scraped:
                break
            assert time.monotonic() < deadline, lags
            await asyncio.sleep(0.1)
    assert all(f'topic="{topics.commands}"' in line for line in lags)
    assert 'oprunner_commands_total{op="ledger.credit",status="succeeded"} 62.0' in scraped
    for name in (
        "oprunner_handler_seconds_bucket",
        "oprunner_in_flight",
        "oprunner_outbox_backlog",
        'oprunner_retries_total{op="ledger.credit"} 1.0',
        "oprunner_dead_letters_total 1.0",
    ):
        assert name in scraped, name

    lines = [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    [retry] = [line for line in lines if "failed transiently" in line["message"]]
    assert (
        retry["command_id"] == "flaky"
        and retry["op"] == "ledger.credit"
        and retry["correlation_id"] == "flaky"
    )
    assert token not in proc.output()
