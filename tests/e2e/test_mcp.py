"""``oprunner mcp``: the app's operations as MCP tools, driven by the ``mcp`` SDK's own client.

Over stdio (``OPRUNNER_MCP_TOKEN`` is the actor) and over streamable HTTP (each request's
bearer token is), against the real broker and Postgres. Every call is a command: it is
validated, authorized, claimed once per key, and its result and audit events are published.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
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
from runner.auth import CommandSigner, command_key
from runner.envelope import CommandEnvelope
from tests.support import SECRET, Reader, Topics, seed_ledger, token

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
def mcp_env() -> dict[str, str]:
    """Settings of the ``oprunner mcp --http`` under test beyond the topics' (a test may
    parametrize this to change them)."""
    return {}


@pytest.fixture
def mcp_http(
    topics: Topics, kafka_bootstrap: str, database_url: str, accounts: Any, mcp_env: dict[str, str]
) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, **topics.env(kafka_bootstrap, database_url, OPRUNNER_MCP_PORT=str(port)), **mcp_env}
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


# -- who may hold what: one-command tokens, each caller's share, sessions' owners, expiry ----

VERSION = "2025-06-18"
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


def _as(bearer: str, session: str | None = None) -> dict[str, str]:
    headers = {**ACCEPT, "authorization": f"Bearer {bearer}", "mcp-protocol-version": VERSION}
    return {**headers, "mcp-session-id": session} if session else headers


async def _initialize(http: httpx2.AsyncClient, url: str, bearer: str) -> httpx2.Response:
    """One ``initialize``; on success the session is made ready (``notifications/initialized``)."""
    opened = await http.post(url, json=INITIALIZE, headers=_as(bearer))
    if opened.status_code == 200:
        ready = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        done = await http.post(url, json=ready, headers=_as(bearer, opened.headers["mcp-session-id"]))
        assert done.status_code == 202, done.text
    return opened


async def _list_tools(http: httpx2.AsyncClient, url: str, bearer: str, session: str) -> httpx2.Response:
    asked = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
    return await http.post(url, json=asked, headers=_as(bearer, session))


@contextlib.asynccontextmanager
async def _stream(
    http: httpx2.AsyncClient, url: str, bearer: str, session: str
) -> AsyncIterator[httpx2.Response]:
    """The session's GET stream, held open for the ``with`` block."""
    headers = {**_as(bearer, session), "accept": "text/event-stream"}
    async with http.stream("GET", url, headers=headers) as got:
        yield got


def _code(answer: httpx2.Response) -> str:
    code: str = answer.json()["error"]["code"]
    return code


async def test_http_refuses_one_command_tokens(mcp_http: str) -> None:
    """A token the runner minted for one command (a webhook's, read off ``ops.commands``; or a
    follow-up's, in its parent's tenant) verifies, but buys no session."""
    key = command_key(SECRET, None)
    assert key is not None
    signer = CommandSigner(key, subject="oprunner-webhooks", ttl=600)
    credit = CommandEnvelope(
        id=str(uuid.uuid4()), source="tests", type="ledger.credit", data={"accountId": "a1", "amount": "1"}
    )
    follow_up = CommandEnvelope(
        id=str(uuid.uuid4()), source="tests", type="ledger.credit", data={}, causationid="parent-1"
    )
    lifted = [signer.token_for(credit), signer.token_for(follow_up, subject="alice", tenant="t1", depth=1)]
    async with httpx2.AsyncClient(timeout=30) as http:
        for bearer in lifted:
            refused = await http.post(mcp_http, json=INITIALIZE, headers=_as(bearer))
            assert refused.status_code == 403, refused.text
            assert _code(refused) == "ONE_COMMAND_TOKEN"
            got = await http.get(mcp_http, headers={**_as(bearer, "0" * 32), "accept": "text/event-stream"})
            assert got.status_code == 403 and _code(got) == "ONE_COMMAND_TOKEN"
        assert (await _initialize(http, mcp_http, token("alice", tenant="t1"))).status_code == 200


async def test_http_one_callers_sessions_never_refuse_another(mcp_http: str) -> None:
    """alice opens sessions, each with its GET stream, until she is refused (429, her own
    share); bob, alice in another tenant and alice as a service still open theirs. A session
    she ends gives her slot back."""
    alice = token("alice", tenant="t1")
    timeout = httpx2.Timeout(30, read=60)
    async with httpx2.AsyncClient(timeout=timeout) as http, contextlib.AsyncExitStack() as held:
        sessions: list[str] = []
        for _ in range(64):
            opened = await _initialize(http, mcp_http, alice)
            if opened.status_code != 200:
                break
            sessions.append(opened.headers["mcp-session-id"])
            stream = await held.enter_async_context(_stream(http, mcp_http, alice, sessions[-1]))
            assert stream.status_code == 200
        assert opened.status_code == 429, opened.text
        assert _code(opened) == "TOO_MANY_SESSIONS" and opened.json()["error"]["message"]
        assert 1 <= len(sessions) < 64
        others = [
            token("bob", tenant="t1"),
            token("alice", tenant="t2"),
            token("alice", tenant="t1", kind="service"),
        ]
        for other in others:
            theirs = await _initialize(http, mcp_http, other)
            assert theirs.status_code == 200, theirs.text
            async with _stream(http, mcp_http, other, theirs.headers["mcp-session-id"]) as stream:
                assert stream.status_code == 200
        ended = await http.delete(mcp_http, headers=_as(alice, sessions[0]))
        assert ended.status_code == 200, ended.text
        again = await _initialize(http, mcp_http, alice)
        assert again.status_code == 200, again.text
        assert (await _initialize(http, mcp_http, alice)).status_code == 429


@pytest.mark.parametrize("mcp_env", [{"OPRUNNER_MCP_STREAMS_PER_CALLER": "2"}])
async def test_http_one_callers_streams_never_refuse_another(mcp_http: str) -> None:
    """alice holds two GET streams, her share: her next request is refused (429) until one
    ends, while bob's are served."""
    alice, bob = token("alice", tenant="t1"), token("bob", tenant="t1")
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=60)) as http:
        first, second = [(await _initialize(http, mcp_http, alice)).headers["mcp-session-id"] for _ in "12"]
        async with _stream(http, mcp_http, alice, first) as one:
            assert one.status_code == 200
            async with _stream(http, mcp_http, alice, second) as two:
                assert two.status_code == 200
                refused = await _list_tools(http, mcp_http, alice, first)
                assert refused.status_code == 429 and _code(refused) == "TOO_MANY_STREAMS"
                theirs = await _initialize(http, mcp_http, bob)
                assert theirs.status_code == 200, theirs.text
                listed = await _list_tools(http, mcp_http, bob, theirs.headers["mcp-session-id"])
                assert listed.status_code == 200, listed.text
        deadline = time.monotonic() + 20  # the server frees the slots when it sees the streams end
        while (answer := await _list_tools(http, mcp_http, alice, first)).status_code == 429:
            assert time.monotonic() < deadline, "alice's streams still counted after they ended"
            await asyncio.sleep(0.1)
        assert answer.status_code == 200, answer.text


async def test_http_a_session_serves_only_the_caller_that_opened_it(mcp_http: str) -> None:
    """A session id with another caller's token (another subject, tenant or kind) is a 404, as
    an unknown id is; a fresh token of the same caller (a refresh) goes on using it."""
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=60)) as http:
        session = (await _initialize(http, mcp_http, token("alice", tenant="t1"))).headers["mcp-session-id"]
        strangers = [
            token("bob", tenant="t1"),
            token("alice", tenant="t2"),
            token("alice"),
            token("alice", tenant="t1", kind="admin"),
        ]
        for stranger in strangers:
            listed = await _list_tools(http, mcp_http, stranger, session)
            assert listed.status_code == 404 and _code(listed) == "SESSION_NOT_FOUND", listed.text
            got = await http.get(mcp_http, headers={**_as(stranger, session), "accept": "text/event-stream"})
            assert got.status_code == 404 and _code(got) == "SESSION_NOT_FOUND"
            ended = await http.delete(mcp_http, headers=_as(stranger, session))
            assert ended.status_code == 404 and _code(ended) == "SESSION_NOT_FOUND"
        unknown = await _list_tools(http, mcp_http, token("alice", tenant="t1"), "f" * 32)
        assert unknown.status_code == 404 and _code(unknown) == "SESSION_NOT_FOUND"
        refreshed = token("alice", tenant="t1", ttl=1800)
        listed = await _list_tools(http, mcp_http, refreshed, session)
        assert listed.status_code == 200 and "ledger.credit" in listed.text


async def test_http_a_stream_ends_when_its_token_expires(mcp_http: str) -> None:
    """A GET stream opened with a token good for a few seconds more ends then; the token is
    refused from then on (inside the verifier's leeway too), and a fresh one goes on."""
    ttl = 4
    short = token("alice", tenant="t1", ttl=ttl)
    expires = time.time() + ttl
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=60)) as http:
        session = (await _initialize(http, mcp_http, short)).headers["mcp-session-id"]
        async with _stream(http, mcp_http, short, session) as stream:
            assert stream.status_code == 200

            async def drained() -> None:
                async for _ in stream.aiter_bytes():
                    pass

            await asyncio.wait_for(drained(), timeout=ttl + 20)  # ends, well before a read timeout
        assert time.time() >= expires - 1.5  # exp has whole seconds
        late = await _list_tools(http, mcp_http, short, session)
        assert late.status_code == 401 and _code(late) == "UNAUTHENTICATED"
        fresh = token("alice", tenant="t1")
        async with _stream(http, mcp_http, fresh, session) as again:
            assert again.status_code == 200
        assert (await _list_tools(http, mcp_http, fresh, session)).status_code == 200
