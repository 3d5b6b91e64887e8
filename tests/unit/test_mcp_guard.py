"""``oprunner mcp --http``'s DNS-rebinding guard answers in this project's words, before the
SDK (or the token check) sees the request."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from infra.mcp import LOOPBACK_HOSTS, LOOPBACK_ORIGINS, HostGuard


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
