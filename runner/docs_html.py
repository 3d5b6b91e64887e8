"""Browsable pages of the docs ``oprunner docs --html`` writes and ``serve`` shows at ``/docs/``.

Static HTML, one page each for the catalog, the HTTP API (OpenAPI) and the topics
(AsyncAPI), made from the same documents as the JSON files, with the console's stylesheet:
nothing from a CDN and no script, so they open from a disk or a server with no network.
Everything from a spec is escaped.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from .docs import asyncapi, openapi
from .registry import OperationRegistry
from .settings import Settings

STYLESHEET = "console.css"
PAGES = ("index.html", "catalog.html", "http.html", "topics.html")


def _page(title: str, body: str, stylesheet: str) -> str:
    nav = " ".join(
        f'<a href="{href}">{label}</a>'
        for href, label in (
            ("index.html", "Docs"),
            ("catalog.html", "Operations"),
            ("http.html", "HTTP API"),
            ("topics.html", "Topics"),
        )
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{escape(title)} · oprunner</title><link rel="icon" href="data:,">'
        f'<link rel="stylesheet" href="{escape(stylesheet)}"></head><body>'
        f'<header><h1>oprunner</h1><nav aria-label="Docs">{nav}</nav></header>'
        f"<main><h2>{escape(title)}</h2>{body}</main></body></html>\n"
    )


def _json(value: Any) -> str:
    return f"<pre>{escape(json.dumps(value, indent=2))}</pre>"


def _facts(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(
        f"<dt>{escape(k)}</dt><dd>{escape(str(v) if v not in (None, '') else '-')}</dd>" for k, v in rows
    )
    return f'<dl class="facts">{cells}</dl>'


def _catalog(registry: OperationRegistry) -> str:
    parts = []
    for spec in registry:
        d = spec.describe()
        rules = "; ".join(
            f"{r['resource'] or '-'} {r['action']} if {' or '.join(r['condition'])}"
            for r in d["policy"]["rules"]
        )
        errors = "; ".join(f"{code}: {text}" for code, text in d["errors"].items())
        anchor = escape(f"{spec.key}-{spec.version}")
        parts.append(
            f'<section id="{anchor}"><h3>{escape(spec.key)} {escape(spec.version)}</h3>'
            f"<p>{escape(d['description'])}</p>"
            + _facts(
                [
                    ("kind", d["kind"]),
                    ("stability", d["stability"]),
                    ("goal", d["goal"]),
                    ("context", d["context"]),
                    ("owners", ", ".join(d["owners"])),
                    ("tags", ", ".join(d["tags"])),
                    ("auth", d["policy"]["auth"]),
                    ("rules", rules),
                    ("partition key", d["partitionKey"]),
                    ("sensitive (redacted in audit)", ", ".join(spec.sensitive_fields())),
                    ("error codes", errors),
                ]
            )
            + f"<details><summary>Input schema</summary>{_json(d['input'])}</details>"
            f"<details><summary>Output schema</summary>{_json(d['output'])}</details></section>"
        )
    index = "".join(
        f'<li><a href="#{escape(f"{s.key}-{s.version}")}">{escape(s.key)} {escape(s.version)}</a> '
        f'<span class="muted">{escape(s.meta.description)}</span></li>'
        for s in registry
    )
    return f'<ul class="toc">{index}</ul>' + "".join(parts)


def _http(document: dict[str, Any]) -> str:
    parts = [f"<p>{escape(document['info'].get('description', ''))}</p>"]
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            params = "".join(
                f"<li><code>{escape(p['name'])}</code> ({escape(p['in'])}"
                f"{', required' if p.get('required') else ''}): {escape(p.get('description', ''))}</li>"
                for p in op.get("parameters", [])
            )
            responses = "".join(
                f"<li><code>{escape(code)}</code> {escape(r.get('description', ''))}</li>"
                for code, r in op.get("responses", {}).items()
            )
            secured = "bearer token" if op.get("security") else "none"
            parts.append(
                f"<section><h3><code>{escape(method.upper())} {escape(path)}</code></h3>"
                f"<p>{escape(op.get('summary', ''))}</p>"
                + (f"<p>{escape(op['description'])}</p>" if op.get("description") else "")
                + _facts([("operation id", op.get("operationId")), ("authentication", secured)])
                + (f"<h4>Parameters</h4><ul>{params}</ul>" if params else "")
                + (f"<h4>Responses</h4><ul>{responses}</ul>" if responses else "")
                + (
                    f"<details><summary>Request body</summary>{_json(op['requestBody'])}</details>"
                    if "requestBody" in op
                    else ""
                )
                + "</section>"
            )
    parts.append(f"<details><summary>Schemas</summary>{_json(document['components']['schemas'])}</details>")
    return "".join(parts)


def _topics(document: dict[str, Any]) -> str:
    parts = []
    messages = document["components"]["messages"]
    for name, channel in document["channels"].items():
        listed = "".join(
            f"<li><code>{escape(ref['$ref'].rsplit('/', 1)[-1])}</code></li>"
            for ref in channel.get("messages", {}).values()
        )
        parts.append(
            f"<section><h3>{escape(name)}: <code>{escape(channel['address'])}</code></h3>"
            f"<p>{escape(channel.get('description', ''))}</p><ul>{listed}</ul></section>"
        )
    for name, message in messages.items():
        parts.append(
            f"<details><summary><code>{escape(name)}</code> {escape(message.get('title', ''))}</summary>"
            f"{_json(message.get('payload', {}))}</details>"
        )
    return "".join(parts)


def html_pages(
    registry: OperationRegistry,
    settings: Settings,
    stylesheet: str = STYLESHEET,
    openapi_document: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Each page's file name and text; ``stylesheet`` is where the pages find the CSS;
    ``openapi_document``, the HTTP API's (``serve`` gives the one it serves)."""
    index = (
        "<p>The contract of this app's operations, from its specs.</p><ul>"
        '<li><a href="catalog.html">Operations</a>: metadata, policy, error codes, schemas</li>'
        '<li><a href="http.html">HTTP API</a> (<a href="openapi.json">openapi.json</a>)</li>'
        '<li><a href="topics.html">Topics</a> (<a href="asyncapi.json">asyncapi.json</a>)</li></ul>'
    )
    return {
        "index.html": _page("Docs", index, stylesheet),
        "catalog.html": _page("Operations", _catalog(registry), stylesheet),
        "http.html": _page("HTTP API", _http(openapi_document or openapi(registry)), stylesheet),
        "topics.html": _page("Topics", _topics(asyncapi(registry, settings)), stylesheet),
    }
