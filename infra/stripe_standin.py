"""Run localstripe as a Stripe stand-in on loopback: ``python -m infra.stripe_standin --port N``.

localstripe's own command binds every interface, pickles its state into /tmp after every
write and ignores ``Idempotency-Key``. This launcher binds 127.0.0.1, keeps state in memory
only, and replays the first response for a repeated ``Idempotency-Key`` on a POST, as real
Stripe does, so "one PaymentIntent per command" can be checked against it. It also gives a
PaymentIntent the ``amount_received`` real Stripe reports (localstripe has none), which the
billing app records payments by.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from aiohttp import web


def build_app() -> web.Application:
    from localstripe import resources, server

    resources.Store.dump_to_disk = lambda self: None  # type: ignore[method-assign]
    resources.Store.try_load_from_disk = lambda self: None  # type: ignore[method-assign]
    resources.PaymentIntent.amount_received = property(  # type: ignore[attr-defined]
        lambda self: self.amount if self.status == "succeeded" else 0
    )
    seen: dict[tuple[str, str, str], tuple[int, bytes, str]] = {}
    locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    @web.middleware
    async def idempotency(request: web.Request, handler: Any) -> web.StreamResponse:
        key = request.headers.get("Idempotency-Key")
        if request.method != "POST" or not key:
            return await handler(request)  # type: ignore[no-any-return]
        cache_key = (request.headers.get("Authorization", ""), request.path, key)
        async with locks.setdefault(cache_key, asyncio.Lock()):
            if cache_key in seen:
                status, body, content_type = seen[cache_key]
                response = web.Response(status=status, body=body, content_type=content_type)
                response.headers["Idempotent-Replayed"] = "true"
                return response
            response = await handler(request)
            if isinstance(response, web.Response) and response.status < 500 and response.body is not None:
                body = response.body if isinstance(response.body, bytes) else bytes(response.body)
                seen[cache_key] = (response.status, body, response.content_type)
            return response  # type: ignore[no-any-return]

    app = server.app
    app.middlewares.insert(0, idempotency)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8420)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    web.run_app(build_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
