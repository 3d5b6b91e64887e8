"""``oprunner mcp --http``'s DNS-rebinding guard answers in this project's words, before the
SDK (or the token check) sees the request; each caller's pool has a share no caller passes;
a token's expiry ends what it opened."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from infra.mcp import EXPIRES, LOOPBACK_HOSTS, LOOPBACK_ORIGINS, Caller, HostGuard, Pool, TokenDeadline


async def inner(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"reached"})


@pytest.mark.parametrize(
    ("host", "origin", "status", "code"),
    [
        ("127.0.0.1:8000", None, 200, None),
        ("localhost:8000", "http://localhost:3000", 200, None),
        ("[::1]:8000", "http://[::1]:1", 200, None),
        ("evil.example", None, 421, "MISDIRECTED_REQUEST"),
        ("localhost", None, 421, "MISDIRECTED_REQUEST"),  # loopback's patterns carry a port
        ("localhost.evil.example:80", None, 421, "MISDIRECTED_REQUEST"),
        ("localhost:8000", "http://evil.example", 403, "FORBIDDEN_ORIGIN"),
        ("localhost:8000", "http://localhost.evil.example:1", 403, "FORBIDDEN_ORIGIN"),
        ("localhost:8000", "null", 403, "FORBIDDEN_ORIGIN"),
    ],
)
async def test_loopback_defaults(host: str, origin: str | None, status: int, code: str | None) -> None:
    guard = HostGuard(inner, LOOPBACK_HOSTS, LOOPBACK_ORIGINS)
    headers = {"host": host, **({"origin": origin} if origin else {})}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://x") as http:
        answer = await http.post("/mcp", headers=headers, content=b"{}")
    assert answer.status_code == status
    if code is None:
        assert answer.text == "reached"
    else:
        assert answer.json()["error"]["code"] == code


async def test_configured_names_and_no_origins_means_no_browsers() -> None:
    guard = HostGuard(inner, ("mcp.example.com",), ())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://x") as http:
        assert (await http.post("/mcp", headers={"host": "mcp.example.com"})).status_code == 200
        assert (await http.post("/mcp", headers={"host": "mcp.example.com:443"})).status_code == 421
        browser = {"host": "mcp.example.com", "origin": "https://mcp.example.com"}
        assert (await http.post("/mcp", headers=browser)).status_code == 403


# -- the per-caller gates: a pool's shares, a token's deadline -------------------------------


def test_a_pool_refuses_a_caller_at_its_share_and_no_one_else() -> None:
    pool = Pool(total=8, per_caller=100)  # the share is a quarter of the total at most
    alice, bob = Caller("user", "alice", "t1"), Caller("user", "bob", "t1")
    for _ in range(2):
        assert pool.full_for(alice) is None
        pool.take(alice)
    assert pool.full_for(alice) == "caller" and pool.full_for(Caller("user", "alice", "t2")) is None
    for who in ("bob", "carol", "dave"):
        for _ in range(2):
            pool.take(Caller("user", who, "t1"))
    assert pool.full_for(Caller("service", "alice", "t1")) == "server"
    pool.give(bob)
    assert pool.full_for(Caller("service", "alice", "t1")) is None and pool.full_for(alice) == "caller"


def _expiring(app: Any, seconds: float) -> Any:
    """``app`` behind ``TokenDeadline``, as if ``BearerRequired`` had let through a token that
    expires in ``seconds``."""
    deadline = TokenDeadline(app, grace=0.2)

    async def front(scope: Any, receive: Any, send: Any) -> None:
        await deadline({**scope, EXPIRES: time.time() + seconds}, receive, send)

    return front


async def test_a_stream_is_ended_at_its_tokens_expiry() -> None:
    """An SSE answer still open at ``exp`` (a POST's or a GET's) is told its client went away,
    and its answer is then ended cleanly for the client."""

    async def streaming(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b": open\n\n", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass

    started = time.monotonic()
    app = _expiring(streaming, 0.5)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as http:
        answer = await asyncio.wait_for(http.post("/mcp", content=b"{}"), timeout=10)
    assert answer.status_code == 200 and answer.text == ": open\n\n"
    assert time.monotonic() - started >= 0.4


async def test_a_request_unanswered_at_expiry_is_a_401() -> None:
    async def silent(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(3600)  # never reads, never answers: cancelled after the grace

    app = _expiring(silent, 0.3)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as http:
        answer = await asyncio.wait_for(http.post("/mcp", content=b"{}"), timeout=10)
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "UNAUTHENTICATED"
