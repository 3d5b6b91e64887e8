"""The ASGI app ``serve`` runs beside the consumer: health, readiness and webhooks.

Starlette, one route per concern. Request bodies are read with a hard cap, so a huge body
costs at most the cap in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runner import _json
from runner.auth import Actor, actor_from_audit, bearer
from runner.docs import OPENAPI_PATH, openapi
from runner.envelope import (
    MAX_ID_LENGTH,
    CommandEnvelope,
    check_attributes,
    parse_command,
    valid_traceparent,
)
from runner.envelope import command as new_command
from runner.errors import AuthError, EnvelopeError, StoreUnavailable, UnknownOperation
from runner.executor import Executor, Outcome
from runner.policy import administers
from runner.store import Accepted, RunFilter, run_key
from runner.webhooks import WebhookIngress

from . import console
from ._requests import BODY_TIMEOUT, BodyNotSent, BodyTooLarge, authenticated, read_body
from .runs import MAX_PAGE, RunsApi, visible_to

ReadinessCheck = Callable[[], Awaitable[bool]]
_log = logging.getLogger("oprunner.http")


class _AnyText(Convertor[str]):
    """A path segment of any characters, ``/`` and line breaks too: a command id is whatever its
    producer chose (Starlette's ``str`` stops at ``/``, its ``path`` at a line break)."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anytext", _AnyText())


def _not_sent(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=408, headers={"Connection": "close"})


def http_status(data: Mapping[str, Any]) -> int:
    """The HTTP status of a result: 200 succeeded; 4xx for what the caller must change."""
    status, code = data["status"], str((data.get("error") or {}).get("code"))
    if status == "succeeded":
        return 200
    if status == "denied":
        return 401 if code == "UNAUTHENTICATED" else 403
    if status == "rejected":
        return {"UNKNOWN_OPERATION": 404, "IDEMPOTENCY_CONFLICT": 409}.get(code, 400)
    return {"HANDLER_ERROR": 500, "OUTPUT_INVALID": 500, "RETRIES_EXHAUSTED": 503}.get(code, 422)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"status": "rejected", "error": {"code": code, "message": message}}, status_code=status
    )


# A response sent before the request body was read ends the connection: the unread rest of
# the body would otherwise be where the client's next request on it is expected. The server
# drains what the client still sends before closing (runner/cli/http_server.py), so the
# client reads this answer rather than a reset.
def _too_large(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=413, headers={"Connection": "close"})


@dataclass
class OpsApi:
    """``POST /ops/{key}`` and ``GET /ops/runs/{id}``: the same pipeline as the Kafka path."""

    executor: Executor
    deliver: Callable[[Outcome], Awaitable[None]]  # publish the outcome's events
    max_bytes: int = 1024 * 1024
    accept_lease: float = 10.0  # how long the accepting process alone may run what it accepted
    body_timeout: float = BODY_TIMEOUT
    max_background: int = 256
    """Accepted (202) commands running here at once; past it, 503 and ``Retry-After``."""
    publish_wait: float = 2.0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _running: set[str] = field(default_factory=set)  # ids of accepted commands running here
    _publishing: set[asyncio.Future[None]] = field(default_factory=set)

    async def run(self, request: Request) -> Response:
        try:
            body = await read_body(request, self.max_bytes, self.body_timeout)
        except BodyTooLarge:
            message = f"body larger than {self.max_bytes} bytes"
            return _too_large({"status": "rejected", "error": {"code": "TOO_LARGE", "message": message}})
        except BodyNotSent:
            message = f"the body did not arrive within {self.body_timeout:g} s"
            return _not_sent({"status": "rejected", "error": {"code": "REQUEST_TIMEOUT", "message": message}})
        try:
            data = _json.loads(body) if body.strip() else {}
        except ValueError as exc:
            return _error(400, "INVALID_JSON", f"body is not JSON{_json.where(exc)}")
        key = request.headers.get("idempotency-key")
        if key is not None and not 0 < len(key) <= MAX_ID_LENGTH:
            return _error(
                400, "INVALID_IDEMPOTENCY_KEY", f"Idempotency-Key must be 1 to {MAX_ID_LENGTH} characters"
            )
        try:  # the Kafka path's rules for both answers (what is kept for a 202 is read again)
            command = self.command(
                request.path_params["key"],
                data,
                version=request.query_params.get("version"),
                idempotency_key=key,
                correlation_id=request.headers.get("x-correlation-id") or None,
                traceparent=valid_traceparent(request.headers.get("traceparent")),
            )
        except EnvelopeError as exc:
            return _error(400, "INVALID_COMMAND", exc.reason)
        encoded = command.encode()
        token = bearer(request.headers.get("authorization"))
        accept, actor = self._acceptable(command, token)
        if accept and "respond-async" in request.headers.get("prefer", ""):
            if len(self._tasks) >= self.max_background:
                busy = {"code": "BUSY", "message": "too many accepted commands are running"}
                return JSONResponse(
                    {"status": "rejected", "error": busy}, status_code=503, headers={"Retry-After": "1"}
                )
            try:
                kept = Accepted(command.id, encoded, actor.audit() if actor else None)
                await self.executor.store.accept(kept, self.accept_lease)
            except Exception:
                _log.warning("could not accept async command %s", command.id, exc_info=True)
                return _error(503, "UNAVAILABLE", "the store is unavailable; send it again")
            self._start(command, actor)
            return JSONResponse(
                {"status": "accepted", "commandId": command.id},
                status_code=202,
                headers={"Location": f"/ops/runs/{command.id}"},
            )
        try:
            outcome = await self.call(command, token)
        except StoreUnavailable:
            return _error(503, "UNAVAILABLE", "the store is unavailable; retry with the same Idempotency-Key")
        return self._respond(command, outcome)

    def command(
        self,
        op: str,
        data: Any,
        *,
        version: str | None = None,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        traceparent: str | None = None,
        source: str = "oprunner.http",
        max_bytes: int | None = None,
    ) -> CommandEnvelope:
        """The command an API call makes (``/ops``, ``/graphql``, MCP), held to the Kafka
        path's rules: ``EnvelopeError`` names what is wrong with it. ``max_bytes`` bounds the
        envelope where no body limit did (MCP's arguments)."""
        command = new_command(
            op,
            data,
            source=source,
            opversion=version,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
            traceparent=traceparent,
        )
        encoded = command.encode()
        check_attributes(command)
        parse_command(encoded, max_bytes=max_bytes or len(encoded))
        return command

    async def call(self, command: CommandEnvelope, token: str | None) -> Outcome:
        """Run one command to its outcome and publish its events, as the Kafka path does;
        ``StoreUnavailable`` when it cannot be decided now (retry with the same key).

        The answer waits for the publish at most ``publish_wait`` seconds: the outcome is
        durable already, and a slow broker must not hold every caller (a GraphQL document's
        mutations run one after another). The publish goes on; what it never does, the
        outbox relay does."""
        outcome = await self.executor.execute(command, token=token)
        publishing = asyncio.ensure_future(self.deliver(outcome))
        self._publishing.add(publishing)
        publishing.add_done_callback(self._publishing.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(publishing), self.publish_wait)
        return outcome

    def _respond(self, command: CommandEnvelope, outcome: Outcome) -> JSONResponse:
        data = outcome.result["data"]
        body = {**data, "commandId": command.id, "idempotencyKey": command.idempotency_key}
        return JSONResponse(body, status_code=http_status(data), headers={"Oprunner-Command-Id": command.id})

    def _acceptable(self, command: CommandEnvelope, token: str | None) -> tuple[bool, Actor | None]:
        """Whether a command is worth keeping to run later, and its verified actor (None for
        a public operation called without a token). Not when it will only be rejected or
        denied: that is answered at once, so unauthenticated callers cannot fill the table."""
        try:
            spec = self.executor.registry.get(command.type, command.opversion).spec
        except UnknownOperation:
            return False, None
        if token is None or self.executor.authenticator is None:
            return token is None and spec.policy.auth == "public", None
        try:
            actor = self.executor.authenticator.authenticate(token)
        except AuthError:
            return False, None
        if actor.bound is not None and not actor.bound.admits(command):
            return False, None  # a one-command token on another command: denied at once
        return True, actor

    def _start(self, command: CommandEnvelope, actor: Actor | None) -> None:
        if command.id in self._running:
            return  # still running here: its lease ran out under a long handler
        self._running.add(command.id)
        task = asyncio.create_task(self._run_accepted(command, actor))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._running.discard(command.id))

    async def _run_accepted(self, command: CommandEnvelope, actor: Actor | None) -> None:
        """Run an accepted command to its outcome; on any failure it stays accepted, and a
        sweep (here or in another process) runs it once its claim runs out."""
        try:
            outcome = await self.executor.execute(command, actor=actor)
            await self.deliver(outcome)
            await self.executor.store.finish_accepted(command.id)
        except Exception:
            _log.warning("accepted command %s did not complete; it will be swept", command.id, exc_info=True)

    async def sweep(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        """Run accepted commands whose process went away (their claim ran out)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if stop.is_set():
                return
            try:
                taken = await self.executor.store.take_accepted(32, self.accept_lease)
            except Exception:
                _log.warning("could not sweep accepted commands", exc_info=True)
                continue
            for accepted in taken:
                try:
                    command = parse_command(accepted.command, max_bytes=len(accepted.command))
                    self._start(command, actor_from_audit(accepted.actor))
                except Exception:  # it parsed at the door; whatever this is, log it and go on
                    _log.exception("accepted command %s cannot be run", accepted.command_id)

    async def show(self, request: Request) -> Response:
        actor = authenticated(self.executor, request)
        if isinstance(actor, Response):
            return actor
        run_id = request.path_params["id"]
        if "\x00" in run_id:
            return JSONResponse({"error": "a run id has no U+0000"}, status_code=400)
        not_found = JSONResponse({"error": f"no run {run_id!r} visible to you"}, status_code=404)
        try:
            key = run_key(actor.tenant_id, actor.user_id, run_id, kind=actor.kind)
            run = await self.executor.store.find_run(run_id, key)
        except Exception:
            _log.warning("could not look up run %r", run_id[:255], exc_info=True)
            return JSONResponse({"error": "the store is unavailable; try again"}, status_code=503)
        if run is None:
            return not_found
        if not _may_see(actor, run):
            return not_found  # another actor's run: indistinguishable from none
        body = run.to_json()
        where = visible_to(actor, RunFilter(command_id=run.command_id, replays=True))
        try:  # the outcome and its replays, each as audited: only the entries this actor may see
            trail = await self.executor.store.list_runs(where, after=0, limit=MAX_PAGE) if where else []
        except Exception:
            _log.warning("could not read the audit trail of %r", run_id[:255], exc_info=True)
            return JSONResponse({"error": "the store is unavailable; try again"}, status_code=503)
        body["audit"] = [entry.to_json(detail=True) for entry in trail]
        body["correlationId"] = next((e.correlation_id for e in trail if e.correlation_id), None)
        body["traceId"] = next((e.trace_id for e in trail if e.trace_id), None)
        body["causedBy"] = next((e.data["causedBy"] for e in trail if e.data.get("causedBy")), None)
        return JSONResponse(body)

    async def drain(self, within: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=within)


def _may_see(actor: Actor, run: Any) -> bool:
    """Its own actor (same subject, tenant and kind: a user is not the service of its name)
    sees a run; a one-command token only its own command's run; an admin with a tenant that
    tenant's runs; an admin without one, all."""
    if actor.ops is not None and run.op not in actor.ops:
        return False  # a token limited to some operations sees their runs only
    mine = (run.actor_id, run.tenant_id, run.actor_kind) == (actor.user_id, actor.tenant_id, actor.kind)
    if actor.bound is not None:
        return bool(run.command_id == actor.bound.command_id and mine)
    if mine:
        return True
    return administers(actor, run.tenant_id)


def build_app(
    *,
    webhooks: WebhookIngress | None,
    checks: Mapping[str, ReadinessCheck],
    ops: OpsApi | None = None,
    runs: RunsApi | None = None,
    extra_routes: list[Route] | None = None,
    body_timeout: float = BODY_TIMEOUT,
    docs: Callable[[dict[str, Any]], list[Route]] | None = None,
) -> Starlette:
    """``docs``: routes made from the OpenAPI document served (``serve``'s ``/docs/`` pages)."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        results: dict[str, bool] = {}
        for name, check in checks.items():
            try:
                results[name] = await check()
            except Exception:
                results[name] = False
        ready = all(results.values())
        return JSONResponse({"ready": ready, "checks": results}, status_code=200 if ready else 503)

    async def webhook(request: Request) -> Response:
        provider = request.path_params["provider"]
        if webhooks is None or provider not in webhooks.sources:
            return JSONResponse({"error": f"no webhook endpoint for {provider!r}"}, status_code=404)
        try:
            body = await read_body(request, webhooks.max_bytes, body_timeout)
        except BodyTooLarge:
            return _too_large({"error": f"body larger than {webhooks.max_bytes} bytes"})
        except BodyNotSent:
            return _not_sent({"error": f"the body did not arrive within {body_timeout:g} s"})
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            status, payload = await webhooks.handle(provider, body, headers)
        except Exception:  # the inbox (the store) failed: nothing was taken, the provider retries
            _log.warning("could not take a %s delivery", provider, exc_info=True)
            return JSONResponse({"error": "could not record the event; retry later"}, status_code=503)
        return JSONResponse(payload, status_code=status)

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/webhooks/{provider}", webhook, methods=["POST"]),
        *(extra_routes or []),
    ]
    if ops is not None:
        # The OpenAPI document of exactly this app: its operations, its webhook providers.
        document = openapi(
            ops.executor.registry,
            webhook_providers=sorted(webhooks.sources) if webhooks is not None else [],
            metrics=any(route.path == "/metrics" for route in extra_routes or []),
        )

        encoded = _json.dumps(document)  # once: a request costs no more than sending it

        async def openapi_document(request: Request) -> Response:
            return Response(encoded, media_type="application/json")

        from .graphql import GraphQLApi  # it builds on OpsApi, defined here

        graphql = GraphQLApi(ops, body_timeout=body_timeout)
        routes += [
            Route("/graphql", graphql.handle, methods=["POST"]),
            *(docs(document) if docs is not None else []),
            Route(OPENAPI_PATH, openapi_document, methods=["GET"]),
            *(runs.routes() + console.routes() if runs is not None else []),
            Route("/ops/runs/{id:anytext}", ops.show, methods=["GET"]),
            Route("/ops/{key}", ops.run, methods=["POST"]),
        ]
    return Starlette(routes=routes, exception_handlers={404: _no_route, 405: _no_route})


async def _no_route(request: Request, exc: Exception) -> Response:
    """A path or method nothing here answers: JSON in this API's words, not the framework's
    plain text (405 keeps its ``Allow`` header)."""
    status = getattr(exc, "status_code", 404)
    path = request.url.path[:200]  # JSON escapes what it holds
    what = "no such path" if status == 404 else f"{request.method} is not served at this path"
    message = f"{what}: {path} (the routes are in {OPENAPI_PATH})"
    return JSONResponse({"error": message}, status_code=status, headers=getattr(exc, "headers", None))
