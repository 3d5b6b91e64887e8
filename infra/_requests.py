"""What the HTTP endpoints read from a request the same way: its body, within bounds, and
the actor of its bearer token."""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from runner.auth import Actor, bearer
from runner.errors import AuthError
from runner.executor import Executor


class BodyTooLarge(Exception):
    pass


class BodyNotSent(Exception):
    """The client did not send the whole body within the body timeout, or went away."""


BODY_TIMEOUT = 30.0


async def read_body(request: Request, limit: int, timeout: float = BODY_TIMEOUT) -> bytes:
    """The request body, or ``BodyTooLarge`` as soon as it passes ``limit`` bytes, or
    ``BodyNotSent`` when it has not all arrived within ``timeout`` seconds: a client that
    sends half a request must not hold a connection, a task and graceful shutdown for ever."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge
                chunks.append(chunk)
    except (TimeoutError, ClientDisconnect):
        raise BodyNotSent from None
    return b"".join(chunks)


def authenticated(executor: Executor, request: Request) -> Actor | JSONResponse:
    """The verified actor of the request's bearer token, or the 401 that says why not."""
    token = bearer(request.headers.get("authorization"))
    if token is None or executor.authenticator is None:
        return JSONResponse({"error": "a bearer token is required"}, status_code=401)
    try:
        return executor.authenticator.authenticate(token)
    except AuthError as exc:
        return JSONResponse({"error": exc.reason}, status_code=401)
