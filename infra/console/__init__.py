"""The operator console at ``/console``: one page over the runs API, served from this package.

Its assets are files beside this module, read once at start (no CDN, no build step: it works
with no network). Every answer carries a strict Content-Security-Policy: scripts, styles and
requests from this origin only, no inline code, no framing; the page writes what the server
sends as text, never as HTML, so what an outsider put in a command cannot run in it.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runner import _json
from runner.docs import asyncapi
from runner.docs_html import html_pages
from runner.registry import OperationRegistry
from runner.settings import Settings

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
ASSETS = {"console.js": "text/javascript", "console.css": "text/css"}
ASSET_CSS = "/console/assets/console.css"


def _read(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


def stylesheet() -> str:
    return _read("console.css").decode()


def docs_routes(
    registry: OperationRegistry, settings: Settings, openapi_document: dict[str, Any]
) -> list[Route]:
    """``/docs/``: the pages ``oprunner docs --html`` writes, for the app being served."""
    made = html_pages(registry, settings, ASSET_CSS, openapi_document)
    pages = {name: text.encode() for name, text in made.items()}
    documents = {
        "openapi.json": _json.dumps(openapi_document),
        "asyncapi.json": _json.dumps(asyncapi(registry, settings)),
    }

    async def page(request: Request) -> Response:
        name = request.path_params.get("name") or "index.html"
        if name in pages:
            return Response(pages[name], media_type="text/html; charset=utf-8", headers=HEADERS)
        if name in documents:
            return Response(documents[name], media_type="application/json", headers=HEADERS)
        return Response(b"not found", status_code=404, media_type="text/plain", headers=HEADERS)

    return [Route("/docs/", page, methods=["GET"]), Route("/docs/{name}", page, methods=["GET"])]


def routes() -> list[Route]:
    page = _read("index.html")
    assets = {name: (_read(name), media) for name, media in ASSETS.items()}

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=HEADERS)

    async def asset(request: Request) -> Response:
        found = assets.get(request.path_params["name"])
        if found is None:
            return Response(b"not found", status_code=404, media_type="text/plain", headers=HEADERS)
        body, media = found
        return Response(body, media_type=f"{media}; charset=utf-8", headers=HEADERS)

    return [
        Route("/console", index, methods=["GET"]),
        Route("/console/", index, methods=["GET"]),
        Route("/console/assets/{name}", asset, methods=["GET"]),
    ]
