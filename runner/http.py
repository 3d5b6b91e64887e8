"""The ASGI app ``serve`` runs beside the consumer: health, readiness and webhooks.

Starlette, one route per concern. Request bodies are read with a hard cap, so a huge body
costs at most the cap in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .webhooks import WebhookIngress

ReadinessCheck = Callable[[], Awaitable[bool]]
_log = logging.getLogger("oprunner.http")


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or ``BodyTooLarge`` as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(*, webhooks: WebhookIngress | None, checks: Mapping[str, ReadinessCheck]) -> Starlette:
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
            body = await read_body(request, webhooks.max_bytes)
        except BodyTooLarge:
            return JSONResponse({"error": f"body larger than {webhooks.max_bytes} bytes"}, status_code=413)
        headers = {k.lower(): v for k, v in request.headers.items()}
        status, payload = await webhooks.handle(provider, body, headers)
        return JSONResponse(payload, status_code=status)

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/webhooks/{provider}", webhook, methods=["POST"]),
    ]
    return Starlette(routes=routes)
