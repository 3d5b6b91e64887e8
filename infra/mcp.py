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

Who holds what, over HTTP (the ASGI layers in front of the SDK, outermost first): ``HostGuard``
(DNS rebinding), ``BearerRequired`` (a token that verifies, not a one-command token),
``StreamGate`` (each caller's requests in flight), ``SessionGate`` (each caller's sessions,
each usable by its opener only), ``TokenDeadline`` (nothing outlives its token).

The idempotency key: ``_meta["io.oprunner/idempotencyKey"]`` when the client sends one, which
is what makes a retry on a new connection safe; otherwise one made from the connection and
the JSON-RPC request id, because request ids restart at 0 on every connection and alone
would make one session's call a replay of another's.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import anyio
import jwt
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
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

    # made once, as the registry is fixed while served: a list costs sending it
    defaults = {spec.key: registry.get(spec.key).spec for spec in registry}
    tools = types.ListToolsResult(tools=[tool_for(spec) for spec in defaults.values()])

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return tools

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


CALLER = "oprunner.caller"
"""The scope key ``BearerRequired`` sets for the gates behind it: the request's ``Caller``."""
EXPIRES = "oprunner.expires"
"""The scope key of the request's token ``exp`` (epoch seconds), or None without a token."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Whose slots a request takes: a token's kind, subject and tenant, the same three that
    say whose runs are whose. Token-less callers (an app with public operations) are told
    apart by their address, the only thing they have."""

    kind: str
    subject: str
    tenant: str | None = None


def _expiry(token: str) -> float | None:
    """The ``exp`` of a token the authenticator has just accepted, read without verifying
    again (it verified); ``None`` for a token that is no JWT (another ``Authenticator``'s),
    whose requests then have no deadline here."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
        return float(claims["exp"])
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):  # an authenticator of opaque tokens
        return None


class BearerRequired:
    """In front of the streamable HTTP app: every request carries a token that verifies, or
    is answered 401 before the SDK opens a session for it: sessions cost memory, and without
    this an anonymous client could take them all.
    ``anonymous`` lets token-less requests through (an app with public operations).

    A one-command token (one the runner minted for one command, ``Actor.bound``) is refused
    with 403: it travels in ``ops.commands`` for anyone reading the topic, and here it would
    buy sessions, not its command. A token past its ``exp`` (inside the authenticator's
    leeway) is refused too: no request here outlives its token (``TokenDeadline``). What
    passes carries its ``Caller`` and ``exp`` in the scope for the gates behind."""

    def __init__(self, app: Any, authenticator: Any, *, anonymous: bool) -> None:
        self.app = app
        self.authenticator = authenticator
        self.anonymous = anonymous

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = bearer(Headers(scope=scope).get("authorization"))
        problem, caller, expires = None, None, None
        if token is None:
            problem = None if self.anonymous else "a bearer token is required"
            client = scope.get("client") or ("", 0)
            caller = Caller("anonymous", str(client[0]))
        else:
            try:
                actor = self.authenticator.authenticate(token)
                expires = _expiry(token)
            except AuthError as exc:
                problem = str(exc)
            else:
                if actor.bound is not None:
                    message = "a one-command token runs its one command, not MCP: use a user or service token"
                    await _answer(send, 403, "ONE_COMMAND_TOKEN", message)
                    return
                if expires is not None and expires <= time.time():
                    problem = "token expired"
                caller = Caller(actor.kind, actor.user_id, actor.tenant_id)
        if problem is not None:
            realm = [(b"www-authenticate", b'Bearer realm="oprunner"')]
            await _answer(send, 401, "UNAUTHENTICATED", problem, realm)
            return
        await self.app({**scope, CALLER: caller, EXPIRES: expires}, receive, send)


class Pool:
    """Slots of one kind, counted per caller: ``total`` for everyone, of which one caller holds
    at most ``share`` (``per_caller``, and never past a quarter of ``total``), so a caller at
    its share only ever refuses itself, and filling the pool takes four callers at least."""

    def __init__(self, total: int, per_caller: int) -> None:
        self.total = total
        self.share = max(1, min(per_caller, total // 4))
        self.used = 0
        self._held: dict[Caller, int] = {}

    def full_for(self, caller: Caller) -> str | None:
        """``"caller"`` when ``caller`` holds its share, ``"server"`` when the pool is full."""
        if self._held.get(caller, 0) >= self.share:
            return "caller"
        return "server" if self.used >= self.total else None

    def take(self, caller: Caller) -> None:
        self._held[caller] = self._held.get(caller, 0) + 1
        self.used += 1

    def give(self, caller: Caller) -> None:
        left = self._held.get(caller, 0) - 1
        if left > 0:
            self._held[caller] = left
        else:
            self._held.pop(caller, None)
        self.used -= 1


async def _refused(pool: Pool, caller: Caller, send: Any, code: str, mine: str, what: str) -> bool:
    """Whether ``caller`` may not take a slot of ``pool``, answered when so: past its own share
    429 ``code`` with ``mine`` (its own doing, its own to undo); the whole pool full, 503
    ``BUSY``, as for any busy server, since no caller of its own can free it."""
    full = pool.full_for(caller)
    if full == "caller":
        await _answer(send, 429, code, mine)
    elif full == "server":
        message = f"the server has all the MCP {what} it serves open; try again in a few seconds"
        await _answer(send, 503, "BUSY", message, [(b"retry-after", b"5")])
    return full is not None


class StreamGate:
    """At most ``pool.share`` requests in flight per caller, and ``pool.total`` in all. A GET
    stream, or a POST answered as SSE, holds an HTTP request slot for as long as it is open:
    without this one token could hold every slot the server has. A caller past its share is
    answered 429 ``TOO_MANY_STREAMS`` (its own doing, its own to undo)."""

    def __init__(self, app: Any, pool: Pool) -> None:
        self.app = app
        self.pool = pool

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        caller = scope[CALLER]
        mine = (
            f"this caller has {self.pool.share} MCP requests or streams open, its most: "
            "close a GET stream or wait for a call to finish"
        )
        if await _refused(self.pool, caller, send, "TOO_MANY_STREAMS", mine, "streams"):
            return
        self.pool.take(caller)
        try:
            await self.app(scope, receive, send)
        finally:
            self.pool.give(caller)


@dataclass(slots=True)
class _Session:
    owner: Caller
    in_flight: int = 1
    idle_since: float = 0.0


class SessionGate:
    """Each MCP session belongs to the caller that opened it, and counts against its share.

    A session's id is learnt from the SDK's answer to the request that opened it (its
    ``mcp-session-id`` header, on a status below 400: what the SDK itself keeps), before the
    client sees it. A request naming a session of another caller is answered 404
    ``SESSION_NOT_FOUND``, as for an unknown one: it learns nothing of whether the id exists,
    and a client's answer to a 404 (a new session) is the right one. A session is forgotten
    (its slot freed) when a DELETE ends it, when the SDK answers 404 for it (it ended there),
    and after ``idle`` seconds with no request in flight: the SDK's own idle expiry, which
    runs on the same clock and begins no later than this one does.

    Requests of the sessionless protocol revisions (an ``mcp-protocol-version`` the SDK does
    not route to sessions) pass untouched: the SDK opens no session for them."""

    def __init__(self, app: Any, pool: Pool, *, idle: float) -> None:
        self.app = app
        self.pool = pool
        self.idle = idle
        self._sessions: dict[str, _Session] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        version = headers.get(MCP_PROTOCOL_VERSION_HEADER) if headers is not None else None
        if headers is None or (version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS):
            await self.app(scope, receive, send)
            return
        caller = scope[CALLER]
        session_id = headers.get(MCP_SESSION_ID_HEADER)
        self._expire()
        if session_id is None:
            await self._open(caller, scope, receive, send)
            return
        session = self._sessions.get(session_id)
        if session is None or session.owner != caller:
            await _answer(send, 404, "SESSION_NOT_FOUND", "no such MCP session: initialize a new one")
            return
        session.in_flight += 1
        status: list[int] = []
        try:
            await self.app(scope, receive, _watching(send, status))
        finally:
            session.in_flight -= 1
            session.idle_since = time.monotonic()
        gone = status == [404]  # the SDK no longer has it (ended, crashed or idle there)
        deleted = scope["method"] == "DELETE" and bool(status) and status[0] < 300
        if (gone or deleted) and self._sessions.get(session_id) is session:
            self._forget(session_id)

    async def _open(self, caller: Caller, scope: Any, receive: Any, send: Any) -> None:
        """A request without a session id: the SDK opens a session for it (kept if it
        initializes), so it takes a slot first and gives it back unless a session came of it."""
        mine = (
            f"this caller has {self.pool.share} MCP sessions open, its most: end one "
            f"(DELETE /mcp with its Mcp-Session-Id) or let one sit idle {self.idle:g} s"
        )
        if await _refused(self.pool, caller, send, "TOO_MANY_SESSIONS", mine, "sessions"):
            return
        self.pool.take(caller)
        opened: list[_Session] = []

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                session_id = Headers(raw=message.get("headers", [])).get(MCP_SESSION_ID_HEADER)
                if session_id is not None and session_id not in self._sessions:
                    opened.append(_Session(caller))
                    self._sessions[session_id] = opened[0]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if opened:
                opened[0].in_flight -= 1
                opened[0].idle_since = time.monotonic()
            else:
                self.pool.give(caller)

    def _expire(self) -> None:
        now = time.monotonic()
        idle = [
            sid for sid, s in self._sessions.items() if s.in_flight == 0 and now - s.idle_since >= self.idle
        ]
        for session_id in idle:
            self._forget(session_id)

    def _forget(self, session_id: str) -> None:
        self.pool.give(self._sessions.pop(session_id).owner)


def _watching(send: Any, status: list[int]) -> Any:
    """``send``, noting the response's status in ``status``."""

    async def sending(message: Any) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        await send(message)

    return sending


class TokenDeadline:
    """No request outlives its token: at the token's ``exp`` a request still open (a GET
    stream, a POST answered as SSE) is told its client went away, which the SDK's streams
    handle as a disconnect, and its answer is then ended cleanly; one that has not answered
    yet is answered 401 ``UNAUTHENTICATED``. A client reconnects with a fresh token. If the
    app does not finish within ``grace`` seconds of that, it is cancelled."""

    def __init__(self, app: Any, *, grace: float = 2.0) -> None:
        self.app = app
        self.grace = grace

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        expires = scope.get(EXPIRES) if scope["type"] == "http" else None
        if expires is None:
            await self.app(scope, receive, send)
            return
        deadline = anyio.current_time() + (expires - time.time())
        state = {"expired": False, "started": False, "complete": False}

        async def receiving() -> Any:
            if not state["expired"]:
                with anyio.CancelScope(deadline=deadline):
                    return await receive()
                state["expired"] = True
            return {"type": "http.disconnect"}

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["complete"] = True
            await send(message)

        with anyio.CancelScope(deadline=deadline + self.grace):
            await self.app(scope, receiving, sending)
        if anyio.current_time() < deadline:
            return  # ended on its own (or its client went): nothing of ours to add
        if state["started"] and not state["complete"]:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        elif not state["started"]:
            realm = [(b"www-authenticate", b'Bearer realm="oprunner", error="invalid_token"')]
            await _answer(send, 401, "UNAUTHENTICATED", "token expired: send a fresh one", realm)
