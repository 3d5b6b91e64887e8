"""The operator's read side of the HTTP API: ``GET /ops/runs`` (a list, or a live stream),
``GET /ops/specs`` and the dead letters (``GET /ops/dlq``, ``POST /ops/dlq/replay``, admins only).

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
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from runner import _json
from runner.auth import Actor, bearer
from runner.executor import Executor
from runner.policy import administers
from runner.store import RunFilter

from ._requests import BodyNotSent, BodyTooLarge, authenticated, read_body
from .kafka.deadletters import DeadLetter, Preview, Show, redacted_preview

_log = logging.getLogger("oprunner.http")

STATUSES = ("succeeded", "failed", "rejected", "denied")
MAX_PAGE = 200
DEFAULT_PAGE = 50
MAX_FILTER_LENGTH = 1024
REPLAY_BODY_BYTES = 64 * 1024
SSE = "text/event-stream"


MAX_ID = 2**63 - 1
LOOKBACK = 200
"""Ids a live stream looks back each poll for entries committed after later ones it sent
(ids are drawn when an entry is written, not when its transaction commits)."""
_DIGITS = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True, slots=True)
class _Holder:
    """Who holds a live stream, as its limits count it: the actor (``(kind, sub, tenant)``),
    its group (``("tenant", id)``, or ``("subject", sub)`` without a tenant) and whether it
    is an operator (an admin without a tenant), who draws on the share kept for them."""

    actor: tuple[str, str, str | None]
    group: tuple[str, str]
    operator: bool


def _holder(actor: Actor) -> _Holder:
    """A one-command token is no operator here, whatever its kind: it stands for one command.
    A tenant's admin is a member of its tenant: it shares the tenant's streams, so one
    tenant's admins can take neither the operators' share nor every other tenant's."""
    group = ("tenant", actor.tenant_id) if actor.tenant_id is not None else ("subject", actor.user_id)
    operator = actor.kind == "admin" and actor.bound is None and actor.tenant_id is None
    return _Holder((actor.kind, actor.user_id, actor.tenant_id), group, operator)


class _Stream(StreamingResponse):
    """A streaming answer that calls ``release`` when it ends, however it ends (a client gone
    before the first byte included, when the body was never started)."""

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None], **options: Any) -> None:
        super().__init__(content, **options)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _seconds_left(request: Request) -> float:
    """Until the (verified) bearer token's ``exp``: a stream outlives no token."""
    import jwt

    token = bearer(request.headers.get("authorization")) or ""
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return 0.0
    return max(0.0, float(exp) - time.time()) if isinstance(exp, int | float) else float("inf")


class BadQuery(ValueError):
    """A query parameter that cannot be used: the message names it."""


def visible_to(actor: Actor, asked: RunFilter) -> RunFilter | None:
    """``asked`` narrowed to what ``actor`` may see; None when nothing asked for is theirs.
    A token limited to some operations (``ops``) sees the runs of those only."""
    if actor.ops is not None:
        if asked.op is not None and asked.op not in actor.ops:
            return None
        asked = replace(asked, ops=actor.ops)
    if actor.bound is not None:
        if asked.command_id not in (None, actor.bound.command_id):
            return None
        mine = (actor.user_id, actor.tenant_id)
        return replace(asked, command_id=actor.bound.command_id, actor=mine, actor_kind=actor.kind)
    if actor.kind == "admin":
        if actor.tenant_id is None:
            return asked
        if asked.tenant_id not in (None, actor.tenant_id):
            return None
        return replace(asked, tenant_id=actor.tenant_id)
    if asked.actor_id not in (None, actor.user_id) or asked.tenant_id not in (None, actor.tenant_id):
        return None
    return replace(asked, actor=(actor.user_id, actor.tenant_id), actor_kind=actor.kind)


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
    return None if value is None else _whole(value, low, high, f"{name}: a whole number from {low} to {high}")


def _whole(value: str, low: int, high: int, wrong: str) -> int:
    """``value`` as a number in ``[low, high]`` (ASCII digits only), else ``BadQuery(wrong)``."""
    if not _DIGITS.fullmatch(value) or not low <= int(value) <= high:
        raise BadQuery(wrong)
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


class DeadLetters(Protocol):
    """The dead-letter topic, as ``infra.kafka.deadletters.KafkaDeadLetters`` reads it."""

    async def newest(self, limit: int, show: Show) -> Sequence[DeadLetter]: ...

    async def find(self, where: Sequence[tuple[int, int]]) -> Sequence[DeadLetter]: ...

    async def replay(self, letters: Sequence[DeadLetter], token: str | None, owner: Any) -> None: ...


def _administers_letter(actor: Actor, sender: dict[str, Any] | None) -> bool:
    """An admin without a tenant: every dead letter; a tenant's admin: those its tenant sent."""
    return administers(actor, sender.get("tenant") if sender else None, known=sender is not None)


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
    dlq: DeadLetters | None = None
    poll_interval: float = 0.5
    keepalive: float = 15.0
    max_streams: int = 32
    admin_streams: int = 8
    """Of ``max_streams``, kept for operators (admin tokens without a tenant, not one-command):
    however many others stream, an operator can still watch. Operators may use the rest too."""
    max_streams_per_actor: int = 4
    max_streams_per_tenant: int = 8
    """Streams per tenant, its users and its admins together (per subject for those without
    one): a third of the others' share, so one tenant cannot take it all."""
    stream_seconds: float = 900.0
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _streams: dict[_Holder, int] = field(default_factory=dict)
    _catalog: bytes | None = None

    def close(self) -> None:
        self._closing.set()

    def routes(self) -> list[Route]:
        """Every method is routed here, so that ``POST /ops/runs`` is a 405 rather than a
        command for an operation named ``runs``."""
        every = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]
        return [
            Route("/ops/runs", _get_only(self.list), methods=every),
            Route("/ops/specs", _get_only(self.specs), methods=every),
            Route("/ops/dlq", _get_only(self.dead_letters), methods=every),
            Route("/ops/dlq/replay", self.replay, methods=["POST"]),
        ]

    async def list(self, request: Request) -> Response:
        actor = authenticated(self.executor, request)
        if isinstance(actor, Response):
            return actor
        try:
            asked = run_filter(request)
            limit = _int(request, "limit", low=1, high=MAX_PAGE) or DEFAULT_PAGE
            cursor = _int(request, "cursor", low=0, high=MAX_ID)
            after = _int(request, "after", low=0, high=MAX_ID)
            resume = request.headers.get("last-event-id")
            if resume is not None:
                after = _whole(resume, 0, MAX_ID, "Last-Event-ID: an id this stream sent")
        except BadQuery as exc:
            return _bad(str(exc))
        where = visible_to(actor, asked)
        if SSE in request.headers.get("accept", ""):
            return await self._open_stream(request, actor, where, after)
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

    async def _open_stream(
        self, request: Request, actor: Actor, where: RunFilter | None, after: int | None
    ) -> Response:
        """A live stream, if there is room for one: each holds an HTTP request slot for as long
        as it lasts, so their number is bounded (``_refusal``), and each ends after
        ``stream_seconds`` or when its token expires (a client reconnects with ``Last-Event-ID``).
        Where it starts is read before the answer, so whatever is recorded once the client has
        the headers is sent."""
        if where is None:  # decided by the token and the filter alone: it says nothing of data
            message = "this filter names only runs this token may not see: a stream of it would stay empty"
            return JSONResponse({"error": message}, status_code=403)
        if actor.bound is not None:  # readable on ops.commands for days: it must not hold slots
            message = "a one-command token follows its one run: GET /ops/runs/<its command id>, not a stream"
            return JSONResponse({"error": message}, status_code=403)
        who = _holder(actor)
        refused = self._refusal(who)
        if refused is not None:
            return JSONResponse({"error": refused}, status_code=503, headers={"Retry-After": "5"})
        self._streams[who] = self._streams.get(who, 0) + 1  # taken before any await: no race past a limit

        def release() -> None:
            self._streams[who] -= 1
            if not self._streams[who]:
                del self._streams[who]

        if after is None:
            try:
                newest = await self.executor.store.list_runs(where, limit=1)
            except BaseException as exc:  # cancelled (the client left) too: the place is given back
                release()
                if not isinstance(exc, Exception):
                    raise
                _log.warning("could not open a live stream of runs", exc_info=True)
                return _unavailable()
            after = newest[0].id if newest else 0
        lasts = min(self.stream_seconds, _seconds_left(request))
        return _Stream(
            self._stream(where, after or 0, lasts),
            release,
            media_type=SSE,
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _stream(self, where: RunFilter | None, after: int, lasts: float) -> AsyncIterator[bytes]:
        """Entries as they are recorded after ``after``, until the client goes away, the server
        drains or ``lasts`` seconds pass. Ids are taken when an entry is written, not when it
        commits, so one can become visible after a later one was sent: each poll looks back
        ``LOOKBACK`` ids for those, and sends each id once. A store outage is a comment (and
        one log line), and the stream goes on."""
        yield b": oprunner runs\n\n"  # the headers go out at once: the client knows it is connected
        deadline = asyncio.get_running_loop().time() + lasts
        if where is None:
            await self._pause(lasts)
            return
        store = self.executor.store
        floor = after  # the client has what came before (or asked to start here)
        sent: dict[int, None] = {}  # ids sent lately, oldest first (bounded)
        quiet, failing = 0.0, False
        window = LOOKBACK + MAX_PAGE  # the looked-back ids hold at most LOOKBACK entries
        while not self._closing.is_set() and asyncio.get_running_loop().time() < deadline:
            try:
                entries = await store.list_runs(where, after=max(floor, after - LOOKBACK), limit=window)
                failing = False
            except Exception:
                if not failing:
                    _log.warning("live runs: could not read the store", exc_info=True)
                failing, entries = True, []
                yield b": store unavailable\n\n"
            fresh = [e for e in entries if e.id not in sent]
            for entry in fresh:
                sent[entry.id] = None
                after = max(after, entry.id)
                yield b"event: run\nid: %d\ndata: %s\n\n" % (entry.id, _json.dumps(entry.to_json()))
            while len(sent) > 2 * window:
                del sent[next(iter(sent))]
            if len(entries) == window and fresh:
                continue  # behind: read on at once
            quiet = 0.0 if fresh else quiet + self.poll_interval
            if quiet >= self.keepalive:
                quiet = 0.0
                yield b": keepalive\n\n"
            await self._pause(self.poll_interval)

    def _refusal(self, who: _Holder) -> str | None:
        """Why ``who`` may not open another stream now (the limit it meets and what to do), or
        None. One answer for all, 503 with ``Retry-After`` as for any busy server: each limit
        frees itself as streams end, and a client needs one way to wait."""
        held = self._streams.items()
        shared = self.max_streams - self.admin_streams
        if sum(n for h, n in held if h.actor == who.actor) >= self.max_streams_per_actor:
            return (
                f"this token's subject has {self.max_streams_per_actor} live streams open, the most "
                "one actor may: close one, then retry"
            )
        if not who.operator and sum(n for h, n in held if not h.operator and h.group == who.group) >= (
            self.max_streams_per_tenant
        ):
            whose = "this tenant" if who.group[0] == "tenant" else "this subject (no tenant)"
            return (
                f"{whose} has {self.max_streams_per_tenant} live streams open, the most one tenant "
                "may: close one, then retry"
            )
        if not who.operator and sum(n for h, n in held if not h.operator) >= shared:
            return (
                f"the {shared} live streams open to tenants are taken (the other "
                f"{self.admin_streams} are kept for operators, admins without a tenant): retry later"
            )
        if sum(n for _, n in held) >= self.max_streams:
            return f"all {self.max_streams} live streams are taken: retry later"
        return None

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    def _admin(self, request: Request) -> Actor | Response:
        """The admin asking about dead letters, or the answer when it is none (or none are served)."""
        actor = authenticated(self.executor, request)
        if isinstance(actor, Actor) and (actor.kind != "admin" or actor.bound is not None):
            return JSONResponse({"error": "dead letters are for admins"}, status_code=403)
        if self.dlq is None:
            return JSONResponse({"error": "no dead-letter topic is served here"}, status_code=404)
        return actor

    async def dead_letters(self, request: Request) -> Response:
        """``GET /ops/dlq``: the newest dead letters an admin may see (a tenant's admin: those
        its tenant's actors sent), each by its size and SHA-256, and its command with the spec's
        sensitive fields redacted when it is one of a spec installed here (no raw bytes)."""
        actor = self._admin(request)
        if isinstance(actor, Response):
            return actor
        assert self.dlq is not None  # _admin answered otherwise
        try:
            limit = _int(request, "limit", low=1, high=MAX_PAGE) or DEFAULT_PAGE
        except BadQuery as exc:
            return _bad(str(exc))
        registry = self.executor.registry

        def show(letter: DeadLetter, value: bytes) -> Preview | None:
            """Redacted as the audit redacts; not even parsed when this admin will not see it."""
            return redacted_preview(value, registry) if _administers_letter(actor, letter.sender) else None

        try:
            letters = await self.dlq.newest(limit if actor.tenant_id is None else MAX_PAGE, show)
        except Exception:
            _log.warning("could not read the dead-letter topic", exc_info=True)
            return JSONResponse({"error": "the broker is unavailable; try again"}, status_code=503)
        shown = [d.to_json() for d in letters if _administers_letter(actor, d.sender)][:limit]
        return JSONResponse({"deadLetters": shown}, headers={"Cache-Control": "no-store"})

    async def replay(self, request: Request) -> Response:
        """``POST /ops/dlq/replay`` ``{"entries": [{"partition": 0, "offset": 7}, ...]}``: each
        entry back on the commands topic, as ``oprunner dlq replay`` does it."""
        actor = self._admin(request)
        if isinstance(actor, Response):
            return actor
        assert self.dlq is not None  # _admin answered otherwise
        try:
            body = _json.loads(await read_body(request, REPLAY_BODY_BYTES))
            where = [(int(e["partition"]), int(e["offset"])) for e in body["entries"]]
            if not 0 < len(where) <= MAX_PAGE or any(p < 0 or o < 0 for p, o in where):
                raise ValueError
        except (ValueError, KeyError, TypeError, BodyTooLarge, BodyNotSent):
            return _bad(f'body: {{"entries": [{{"partition": P, "offset": O}}, ...]}}, 1 to {MAX_PAGE}')
        token = bearer(request.headers.get("authorization"))
        try:
            found = await self.dlq.find(where)
            letters = [d for d in found if _administers_letter(actor, d.sender)]
            runnable = [d for d in letters if d.header("dlq-truncated") != "true"]
            await self.dlq.replay(runnable, token, (actor.user_id, actor.tenant_id, actor.kind))
        except Exception:
            _log.warning("could not replay dead letters", exc_info=True)
            return JSONResponse(
                {"error": "the broker is unavailable; nothing is known replayed"}, status_code=503
            )
        done = {(d.partition, d.offset) for d in runnable}
        cut = {(d.partition, d.offset) for d in letters} - done

        def entries(keys: set[tuple[int, int]]) -> list[dict[str, int]]:
            return [{"partition": p, "offset": o} for p, o in sorted(keys)]

        return JSONResponse(
            {
                "replayed": entries(done),
                "truncated": entries(cut),  # cut short when dead-lettered: not the command it was
                "notFound": entries(set(where) - done - cut),  # or not this admin's to replay
            }
        )

    async def specs(self, request: Request) -> Response:
        """The catalog: every spec's metadata, schemas, policy and error codes, made and
        encoded once (the registry does not change while it is served): an anonymous GET
        costs sending it, not a schema generation per spec."""
        if self._catalog is None:
            out = []
            for spec in self.executor.registry:
                described = spec.describe()
                described["sensitive"] = spec.sensitive_fields()
                described["deprecated"] = spec.deprecated
                out.append(described)
            self._catalog = _json.dumps({"specs": out})
        return Response(self._catalog, media_type="application/json")
