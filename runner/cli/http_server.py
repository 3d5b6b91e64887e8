"""uvicorn for ``serve``: in the caller's event loop, and closing connections without resets.

When a server closes a socket whose receive buffer still holds unread bytes, the kernel
answers with a TCP reset, and the client may lose the response it was about to read: a 413
sent before a large body was read, or uvicorn's own 400 for a header block past the limit,
then shows up at the client as ``ReadError``/``ECONNRESET`` instead of a status code. So,
like nginx's ``lingering_close``, a connection closed while the client is still mid-request
is only half-closed: our side sends its FIN after the response, reads and drops what the
client still sends (up to a byte and time bound), and closes when the client does.

Slow clients are bounded too: a request's line and header block must arrive within the
header timeout (the body's own timeout is the app's: ``infra._requests.read_body``), at most
``max_concurrency`` requests are served at once (past it: 503 with ``Retry-After``), and
graceful shutdown waits at most ``shutdown_timeout`` for requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections.abc import Iterator
from typing import Any, cast

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import StartupError
from ..settings import Settings

LINGER_SECONDS = 5.0
LINGER_BYTES = 8 * 1024 * 1024
_LATE = b'{"error": "the request headers did not arrive in time"}'
_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_LATE), _LATE)
)


class _Drain(asyncio.Protocol):
    """Takes over a half-closed connection: drops what arrives, closes at the peer's end or a bound."""

    def __init__(self, transport: asyncio.Transport, inner: asyncio.Protocol) -> None:
        self._transport, self._inner, self._left = transport, inner, LINGER_BYTES
        self._timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        self._left -= len(data)
        if self._left <= 0:
            self._transport.close()

    def eof_received(self) -> bool:
        return False  # the peer is done: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
        self._inner.connection_lost(exc)  # uvicorn forgets the connection only here


class _LingeringTransport:
    """The transport uvicorn's protocol sees: ``close()`` lingers when the peer is mid-request."""

    def __init__(self, transport: asyncio.Transport, protocol: LingeringH11Protocol) -> None:
        self._transport, self._protocol, self._closed = transport, protocol, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._closed or self._transport.is_closing()

    def write(self, data: bytes) -> None:
        if not self._closed:
            self._transport.write(data)

    def pause_reading(self) -> None:
        if not self._closed:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._closed:
            self._transport.resume_reading()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        transport = self._transport
        if transport.is_closing() or not self._protocol.peer_mid_request() or not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()  # flushes the response first, then sends our FIN
        except (OSError, RuntimeError):
            transport.close()
            return
        transport.set_protocol(_Drain(transport, self._protocol))
        with contextlib.suppress(RuntimeError):
            transport.resume_reading()


class LingeringH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a transport whose ``close()`` drains a mid-request peer,
    and a deadline for each request's line and header block (``header_timeout``), from the
    connection's start or the request's first byte: uvicorn has none, so a client sending a
    header a byte a minute would hold its connection for ever."""

    header_timeout = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        lingering = _LingeringTransport(cast(asyncio.Transport, transport), self)
        super().connection_made(cast(asyncio.Transport, lingering))
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self._arm()  # a request has begun: its headers have until the deadline
        elif self.conn.their_state is not h11.IDLE:
            self._disarm()  # the header block is in; the body has the app's timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        if self.conn.trailing_data[0]:  # part of a request came: answer it, then close
            self.transport.write(_TIMED_OUT)
        self.transport.close()

    def peer_mid_request(self) -> bool:
        state = self.conn.their_state
        if state is h11.IDLE:
            return bool(self.conn.trailing_data[0])  # part of a request line or header block
        return state in (h11.SEND_BODY, h11.ERROR)


class ConcurrencyLimit:
    """At most ``limit`` HTTP requests in the app at once; past it an immediate 503 with
    ``Retry-After`` (uvicorn's own limit sends none, and counts idle connections too).
    ``/healthz`` and ``/readyz`` are never refused: a busy process is alive and may be ready.

    It also ends the connection after any response sent before the request's body was read
    to its end (a route that reads none, a 404, a 503 from here): the rest of that body is
    where the next request would be expected, and a client trickling it would otherwise hold
    the connection for ever, no body timeout applying to a body nobody reads."""

    def __init__(self, app: Any, limit: int, *, exempt: tuple[str, ...] = ("/healthz", "/readyz")) -> None:
        self.app, self.limit, self.exempt, self.active = app, limit, exempt, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        length = headers.get(b"content-length", b"0")
        body_left = [headers.get(b"transfer-encoding") is not None or length.strip() not in (b"", b"0")]

        async def reading() -> Any:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_left[0] = False
            return message

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start" and body_left[0]:
                sent = list(message.get("headers", ()))
                if not any(name.lower() == b"connection" for name, _ in sent):
                    message = {**message, "headers": [*sent, (b"connection", b"close")]}
            await send(message)

        if scope.get("path") in self.exempt:
            await self.app(scope, reading, sending)
            return
        if self.active >= self.limit:
            body = b'{"status":"rejected","error":{"code":"BUSY","message":"too many requests in flight"}}'
            busy = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
            ]
            await sending({"type": "http.response.start", "status": 503, "headers": busy})
            await send({"type": "http.response.body", "body": body})
            return
        self.active += 1
        try:
            await self.app(scope, reading, sending)
        finally:
            self.active -= 1


class HttpServer:
    """uvicorn in this event loop; signals stay with ``serve`` (uvicorn would take them).

    ``max_header_bytes`` bounds a request's header block (h11 enforces it on what it has
    buffered); past it uvicorn answers 400 and closes, which lingering makes readable.
    """

    @classmethod
    def configured(
        cls, app: Any, settings: Settings, port: int, sock: socket.socket | None = None
    ) -> HttpServer:
        """On ``settings``' host and limits (``OPRUNNER_HTTP_*``), at ``port``."""
        return cls(
            app,
            settings.http_host,
            port,
            max_header_bytes=settings.http_max_header_bytes,
            header_timeout=settings.http_header_timeout,
            max_concurrency=settings.http_max_concurrency,
            shutdown_timeout=settings.http_shutdown_timeout,
            sock=sock,
        )

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        max_header_bytes: int = 128 * 1024,
        header_timeout: float = 10.0,
        max_concurrency: int = 256,
        shutdown_timeout: float = 10.0,
        sock: socket.socket | None = None,
    ) -> None:
        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        protocol = type("Protocol", (LingeringH11Protocol,), {"header_timeout": header_timeout})
        self.limit = ConcurrencyLimit(app, max_concurrency)
        config = uvicorn.Config(
            self.limit,
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            http=protocol,
            h11_max_incomplete_event_size=max_header_bytes,
            timeout_graceful_shutdown=max(1, math.ceil(shutdown_timeout)),
            # connections (idle ones too) past which uvicorn itself answers 503: file descriptors
            # are finite, and each connection here may be a slow client the limit above never sees
            limit_concurrency=max(1024, 4 * max_concurrency),
        )
        self.server = _Server(config)
        self.port = port
        self.sock = sock  # a listening socket given by the supervisor (``serve --workers``)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        sockets = [self.sock] if self.sock is not None else None
        self._task = asyncio.create_task(self.server.serve(sockets=sockets), name="oprunner-http")
        while not self.server.started:
            if self._task.done():  # uvicorn exits (SystemExit) when it cannot bind
                with contextlib.suppress(BaseException):
                    self._task.result()
                raise StartupError(f"HTTP server could not listen on {self.server.config.host}:{self.port}")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
