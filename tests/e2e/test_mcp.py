"""``oprunner mcp``: the app's operations as MCP tools, driven by the ``mcp`` SDK's own client.

Over stdio (``OPRUNNER_MCP_TOKEN`` is the actor) and over streamable HTTP (each request's
bearer token is), against the real broker and Postgres. Every call is a command: it is
validated, authorized, claimed once per key, and its result and audit events are published.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx2
import orjson
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from infra.devservices import free_port
from infra.mcp import IDEMPOTENCY_META
from tests.support import Reader, Topics, seed_ledger, token

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.ledger:registry"


@pytest.fixture
async def accounts(clean_db: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    await seed_ledger(clean_db, [("a1", "alice", "t1"), ("b1", "bob", "t1")])
    yield clean_db


def _body(result: Any) -> dict[str, Any]:
    text = result.content[0].text
    body: dict[str, Any] = orjson.loads(text)
    return body


async def test_stdio_tools_list_and_call(
    topics: Topics, kafka_bootstrap: str, database_url: str, accounts: asyncpg.Pool
) -> None:
    env = topics.env(kafka_bootstrap, database_url, OPRUNNER_MCP_TOKEN=token("alice", tenant="t1"))
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "runner", "mcp", APP], env=env, cwd=str(ROOT)
    )
    async with Client(params, read_timeout_seconds=60) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert {"ledger.credit", "ledger.balance", "ledger.pay"} <= set(tools)
        credit, balance = tools["ledger.credit"], tools["ledger.balance"]
        assert credit.description and credit.description.startswith("Credit an account")
        assert set(credit.input_schema["required"]) == {"accountId", "amount"}
        assert credit.output_schema is not None and "balance" in credit.output_schema["properties"]
        assert balance.annotations is not None and balance.annotations.read_only_hint is True
        assert credit.annotations is not None and not credit.annotations.read_only_hint
        assert not credit.annotations.idempotent_hint and IDEMPOTENCY_META in credit.description

        ok = await client.call_tool("ledger.credit", {"accountId": "a1", "amount": "3"})
        assert not ok.is_error and ok.structured_content == {"accountId": "a1", "balance": "3"}
        read = await client.call_tool("ledger.balance", {"accountId": "a1"})
        assert not read.is_error and read.structured_content == {"accountId": "a1", "balance": "3"}

        # one key, sent twice (a client's retry on a new connection would send the same): once
        keyed = {IDEMPOTENCY_META: "mcp-retry-1"}
        first = await client.call_tool("ledger.credit", {"accountId": "a1", "amount": "2"}, meta=keyed)
        again = await client.call_tool("ledger.credit", {"accountId": "a1", "amount": "2"}, meta=keyed)
        assert first.structured_content == again.structured_content == {"accountId": "a1", "balance": "5"}
        conflict = await client.call_tool("ledger.credit", {"accountId": "a1", "amount": "9"}, meta=keyed)
        assert conflict.is_error and _body(conflict)["error"]["code"] == "IDEMPOTENCY_CONFLICT"

        # each bad call is a tool error naming its code, and is audited like any other outcome
        forbidden = await client.call_tool("ledger.credit", {"accountId": "b1", "amount": "1"})
        assert forbidden.is_error and _body(forbidden)["status"] == "denied"
        assert _body(forbidden)["error"]["code"] == "FORBIDDEN"
        invalid = await client.call_tool("ledger.credit", {"accountId": "a1", "amount": "-1"})
        body = _body(invalid)
        assert invalid.is_error and body["status"] == "rejected" and body["error"]["code"] == "INVALID_INPUT"
        assert "amount" in orjson.dumps(body["error"]).decode()
        missing = await client.call_tool("ledger.balance", {"accountId": "zz"})
        assert missing.is_error and _body(missing)["error"]["code"] in {"FORBIDDEN", "NOT_FOUND"}
        unknown = await client.call_tool("ledger.nope", {})
        assert unknown.is_error and _body(unknown)["error"]["code"] == "UNKNOWN_OPERATION"
        huge = await client.call_tool("ledger.credit", {"accountId": "a" * 1_100_000, "amount": "1"})
        assert huge.is_error and _body(huge)["error"]["code"] == "INVALID_COMMAND"  # past 1 MiB
        empty_key = await client.call_tool(
            "ledger.credit", {"accountId": "a1", "amount": "1"}, meta={IDEMPOTENCY_META: ""}
        )
        assert empty_key.is_error and _body(empty_key)["error"]["code"] == "INVALID_IDEMPOTENCY_KEY"

    rows = await accounts.fetch("SELECT idempotency_key FROM ledger_effects ORDER BY idempotency_key")
    assert [r["idempotency_key"] for r in rows].count("mcp-retry-1") == 1 and len(rows) == 2
    async with Reader(kafka_bootstrap, topics.results) as results:
        events = [orjson.loads(m.value) for m in await results.until(lambda m: len(m) >= 9)]
    statuses = sorted(e["data"]["status"] for e in events)
    assert statuses.count("succeeded") == 4 and "denied" in statuses and "rejected" in statuses
    async with Reader(kafka_bootstrap, topics.audit) as audit:
        entries = [orjson.loads(m.value) for m in await audit.until(lambda m: len(m) >= 9)]
    assert {e["data"]["actor"]["id"] for e in entries if e["data"].get("actor")} == {"alice"}


@pytest.fixture
def mcp_http(topics: Topics, kafka_bootstrap: str, database_url: str, accounts: Any) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, **topics.env(kafka_bootstrap, database_url, OPRUNNER_MCP_PORT=str(port))}
    log = Path(f"/tmp/oprunner-mcp-{port}.log")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "mcp", APP, "--http"], env=env, cwd=ROOT, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"mcp exited {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"mcp not listening in 60 s: {log.read_text()[-2000:]}") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _client(url: str, sub: str | None) -> Client:
    headers = {"authorization": f"Bearer {token(sub, tenant='t1')}"} if sub else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60))
    return Client(streamable_http_client(url, http_client=http), read_timeout_seconds=60)


async def test_http_uses_each_requests_token(mcp_http: str, accounts: asyncpg.Pool) -> None:
    async with _client(mcp_http, "alice") as alice:
        assert "ledger.credit" in {t.name for t in (await alice.list_tools()).tools}
        ok = await alice.call_tool("ledger.credit", {"accountId": "a1", "amount": "4"})
        assert not ok.is_error and ok.structured_content == {"accountId": "a1", "balance": "4"}
        # request ids restart on every connection: a second call #n is not a replay of the first's
        again = await alice.call_tool("ledger.credit", {"accountId": "a1", "amount": "4"})
        assert again.structured_content == {"accountId": "a1", "balance": "8"}
    async with _client(mcp_http, "alice") as alice2:
        third = await alice2.call_tool("ledger.credit", {"accountId": "a1", "amount": "4"})
        assert third.structured_content == {"accountId": "a1", "balance": "12"}
    async with _client(mcp_http, "bob") as bob:
        denied = await bob.call_tool("ledger.credit", {"accountId": "a1", "amount": "1"})
        assert denied.is_error and _body(denied)["error"]["code"] == "FORBIDDEN"
    assert await accounts.fetchval("SELECT balance FROM ledger_accounts WHERE id = 'a1'") == 12


async def test_http_refuses_before_a_session_opens(mcp_http: str) -> None:
    """No token, a bad one, or a Host that is not ours (DNS rebinding): refused before the SDK
    keeps a session for the request."""
    hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    accept = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    good = f"Bearer {token('alice', tenant='t1')}"
    async with httpx2.AsyncClient(timeout=30) as http:
        for headers in ({}, {"authorization": "Bearer nope"}):
            refused = await http.post(mcp_http, json=hello, headers={**accept, **headers})
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"]["code"] == "UNAUTHENTICATED"
            assert refused.headers["www-authenticate"].startswith("Bearer")
        rebound = await http.post(
            mcp_http, json=hello, headers={**accept, "authorization": good, "host": "evil.example"}
        )
        assert rebound.status_code == 421, rebound.text
        assert rebound.json()["error"]["code"] == "MISDIRECTED_REQUEST"
        foreign = await http.post(
            mcp_http, json=hello, headers={**accept, "authorization": good, "origin": "http://evil.example"}
        )
        assert foreign.status_code == 403, foreign.text
        assert foreign.json()["error"]["code"] == "FORBIDDEN_ORIGIN"
        lookalike = await http.post(  # a name that only begins like an allowed one
            mcp_http, json=hello, headers={**accept, "authorization": good, "host": "localhost.evil.example"}
        )
        assert lookalike.status_code == 421, lookalike.text
