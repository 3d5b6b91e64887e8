"""``oprunner mcp``: the app's operations as MCP tools, over stdio or streamable HTTP.

A process of its own beside ``serve``: it runs the calls it takes (the same executor, store
and outbox), publishes their events, and leaves the consuming of ``ops.commands`` to
``serve``. Its outbox rows are removed once published; what a crash leaves there, any
``serve``'s relay publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from infra.http import OpsApi
from infra.kafka.publisher import OutboxCleaner
from infra.mcp import (
    LOOPBACK_HOSTS,
    LOOPBACK_ORIGINS,
    BearerRequired,
    HostGuard,
    Pool,
    SessionGate,
    StreamGate,
    TokenDeadline,
    build_server,
)
from infra.postgres import PostgresStore

from ..app import App
from ..errors import RegistryError, StartupError
from ..settings import Settings
from .http_server import HttpServer
from .serve import (
    authenticator_from,
    build_clients,
    delivering,
    new_executor,
    open_database,
    open_publisher,
)

_log = logging.getLogger("oprunner.mcp")


async def serve_mcp(settings: Settings, app: App, *, http: bool, dev: bool = False) -> None:
    try:
        app.registry.check()
    except RegistryError as exc:
        raise StartupError(str(exc)) from exc
    authenticator = authenticator_from(settings, dev=dev)
    security = transport_security(settings) if http else None  # refused before connecting
    token = settings.mcp_token.get_secret_value() if settings.mcp_token else None
    if not http and token is None:
        _log.warning("OPRUNNER_MCP_TOKEN is not set: only public operations will run over stdio")
    async with contextlib.AsyncExitStack() as opened:
        pool, _ = await open_database(settings, app)
        opened.push_async_callback(pool.close)
        publisher = await open_publisher(settings)
        opened.push_async_callback(publisher.stop)
        store = PostgresStore(pool)
        cleaner = OutboxCleaner(store)
        cleaner.start()
        opened.push_async_callback(cleaner.stop)

        deliver = delivering(publisher, cleaner)  # what this process cannot, serve's relay publishes
        executor = new_executor(settings, app, store, authenticator, build_clients(settings, app), None)
        ops = OpsApi(executor, deliver, max_bytes=settings.max_message_bytes)
        server = build_server(ops, stdio_token=None if http else token, name=f"oprunner-{app.name}")
        if http:
            public = any(spec.policy.auth == "public" for spec in app.registry)
            await _serve_http(settings, server, security, authenticator, anonymous=public)
        else:
            from mcp.server.stdio import stdio_server

            async with stdio_server() as (read, write):
                await server.run(read, write, server.create_initialization_options())


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def transport_security(settings: Settings) -> Any:
    """The ``Host`` and ``Origin`` patterns the DNS-rebinding guards admit, ours (``HostGuard``,
    first) and the SDK's behind it, from one place: the settings', or loopback's on loopback
    when none are set; a public listener without them is refused."""
    from mcp.server.transport_security import TransportSecuritySettings

    hosts, origins = settings.mcp_allowed_hosts, settings.mcp_allowed_origins
    if not hosts and not origins and settings.http_host in LOOPBACK:
        hosts, origins = list(LOOPBACK_HOSTS), list(LOOPBACK_ORIGINS)
    elif not hosts:
        raise StartupError(
            f"oprunner mcp --http on {settings.http_host} needs OPRUNNER_MCP_ALLOWED_HOSTS "
            '(a JSON list, e.g. ["mcp.example.com"]): the Host names clients use'
        )
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


async def _serve_http(
    settings: Settings, server: Any, security: Any, authenticator: Any, *, anonymous: bool
) -> None:
    sessions = Pool(settings.mcp_max_sessions, settings.mcp_sessions_per_caller)
    in_flight = settings.mcp_max_streams or max(1, settings.http_max_concurrency // 2)
    streams = Pool(in_flight, settings.mcp_streams_per_caller)
    asgi = server.streamable_http_app(
        streamable_http_path="/mcp",
        host=settings.http_host,
        transport_security=security,
        max_request_body_size=settings.max_message_bytes,
        session_idle_timeout=settings.mcp_session_idle_seconds,
        max_sessions=sessions.total,  # a backstop: SessionGate refuses first, in our words
    )
    hosts, origins = tuple(security.allowed_hosts), tuple(security.allowed_origins)
    # outermost first: the Host, the token, the caller's requests, its sessions, the token's end
    owned = SessionGate(TokenDeadline(asgi), sessions, idle=settings.mcp_session_idle_seconds)
    gated = StreamGate(owned, streams)
    front = HostGuard(BearerRequired(gated, authenticator, anonymous=anonymous), hosts, origins)
    http = HttpServer.configured(front, settings, settings.mcp_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with server.session_manager.run():  # the SDK's sessions live while we serve
            await http.start()
            _log.info("MCP on http://%s:%d/mcp", settings.http_host, settings.mcp_port)
            await stop.wait()
            await http.stop()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
