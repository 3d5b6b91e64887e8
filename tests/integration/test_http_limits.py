"""Slow and greedy HTTP clients, over raw sockets against ``oprunner serve``: a request that
never finishes its headers or its body is answered 408 and closed, a burst past the
concurrency limit gets 503 with ``Retry-After``, and a half-sent request cannot hold up a
graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import httpx
import pytest

from tests.support import ServeProcess, Topics

LIMITS = {
    "OPRUNNER_HTTP_HEADER_TIMEOUT": "1",
    "OPRUNNER_HTTP_BODY_TIMEOUT": "2",
    "OPRUNNER_HTTP_MAX_CONCURRENCY": "2",
}


@pytest.fixture
def server(topics: Topics, database_url: str, clean_db: Any, serving: Any) -> ServeProcess:
    return serving(topics, database_url, **LIMITS)


async def _open(server: ServeProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.http_port)


async def _until_closed(reader: asyncio.StreamReader, within: float = 15.0) -> bytes:
    """Everything the server sends until it closes (failing if it does not within ``within``)."""
    return await asyncio.wait_for(reader.read(), within)


HEAD = (
    "POST /ops/ledger.credit HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    "content-length: 100\r\n\r\n"
)


async def test_a_request_whose_headers_never_finish_is_answered_408_and_closed(server: ServeProcess) -> None:
    reader, writer = await _open(server)
    writer.write(b"POST /ops/ledger.credit HTTP/1.1\r\nhost: x\r\n")  # and never the blank line
    answer = await _until_closed(reader)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    writer.close()
    idle_reader, idle = await _open(server)  # a connection that never sends a byte
    assert await _until_closed(idle_reader) == b""
    idle.close()


async def test_a_body_that_never_arrives_is_answered_408_and_closed(server: ServeProcess) -> None:
    reader, writer = await _open(server)
    writer.write(HEAD.encode() + b'{"accountId":')  # 13 of 100 bytes
    answer = await _until_closed(reader)
    assert answer.startswith(b"HTTP/1.1 408") and b"REQUEST_TIMEOUT" in answer, answer
    writer.close()


async def test_past_the_concurrency_limit_the_answer_is_503_with_retry_after(server: ServeProcess) -> None:
    held = [await _open(server) for _ in range(2)]
    for _, writer in held:
        writer.write(HEAD.encode())  # in the app, waiting for a body that will not come
        await writer.drain()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        deadline = time.monotonic() + 10
        busy = await http.post("/ops/ledger.nope", json={})
        while busy.status_code != 503 and time.monotonic() < deadline:  # until both are counted
            await asyncio.sleep(0.05)
            busy = await http.post("/ops/ledger.nope", json={})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1", busy.text
        assert busy.json()["error"]["code"] == "BUSY"
        assert (await http.get("/healthz")).status_code == 200  # alive, though busy
        for reader, writer in held:  # the held requests time out and free their places
            assert (await _until_closed(reader)).startswith(b"HTTP/1.1 408")
            writer.close()
        assert (await http.post("/ops/ledger.nope", json={})).status_code == 404


async def test_a_half_sent_request_does_not_hold_up_shutdown(
    topics: Topics, database_url: str, clean_db: Any, serving: Any
) -> None:
    server = serving(
        topics,
        database_url,
        OPRUNNER_HTTP_BODY_TIMEOUT="600",  # only the shutdown timeout can end it
        OPRUNNER_HTTP_SHUTDOWN_TIMEOUT="2",
    )
    _, writer = await _open(server)
    writer.write(HEAD.encode())
    await writer.drain()
    server.signal(signal.SIGTERM)
    code = await asyncio.to_thread(server.wait, 60)
    assert code == 0, server.output()[-2000:]
    writer.close()


async def test_a_body_no_route_reads_cannot_hold_the_connection(server: ServeProcess) -> None:
    """``/healthz`` reads no body: the answer ends the connection, so a client declaring a
    huge body and trickling it holds nothing (no body timeout applies to a body nobody reads)."""
    reader, writer = await _open(server)
    writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\nx")
    await writer.drain()

    async def trickle() -> None:
        for _ in range(20):  # a byte every half second, for longer than any bound here
            await asyncio.sleep(0.5)
            if writer.is_closing():
                return
            writer.write(b"x")

    trickling = asyncio.create_task(trickle())
    try:
        answer = await _until_closed(reader)
    finally:
        trickling.cancel()
    assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer.lower(), answer
    writer.close()


async def test_a_path_or_method_nothing_serves_is_answered_in_json(server: ServeProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        missing = await http.post("/nothing/here")
        assert missing.status_code == 404 and "no such path: /nothing/here" in missing.json()["error"]
        wrong = await http.delete("/healthz")
        assert wrong.status_code == 405 and "DELETE is not served" in wrong.json()["error"]
        assert "GET" in wrong.headers["allow"]
