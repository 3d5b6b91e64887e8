"""The operator's read side of the HTTP API: ``GET /ops/runs`` (a list, or a live stream),
``GET /ops/specs`` and the dead-letter endpoints.

A run here is an outcome in the audit log: every command that reached a decision has one,
rejected and denied ones too (a claimed run alone would miss them). Who may see what is the
rule ``GET /ops/runs/{id}`` already keeps (``infra.http._may_see``): a user or service their
own outcomes, a tenant's admin that tenant's, an admin without a tenant all, a one-command
token its one command. ``visible_to`` narrows the asked filter to that before the store is
asked, so paging and the live stream cannot reach past it.

The live stream is the list's own query, polled: it works across ``--workers`` and
processes, because every outcome is committed to the audit log before it is published.
Server-Sent Events, ``id:`` the entry's id, so a client that reconnects with
``Last-Event-ID`` misses nothing and sees nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from runner import _json
from runner.auth import Actor, bearer
from runner.errors import AuthError
from runner.executor import Executor
from runner.store import RunFilter

_log = logging.getLogger("oprunner.http")

STATUSES = ("succeeded", "failed", "rejected", "denied")
MAX_PAGE = 200
DEFAULT_PAGE = 50
MAX_FILTER_LENGTH = 1024
SSE = "text/event-stream"


class BadQuery(ValueError):
    """A query parameter that cannot be used: the message names it."""


def visible_to(actor: Actor, asked: RunFilter) -> RunFilter | None:
    """``asked`` narrowed to what ``actor`` may see; None when nothing asked for is theirs."""
    if actor.bound is not None:
        if asked.command_id not in (None, actor.bound.command_id):
            return None
        return replace(asked, command_id=actor.bound.command_id, actor=(actor.user_id, actor.tenant_id))
    if actor.kind == "admin":
        if actor.tenant_id is None:
            return asked
        if asked.tenant_id not in (None, actor.tenant_id):
            return None
        return replace(asked, tenant_id=actor.tenant_id)
    if asked.actor_id not in (None, actor.user_id) or asked.tenant_id not in (None, actor.tenant_id):
        return None
    return replace(asked, actor=(actor.user_id, actor.tenant_id))


def _text(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)  # "" is a value (op "" is a dead letter's), absent is none
    if value is None:
        return None
    if len(value) > MAX_FILTER_LENGTH or "\x00" in value:
        raise BadQuery(f"{name}: at most {MAX_FILTER_LENGTH} characters, no U+0000")
    return value


def _time(request: Request, name: str) -> datetime | None:
    value = _text(request, name)
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))  # RFC 3339 allows "t", "z"
    except ValueError:
        raise BadQuery(f"{name}: not an ISO 8601 time: {value[:40]!r}") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)  # no zone given: UTC


def _int(request: Request, name: str, *, low: int, high: int) -> int | None:
    value = _text(request, name)
    if value is None:
        return None
    if not value.isdigit() or not low <= int(value) <= high:
        raise BadQuery(f"{name}: a whole number from {low} to {high}")
    return int(value)


def _flag(request: Request, name: str) -> bool:
    value = _text(request, name)
    if value not in (None, "true", "false"):
        raise BadQuery(f"{name}: true or false")
    return value == "true"


def run_filter(request: Request) -> RunFilter:
    """The list's filters from the query string (the live stream takes the same)."""
    status = _text(request, "status")
    if status is not None and status not in STATUSES:
        raise BadQuery(f"status: one of {', '.join(STATUSES)}")
    return RunFilter(
        op=_text(request, "op"),
        status=status,
        actor_id=_text(request, "actor"),
        tenant_id=_text(request, "tenant"),
        correlation_id=_text(request, "correlationId"),
        command_id=_text(request, "commandId"),
        since=_time(request, "since"),
        until=_time(request, "until"),
        replays=_flag(request, "replays"),
    )


def _bad(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def _unavailable() -> JSONResponse:
    return JSONResponse({"error": "the store is unavailable; try again"}, status_code=503)


def _get_only(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return JSONResponse(
                {"error": f"{request.method} is not allowed here"}, status_code=405, headers={"Allow": "GET"}
            )
        return await endpoint(request)

    return handle


@dataclass
class RunsApi:
    """``GET /ops/runs`` and ``GET /ops/specs``; ``close`` ends the live streams (at drain)."""

    executor: Executor
    poll_interval: float = 0.5
    keepalive: float = 15.0
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    def close(self) -> None:
        self._closing.set()

    def routes(self) -> list[Route]:
        """Every method is routed here, so that ``POST /ops/runs`` is a 405 rather than a
        command for an operation named ``runs``."""
        every = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]
        return [
            Route("/ops/runs", _get_only(self.list), methods=every),
            Route("/ops/specs", _get_only(self.specs), methods=every),
        ]

    def _actor(self, request: Request) -> Actor | JSONResponse:
        token = bearer(request.headers.get("authorization"))
        if token is None or self.executor.authenticator is None:
            return JSONResponse({"error": "a bearer token is required"}, status_code=401)
        try:
            return self.executor.authenticator.authenticate(token)
        except AuthError as exc:
            return JSONResponse({"error": exc.reason}, status_code=401)

    async def list(self, request: Request) -> Response:
        actor = self._actor(request)
        if isinstance(actor, Response):
            return actor
        try:
            asked = run_filter(request)
            limit = _int(request, "limit", low=1, high=MAX_PAGE) or DEFAULT_PAGE
            cursor = _int(request, "cursor", low=0, high=2**63 - 1)
            after = _int(request, "after", low=0, high=2**63 - 1)
            resume = request.headers.get("last-event-id")
            if resume is not None:
                if not resume.isdigit() or int(resume) > 2**63 - 1:
                    raise BadQuery("Last-Event-ID: an id this stream sent")
                after = int(resume)
        except BadQuery as exc:
            return _bad(str(exc))
        where = visible_to(actor, asked)
        if SSE in request.headers.get("accept", ""):
            return StreamingResponse(
                self._stream(where, after),
                media_type=SSE,
                headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            )
        if where is None:
            return JSONResponse({"runs": [], "next": None})
        try:
            entries = await self.executor.store.list_runs(where, before=cursor, limit=limit)
        except Exception:
            _log.warning("could not list runs", exc_info=True)
            return _unavailable()
        more = len(entries) == limit
        return JSONResponse(
            {"runs": [e.to_json() for e in entries], "next": str(entries[-1].id) if more else None},
            headers={"Cache-Control": "no-store"},
        )

    async def _stream(self, where: RunFilter | None, after: int | None) -> AsyncIterator[bytes]:
        """Entries as they are recorded, from ``after`` (or from now), until the client goes
        away or the server drains. A store outage is a comment, and the stream goes on."""
        yield b": oprunner runs\n\n"  # the headers go out at once: the client knows it is connected
        if where is None:
            await self._closing.wait()
            return
        store = self.executor.store
        while after is None and not self._closing.is_set():
            try:
                newest = await store.list_runs(where, limit=1)
                after = newest[0].id if newest else 0
            except Exception:
                yield b": store unavailable\n\n"
                await self._pause(self.poll_interval)
        quiet = 0.0
        while not self._closing.is_set():
            try:
                entries = await store.list_runs(where, after=after, limit=MAX_PAGE)
            except Exception:
                _log.warning("live runs: could not read the store", exc_info=True)
                entries = []
                yield b": store unavailable\n\n"
            for entry in entries:
                after = entry.id
                yield b"event: run\nid: %d\ndata: %s\n\n" % (entry.id, _json.dumps(entry.to_json()))
            if len(entries) == MAX_PAGE:
                continue  # behind: read on at once
            quiet = 0.0 if entries else quiet + self.poll_interval
            if quiet >= self.keepalive:
                quiet = 0.0
                yield b": keepalive\n\n"
            await self._pause(self.poll_interval)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    async def specs(self, request: Request) -> Response:
        """The catalog: every spec's metadata, schemas, policy and error codes."""
        out = []
        for spec in self.executor.registry:
            described = spec.describe()
            described["sensitive"] = spec.sensitive_fields()
            described["deprecated"] = spec.deprecated
            out.append(described)
        return JSONResponse({"specs": out})
