"""Documents generated from the specs: JSON Schema per spec, AsyncAPI for the topics, OpenAPI
for the HTTP surface, and a Markdown catalog. The specs are the single source."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .registry import OperationRegistry
from .settings import Settings
from .spec import OperationSpec

_RESULT_DATA: dict[str, Any] = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"enum": ["succeeded", "failed", "rejected", "denied"]},
        "output": {"type": "object"},
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {"type": "array"},
            },
        },
    },
}


def _envelope(data: dict[str, Any], type_: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["specversion", "id", "source", "type", "data"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string"},
            "source": {"type": "string"},
            "type": {"const": type_},
            "opversion": {"type": "string"},
            "idempotencykey": {"type": "string"},
            "correlationid": {"type": "string"},
            "causationid": {"type": "string"},
            "data": data,
        },
    }


def _name(spec: OperationSpec) -> str:
    return f"{spec.key}@{spec.version}"


def asyncapi(registry: OperationRegistry, settings: Settings) -> dict[str, Any]:
    messages: dict[str, Any] = {}
    for spec in registry:
        messages[f"{_name(spec)}.command"] = {
            "name": spec.key,
            "title": spec.meta.description,
            "contentType": "application/cloudevents+json",
            "headers": {"type": "object", "properties": {"authorization": {"type": "string"}}},
            "payload": _envelope(spec.input_schema(), spec.key),
        }
        result = {
            **_RESULT_DATA,
            "properties": {**_RESULT_DATA["properties"], "output": spec.output_schema()},
        }
        messages[f"{_name(spec)}.result"] = {
            "name": f"{spec.key}.result",
            "contentType": "application/cloudevents+json",
            "payload": _envelope(result, f"{spec.key}.result"),
        }

    def refs(suffix: str) -> dict[str, Any]:
        return {k: {"$ref": f"#/components/messages/{k}"} for k in messages if k.endswith(suffix)}

    return {
        "asyncapi": "3.0.0",
        "info": {"title": "oprunner operations", "version": "1.0.0"},
        "servers": {"kafka": {"host": settings.kafka_bootstrap, "protocol": "kafka"}},
        "channels": {
            "commands": {"address": settings.commands_topic, "messages": refs(".command")},
            "results": {"address": settings.results_topic, "messages": refs(".result")},
            "audit": {"address": settings.audit_topic},
            "dlq": {"address": settings.dlq_topic},
        },
        "operations": {
            "sendCommand": {"action": "receive", "channel": {"$ref": "#/channels/commands"}},
            "publishResult": {"action": "send", "channel": {"$ref": "#/channels/results"}},
        },
        "components": {"messages": messages},
    }


def openapi(registry: OperationRegistry) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for spec in registry:
        if f"/ops/{spec.key}" in paths:
            continue  # the latest version documents the path; ?version= selects another
        latest = registry.get(spec.key).spec
        paths[f"/ops/{latest.key}"] = {
            "post": {
                "summary": latest.meta.description,
                "operationId": latest.key,
                "tags": list(latest.meta.tags),
                "security": [] if latest.policy.auth == "public" else [{"bearer": []}],
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": {"type": "string", "maxLength": 255},
                    },
                    {"name": "Prefer", "in": "header", "schema": {"enum": ["respond-async"]}},
                    {"name": "version", "in": "query", "schema": {"type": "string"}},
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": latest.input_schema()}},
                },
                "responses": {
                    "200": {
                        "description": "succeeded",
                        "content": {
                            "application/json": {
                                "schema": {
                                    **_RESULT_DATA,
                                    "properties": {
                                        **_RESULT_DATA["properties"],
                                        "output": latest.output_schema(),
                                    },
                                }
                            }
                        },
                    },
                    "202": {"description": "accepted; poll the Location"},
                    "400": {"description": "rejected: invalid input"},
                    "401": {"description": "denied: no or bad token"},
                    "403": {"description": "denied by policy"},
                    "409": {"description": "rejected: idempotency key reused with other input"},
                    "422": {
                        "description": "failed: " + ", ".join(latest.io.errors)
                        if latest.io.errors
                        else "failed"
                    },
                },
            }
        }
    paths["/ops/runs/{id}"] = {
        "get": {
            "summary": "A run, to its actor or an admin",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "the run"},
                "401": {"description": "no token"},
                "404": {"description": "none visible"},
            },
        }
    }
    paths["/webhooks/{provider}"] = {
        "post": {"summary": "Provider webhooks (stripe)", "responses": {"200": {"description": "taken"}}}
    }
    paths["/healthz"] = {"get": {"responses": {"200": {"description": "alive"}}}}
    paths["/readyz"] = {
        "get": {"responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "oprunner", "version": "1.0.0"},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
        },
    }


def catalog(registry: OperationRegistry) -> str:
    lines = [
        "# Operation catalog",
        "",
        "| operation | version | kind | stability | description |",
        "|---|---|---|---|---|",
    ]
    for spec in registry:
        m = spec.meta
        lines.append(f"| `{spec.key}` | {spec.version} | {spec.kind} | {m.stability} | {m.description} |")
    for spec in registry:
        m = spec.meta
        rules = "; ".join(
            f"{r.resource or '-'} {r.action or ''} if "
            + " or ".join(c if isinstance(c, str) else "callable" for c in r.conditions)
            for r in spec.policy.rules
        )
        lines += [
            "",
            f"## {spec.key} {spec.version}",
            "",
            m.description + ".",
            "",
            f"- goal: {m.goal or '-'}",
            f"- context: {m.context or '-'}",
            f"- owners: {', '.join(m.owners) or '-'}; tags: {', '.join(m.tags) or '-'}",
            f"- policy: auth `{spec.policy.auth}`" + (f"; rules: {rules}" if rules else ""),
            f"- partition key: `{spec.partition_key or '-'}`",
            f"- errors: {', '.join(f'`{code}`' for code in spec.io.errors) or '-'}",
            f"- input fields: {', '.join(f'`{n}`' for n in spec.input_schema().get('properties', {}))}",
            f"- sensitive (redacted in audit): {', '.join(spec.sensitive_fields()) or '-'}",
        ]
    return "\n".join(lines) + "\n"


def write_docs(registry: OperationRegistry, settings: Settings, outdir: Path) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "schemas").mkdir(exist_ok=True)
    written = []

    def put(path: Path, text: str) -> None:
        path.write_text(text)
        written.append(path)

    put(outdir / "asyncapi.json", json.dumps(asyncapi(registry, settings), indent=2))
    put(outdir / "openapi.json", json.dumps(openapi(registry), indent=2))
    put(outdir / "catalog.md", catalog(registry))
    for spec in registry:
        put(outdir / "schemas" / f"{_name(spec)}.input.json", json.dumps(spec.input_schema(), indent=2))
        put(outdir / "schemas" / f"{_name(spec)}.output.json", json.dumps(spec.output_schema(), indent=2))
    return written
