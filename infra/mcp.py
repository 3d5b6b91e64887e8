"""The app's operations as Model Context Protocol tools, on the official ``mcp`` SDK.

One tool per operation key (its default version, ``OperationRegistry.get``): the name is the
key, the description comes from ``meta``, the input schema is the spec's, and the output
schema is the spec's too, so a client checks the structured content it gets. Queries are
marked read-only; every tool is marked idempotent, because every call carries a key.

A call is an ``/ops`` call under another name: the same ``OpsApi.command`` and
``OpsApi.call``, so validation, policy, the idempotency claim, the outbox and the audit are
the ones every other path has. Nothing is checked here first (the SDK's own input check is
left off), so a bad argument is a ``rejected`` outcome that is audited, not a protocol error
that is not.

Who calls: over streamable HTTP, the bearer token of that HTTP request (each request, not a
token remembered from the session's start); over stdio, the token the process was started
with, since stdio has no headers and the process belongs to whoever started it.

The idempotency key: ``_meta["io.oprunner/idempotencyKey"]`` when the client sends one, which
is what makes a retry on a new connection safe; otherwise one made from the connection and
the JSON-RPC request id, because request ids restart at 0 on every connection and alone
would make one session's call a replay of another's.
"""

from __future__ import annotations

import uuid
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from starlette.datastructures import Headers

from runner import _json
from runner.auth import bearer
from runner.errors import AuthError, EnvelopeError, StoreUnavailable
from runner.spec import OperationSpec

from .http import OpsApi

IDEMPOTENCY_META = "io.oprunner/idempotencyKey"
CORRELATION_META = "io.oprunner/correlationId"
SOURCE = "oprunner.mcp"


def tool_for(spec: OperationSpec) -> types.Tool:
    """The tool of ``spec``: its key, its description, its input and output schemas."""
    meta = spec.meta
    description = meta.description
    if meta.goal:
        description += f"\n\nGoal: {meta.goal}"
    if spec.deprecated:
        description = f"[deprecated] {description}"
    output = spec.output_schema()
    query = spec.kind == "query"
    if not query:  # a command runs again for each call unless the call names its key
        description += f"\n\nA retry is safe only with the same _meta {IDEMPOTENCY_META!r}."
    return types.Tool(
        name=spec.key,
        title=meta.description,
        description=description,
        input_schema=spec.input_schema(),
        # Through 2025-11-25 an output schema must be an object at the root; every spec's is.
        output_schema=output if output.get("type") == "object" else None,
        annotations=types.ToolAnnotations(
            read_only_hint=query, destructive_hint=False if query else None, idempotent_hint=query
        ),
        meta={"io.oprunner/version": spec.version, "io.oprunner/kind": spec.kind},
    )


def _text(body: Any) -> list[types.TextContent]:
    return [types.TextContent(text=_json.dumps(body).decode())]


def _failed(code: str, message: str, **extra: Any) -> types.CallToolResult:
    body = {"status": "rejected", "error": {"code": code, "message": message}, **extra}
    return types.CallToolResult(content=_text(body), is_error=True)


def build_server(ops: OpsApi, *, stdio_token: str | None = None, name: str = "oprunner") -> Server[Any]:
    """The MCP server for ``ops``'s registry. ``stdio_token`` is the actor of every call when
    the transport has no HTTP request (stdio); over HTTP each request's own token is used."""
    registry = ops.executor.registry
    process = uuid.uuid4().hex  # stdio: one connection per process

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        defaults = {spec.key: registry.get(spec.key).spec for spec in registry}
        return types.ListToolsResult(tools=[tool_for(spec) for spec in defaults.values()])

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        request = ctx.request
        headers = getattr(request, "headers", None)
        if headers is not None:
            token = bearer(headers.get("authorization"))
            connection = headers.get("mcp-session-id") or uuid.uuid4().hex  # stateless: no retries
        else:
            token, connection = stdio_token, process
        meta: dict[str, Any] = dict(params.meta or {})
        key = meta.get(IDEMPOTENCY_META)
        if key is not None and not (isinstance(key, str) and key):
            return _failed("INVALID_IDEMPOTENCY_KEY", f"_meta {IDEMPOTENCY_META} must be a non-empty string")
        # request ids 1 and "1" are two requests: the id's type is part of the key
        request_id = f"{type(ctx.request_id).__name__}:{ctx.request_id}"
        correlation = meta.get(CORRELATION_META)
        try:
            command = ops.command(
                params.name,
                params.arguments or {},
                idempotency_key=key or f"mcp:{connection}:{request_id}",
                correlation_id=correlation if isinstance(correlation, str) and correlation else None,
                source=SOURCE,
                max_bytes=ops.max_bytes,  # stdio has no body limit; HTTP's is the SDK's
            )
        except EnvelopeError as exc:
            return _failed("INVALID_COMMAND", exc.reason)
        try:
            outcome = await ops.call(command, token)
        except StoreUnavailable:
            return _failed("UNAVAILABLE", "the store is unavailable; call again with the same key")
        data = outcome.result["data"]
        ids = {"commandId": command.id, "idempotencyKey": command.idempotency_key}
        if data["status"] == "succeeded":
            output = data.get("output")
            structured = output if isinstance(output, dict) else None
            return types.CallToolResult(content=_text(output), structured_content=structured, is_error=False)
        body = {**data, **ids}
        return types.CallToolResult(content=_text(body), is_error=True)

    return Server(name, version="1", on_list_tools=list_tools, on_call_tool=call_tool)


LOOPBACK_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*")
LOOPBACK_ORIGINS = ("http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*")


def _allowed(value: str, patterns: tuple[str, ...]) -> bool:
    """``value`` is one of ``patterns``, where ``name:*`` stands for ``name`` with any port."""
    return any(value == p or (p.endswith(":*") and value.startswith(p[:-1])) for p in patterns)


class HostGuard:
    """The DNS-rebinding guard, answered in this project's words before anything else runs: a
    ``Host`` not listed is a 421, a browser ``Origin`` not listed a 403, each a JSON error with
    its code. The SDK's own guard stays on behind it, but its status codes and texts are its
    release's to change; these are the contract."""

    def __init__(self, app: Any, hosts: tuple[str, ...], origins: tuple[str, ...]) -> None:
        self.app = app
        self.hosts = hosts
        self.origins = origins

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            host, origin = headers.get("host", ""), headers.get("origin")
            if not _allowed(host, self.hosts):
                message = f"Host {host[:100]!r} is not one this server answers (OPRUNNER_MCP_ALLOWED_HOSTS)"
                await _answer(send, 421, "MISDIRECTED_REQUEST", message)
                return
            if origin and not _allowed(origin, self.origins):  # empty: absent, as the SDK has it
                message = f"Origin {origin[:100]!r} may not call this server (OPRUNNER_MCP_ALLOWED_ORIGINS)"
                await _answer(send, 403, "FORBIDDEN_ORIGIN", message)
                return
        await self.app(scope, receive, send)


async def _answer(send: Any, status: int, code: str, message: str, headers: list[Any] | None = None) -> None:
    body = _json.dumps({"error": {"code": code, "message": message}})
    start = [(b"content-type", b"application/json"), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


class BearerRequired:
    """In front of the streamable HTTP app: every request carries a token that verifies, or
    is answered 401 before the SDK opens a session for it. Sessions cost memory and the SDK
    keeps thousands for half an hour: without this an anonymous client could take them all.
    ``anonymous`` lets token-less requests through (an app with public operations)."""

    def __init__(self, app: Any, authenticator: Any, *, anonymous: bool) -> None:
        self.app = app
        self.authenticator = authenticator
        self.anonymous = anonymous

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            token = bearer(headers.get("authorization"))
            problem = None
            if token is None:
                problem = None if self.anonymous else "a bearer token is required"
            else:
                try:
                    self.authenticator.authenticate(token)
                except AuthError as exc:
                    problem = str(exc)
            if problem is not None:
                realm = [(b"www-authenticate", b'Bearer realm="oprunner"')]
                await _answer(send, 401, "UNAUTHENTICATED", problem, realm)
                return
        await self.app(scope, receive, send)
