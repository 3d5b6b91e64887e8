"""Documents generated from the specs: JSON Schema per spec, AsyncAPI for the topics, OpenAPI
for the HTTP surface, and a Markdown catalog. The specs are the single source."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .envelope import MAX_ID_LENGTH
from .registry import OperationRegistry
from .settings import Settings
from .spec import OperationSpec

OPENAPI_PATH = "/openapi.json"
"""Where ``serve`` serves the OpenAPI document."""

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


# The OpenAPI document describes what ``infra.http`` really answers: every status a path can
# give and the body it sends with it. Three body shapes exist: an operation's result (what the
# executor decided, with ``commandId`` and ``idempotencyKey``), a refusal at the door (bad JSON,
# a bad header, too large, the store unavailable: ``{status: "rejected", error}``, no command
# id), and the plain ``{error: "..."}`` of the runs and webhook endpoints.
_COMPONENTS: dict[str, Any] = {
    "FieldError": {
        "type": "object",
        "required": ["field", "message", "type"],
        "properties": {
            "field": {"type": "string", "description": "wire name (dotted path) of the field"},
            "message": {"type": "string"},
            "type": {"type": "string", "description": "the rule that failed, e.g. missing, greater_than"},
        },
    },
    "Error": {
        "type": "object",
        "description": "Why a command did not succeed; a domain failure may add its own details.",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string"},
            "message": {"type": "string"},
            "fields": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/FieldError"},
                "description": "INVALID_INPUT only: each field that failed",
            },
        },
    },
    "Refusal": {
        "type": "object",
        "description": "A request refused before it became a command (bad JSON, a bad header, too "
        "large, the store unavailable), or a command's own outcome.",
        "required": ["status", "error"],
        "properties": {
            "status": {"enum": ["rejected", "denied", "failed"]},
            "error": {"$ref": "#/components/schemas/Error"},
            "commandId": {"type": "string"},
            "idempotencyKey": {"type": "string"},
        },
    },
    "Message": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "Run": {
        "type": "object",
        "description": "A command's run: `pending` (accepted, not started), `running`, or its outcome. "
        "A command that claimed no run (rejected, denied) is shown from its audit entry.",
        "required": ["commandId", "idempotencyKey", "op", "status", "result"],
        "properties": {
            "commandId": {"type": "string"},
            "idempotencyKey": {"type": ["string", "null"]},
            "op": {"type": "string", "description": "empty while pending"},
            "status": {"enum": ["pending", "running", "succeeded", "failed", "rejected", "denied"]},
            "result": {
                "description": "the result data; null until there is an outcome",
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["status"],
                        "properties": {
                            "status": {"enum": ["succeeded", "failed", "rejected", "denied"]},
                            "output": {"type": "object"},
                            "error": {
                                "type": "object",
                                "required": ["code"],
                                "properties": {
                                    "code": {"type": "string"},
                                    "message": {"type": ["string", "null"]},
                                },
                            },
                        },
                    },
                    {"type": "null"},
                ],
            },
            "attempts": {"type": ["integer", "null"], "description": "null: no run was claimed"},
            "createdAt": {"type": ["string", "null"], "format": "date-time"},
            "completedAt": {"type": ["string", "null"], "format": "date-time"},
            "correlationId": {"type": ["string", "null"]},
            "traceId": {"type": ["string", "null"], "description": "the W3C trace id it ran in"},
            "causedBy": {
                "type": ["string", "null"],
                "description": "the command whose handler sent this one (ctx.send), as its causationid says",
            },
            "audit": {
                "type": "array",
                "description": "its audit entries that the caller may see, oldest first, with the "
                "input as audited (sensitive fields redacted)",
                "items": {"$ref": "#/components/schemas/AuditEntry"},
            },
        },
    },
    "AuditEntry": {
        "type": "object",
        "description": "One outcome in the audit log: an entry of the runs list.",
        "required": ["id", "commandId", "op", "status", "recordedAt", "replayed"],
        "properties": {
            "id": {
                "type": "integer",
                "description": "the list's order and cursor, the live stream's event id (drawn when the "
                "entry is written: one may commit after a later one)",
            },
            "commandId": {"type": "string"},
            "op": {"type": "string", "description": "empty for a dead letter"},
            "version": {"type": ["string", "null"]},
            "status": {"enum": ["succeeded", "failed", "rejected", "denied"]},
            "decision": {"type": ["string", "null"]},
            "actorId": {"type": ["string", "null"]},
            "tenant": {"type": ["string", "null"]},
            "correlationId": {"type": ["string", "null"]},
            "traceId": {"type": ["string", "null"]},
            "recordedAt": {"type": "string", "format": "date-time"},
            "attempt": {"type": ["integer", "null"]},
            "durationMs": {"type": ["number", "null"]},
            "error": {"type": ["string", "null"], "description": "the error code"},
            "reason": {"type": ["string", "null"]},
            "replayed": {"type": "boolean", "description": "a stored result sent again"},
            "deprecated": {"type": "boolean"},
            "causedBy": {"type": ["string", "null"], "description": "the command that sent this one"},
            "input": {"description": "as audited: redacted, or only its size and digest"},
            "actor": {"type": ["object", "null"]},
            "deadLetter": {"type": "string"},
        },
    },
}

_RUN_FILTERS = [
    ("op", "operation key"),
    ("status", "succeeded, failed, rejected or denied"),
    ("actor", "the actor's subject"),
    ("tenant", "the actor's tenant"),
    ("correlationId", "the command's correlation id"),
    ("commandId", "one command's entries"),
    ("since", "recorded at or after this ISO 8601 time (UTC when no zone is given)"),
    ("until", "recorded before this ISO 8601 time"),
    ("replays", "`true`: include stored results sent again"),
]


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _respond(description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": _json_content(schema), **extra}


def _model_schema(
    model: Any, prefix: str, components: dict[str, Any], *, mode: str = "validation"
) -> dict[str, Any]:
    """A model's JSON Schema whose nested models live in ``components`` (as ``prefix.Name``),
    so every ``$ref`` resolves inside the OpenAPI document."""
    schema: dict[str, Any] = model.model_json_schema(
        by_alias=True, mode=mode, ref_template=f"#/components/schemas/{prefix}.{{model}}"
    )
    definitions = schema.pop("$defs", {})
    if mode == "validation":  # what is sent: no string may hold U+0000 (no store can keep it)
        schema = _without_nul(schema)
        definitions = {name: _without_nul(definition) for name, definition in definitions.items()}
    for name, definition in definitions.items():
        components[f"{prefix}.{name}"] = definition
    return schema


_NO_NUL = "^[^\\x00]*$"


def _without_nul(schema: Any) -> Any:
    """``schema`` with every string refusing U+0000, which the runner rejects as INVALID_INPUT
    wherever it is in a command's data."""
    if isinstance(schema, list):
        return [_without_nul(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _without_nul(value) for key, value in schema.items() if key not in ("default", "examples")}
    out.update({key: schema[key] for key in ("default", "examples") if key in schema})
    types = schema.get("type")
    if types == "string" or (isinstance(types, list) and "string" in types):
        if "pattern" not in out:
            out["pattern"] = _NO_NUL
        else:
            out["allOf"] = [*out.get("allOf", []), {"pattern": _NO_NUL}]
    return out


_COMMAND_HEADER = {
    "Oprunner-Command-Id": {
        "description": "the id of the command this request became",
        "required": True,
        "schema": {"type": "string"},
    }
}


_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait (BUSY)",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
    }
}
_BUSY = "BUSY (too many requests in flight; retry after `Retry-After`)"


def _busy(description: str, *schemas: dict[str, Any]) -> dict[str, Any]:
    """A 503: the path's own (``schemas``), or the server's BUSY refusal, which any path but
    ``/healthz`` may answer when too many requests are in flight."""
    refusal = _ref("Refusal")
    options = [*schemas, refusal] if refusal not in schemas else list(schemas)
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return _respond(description, schema, headers=_RETRY_AFTER)


def _outcome(status: str | list[str], *, output: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body of a command's outcome: its result data with ``commandId`` and ``idempotencyKey``."""
    statuses = [status] if isinstance(status, str) else status
    properties: dict[str, Any] = {
        "status": {"enum": statuses},
        "commandId": {"type": "string"},
        "idempotencyKey": {"type": "string", "description": "as sent, or the command id"},
    }
    required = ["status", "commandId", "idempotencyKey"]
    if output is not None:
        properties["output"] = output
        required.append("output")
    else:
        properties["error"] = _ref("Error")
        required.append("error")
    return {"type": "object", "required": required, "properties": properties}


def _operation_path(registry: OperationRegistry, spec: OperationSpec, components: dict[str, Any]) -> Any:
    prefix = f"{spec.key}.{spec.version}"
    versions = [s.version for s in registry if s.key == spec.key]
    codes = ", ".join(spec.io.errors)
    refusal = _ref("Refusal")
    return {
        "post": {
            "summary": spec.meta.description,
            "description": f"Runs the operation's default version ({spec.version}: the highest one not "
            "deprecated) unless `version` names another, and answers its outcome; with "
            "`Prefer: respond-async`, a command that would be "
            "run is written down and answered 202 at once.",
            "operationId": spec.key,
            "tags": list(spec.meta.tags),
            "security": [] if spec.policy.auth == "public" else [{"bearer": []}],
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "description": "the same key with the same input replays the first outcome",
                    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
                },
                {
                    "name": "Prefer",
                    "in": "header",
                    "description": "`respond-async`: answer 202 and run in the background",
                    "schema": {"type": "string"},
                },
                {
                    "name": "X-Correlation-Id",
                    "in": "header",
                    "schema": {"type": "string", "maxLength": MAX_ID_LENGTH},
                },
                {
                    "name": "traceparent",
                    "in": "header",
                    "description": "W3C trace context; ignored unless well-formed",
                    "schema": {"type": "string"},
                },
                {
                    "name": "version",
                    "in": "query",
                    "description": "the spec version to run; unknown versions answer 404",
                    "schema": {"enum": versions},
                },
            ],
            "requestBody": {
                "required": True,
                "content": _json_content(_model_schema(spec.io.input, f"{prefix}.input", components)),
            },
            "responses": {
                "200": _respond(
                    "succeeded",
                    _outcome(
                        "succeeded",
                        output=_model_schema(
                            spec.io.output, f"{prefix}.output", components, mode="serialization"
                        ),
                    ),
                    headers=_COMMAND_HEADER,
                ),
                "202": _respond(
                    "accepted (`Prefer: respond-async`); poll the Location",
                    {
                        "type": "object",
                        "required": ["status", "commandId"],
                        "properties": {"status": {"const": "accepted"}, "commandId": {"type": "string"}},
                    },
                    headers={
                        "Location": {
                            "description": "the run: `/ops/runs/{commandId}`",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    },
                ),
                "400": _respond(
                    "rejected: INVALID_INPUT (with `error.fields`), or refused at the door: "
                    "INVALID_JSON, INVALID_IDEMPOTENCY_KEY, INVALID_COMMAND",
                    refusal,
                ),
                "401": _respond(
                    "denied: UNAUTHENTICATED (no, bad or expired token)",
                    _outcome("denied"),
                    headers=_COMMAND_HEADER,
                ),
                "403": _respond("denied: FORBIDDEN by policy", _outcome("denied"), headers=_COMMAND_HEADER),
                "404": _respond(
                    "rejected: UNKNOWN_OPERATION (no such version)",
                    _outcome("rejected"),
                    headers=_COMMAND_HEADER,
                ),
                "408": _respond(
                    "refused at the door: REQUEST_TIMEOUT (the body did not arrive in time)",
                    {"anyOf": [refusal, _ref("Message")]},
                ),
                "409": _respond(
                    "rejected: IDEMPOTENCY_CONFLICT (the key was used with other input)",
                    _outcome("rejected"),
                    headers=_COMMAND_HEADER,
                ),
                "413": _respond("refused at the door: TOO_LARGE", refusal),
                "422": _respond(
                    "failed: the operation's domain error" + (f" ({codes})" if codes else ""),
                    _outcome("failed"),
                    headers=_COMMAND_HEADER,
                ),
                "500": _respond(
                    "failed: HANDLER_ERROR (the handler raised) or OUTPUT_INVALID",
                    _outcome("failed"),
                    headers=_COMMAND_HEADER,
                ),
                "503": _busy(
                    "failed: RETRIES_EXHAUSTED, or refused at the door: UNAVAILABLE (the store is "
                    "down; send it again with the same Idempotency-Key) or " + _BUSY,
                    refusal,
                ),
            },
        }
    }


def openapi(
    registry: OperationRegistry,
    *,
    webhook_providers: Sequence[str] | None = None,
    metrics: bool = True,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``serve``'s HTTP surface.

    ``webhook_providers``: the providers configured (the path parameter's values), when known;
    ``metrics``: whether ``/metrics`` is served (``serve`` always serves it).
    """
    components: dict[str, Any] = dict(_COMPONENTS)
    paths: dict[str, Any] = {}
    for spec in registry:
        if f"/ops/{spec.key}" not in paths:  # the default version (highest not deprecated) documents it
            paths[f"/ops/{spec.key}"] = _operation_path(registry, registry.get(spec.key).spec, components)
    message = _ref("Message")
    paths["/ops/runs/{id}"] = {
        "get": {
            "summary": "A run, to its actor or an admin",
            "operationId": "showRun",
            "parameters": [
                {
                    "name": "id",
                    "in": "path",
                    "required": True,
                    "description": "the command id (the `commandId` of a 200 or 202)",
                    "schema": {"type": "string"},
                }
            ],
            "security": [{"bearer": []}],
            "responses": {
                "200": _respond("the run", _ref("Run")),
                "400": _respond("an id no run can have (U+0000)", message),
                "401": _respond("no token, or a bad one", message),
                "404": _respond("no such run visible to the caller", message),
                "503": _busy("the store is unavailable, or " + _BUSY, message),
            },
        }
    }
    text_filter = {"type": "string", "maxLength": 1024, "pattern": "^[^\\u0000]*$"}  # no U+0000
    filters = [
        {"name": name, "in": "query", "required": False, "description": text, "schema": dict(text_filter)}
        for name, text in _RUN_FILTERS
    ]
    filters[1]["schema"] = {"enum": ["succeeded", "failed", "rejected", "denied"]}
    for at in filters[6:8]:
        at["schema"] = {"type": "string", "format": "date-time"}
    filters[8]["schema"] = {"enum": ["true", "false"]}
    paging = [
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "description": "entries per page (default 50)",
            "schema": {"type": "integer", "minimum": 1, "maximum": 200},
        },
        {
            "name": "cursor",
            "in": "query",
            "required": False,
            "description": "the `next` of the page before",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        },
    ]
    paging.append(
        {
            "name": "after",
            "in": "query",
            "required": False,
            "description": "live stream only: send the entries after this id (default: from now)",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    )
    listing = {
        "type": "object",
        "required": ["runs", "next"],
        "properties": {
            "runs": {"type": "array", "items": _ref("AuditEntry")},
            "next": {"type": ["string", "null"], "description": "the next page's cursor; null at the end"},
        },
    }
    paths["/ops/runs"] = {
        "get": {
            "summary": "Outcomes the caller may see, newest first; or, with `Accept: text/event-stream`, "
            "a live stream of new ones",
            "description": "A user or service sees their own, a tenant's admin the tenant's, an admin "
            "without a tenant all. As Server-Sent Events, each entry is an `event: run` whose `id` is "
            "the entry's; reconnect with the `Last-Event-ID` header (the last id received, as EventSource "
            "sends it) to go on from it. A stream ends after 15 minutes or with its token; at most 32 are "
            "open, 8 of them kept for admins without a tenant, 8 per tenant and 4 per actor (past "
            "that, 503 with `Retry-After`).",
            "operationId": "listRuns",
            "parameters": filters + paging,
            "security": [{"bearer": []}],
            "responses": {
                "200": {
                    "description": "a page, or the live stream",
                    "content": {
                        "application/json": {"schema": listing},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                "400": _respond("a filter that cannot be used (the message names it)", message),
                "401": _respond("no token, or a bad one", message),
                "503": _busy("the store is unavailable, or " + _BUSY, message),
            },
        }
    }
    dead_letters_only = (
        "for admins: an admin without a tenant sees every one, a tenant's admin those its tenant sent"
    )
    paths["/ops/dlq"] = {
        "get": {
            "summary": "The newest dead letters, with their reasons",
            "description": dead_letters_only + ".",
            "operationId": "listDeadLetters",
            "parameters": [paging[0]],  # limit
            "security": [{"bearer": []}],
            "responses": {
                "200": _respond(
                    "newest first",
                    {
                        "type": "object",
                        "required": ["deadLetters"],
                        "properties": {"deadLetters": {"type": "array", "items": {"type": "object"}}},
                    },
                ),
                "400": _respond("a limit that cannot be used", message),
                "401": _respond("no token, or a bad one", message),
                "403": _respond("not an admin", message),
                "404": _respond("no dead-letter topic is served here", message),
                "503": _busy("the broker is unavailable, or " + _BUSY, message),
            },
        }
    }
    entry = {
        "type": "object",
        "required": ["partition", "offset"],
        "properties": {
            "partition": {"type": "integer", "minimum": 0},
            "offset": {"type": "integer", "minimum": 0},
        },
    }
    entries = {"type": "array", "items": entry}
    paths["/ops/dlq/replay"] = {
        "post": {
            "summary": "Send dead letters back to the commands topic",
            "description": dead_letters_only + ". The admin's token goes back only on what that admin "
            "sent; the rest go back without one. A command replayed twice runs once (same id and key).",
            "operationId": "replayDeadLetters",
            "security": [{"bearer": []}],
            "requestBody": {
                "required": True,
                "content": _json_content(
                    {
                        "type": "object",
                        "required": ["entries"],
                        "properties": {"entries": {**entries, "minItems": 1, "maxItems": 200}},
                    }
                ),
            },
            "responses": {
                "200": _respond(
                    "what was sent back, what was cut short when dead-lettered, what is not there",
                    {
                        "type": "object",
                        "required": ["replayed", "truncated", "notFound"],
                        "properties": {"replayed": entries, "truncated": entries, "notFound": entries},
                    },
                ),
                "400": _respond("not a list of 1 to 200 entries", message),
                "401": _respond("no token, or a bad one", message),
                "403": _respond("not an admin", message),
                "404": _respond("no dead-letter topic is served here", message),
                "503": _busy("the broker is unavailable: nothing is known replayed, or " + _BUSY, message),
            },
        }
    }
    paths["/ops/specs"] = {
        "get": {
            "summary": "The catalog: every operation's metadata, schemas, policy and error codes",
            "operationId": "listSpecs",
            "security": [],
            "responses": {
                "200": _respond(
                    "the catalog",
                    {
                        "type": "object",
                        "required": ["specs"],
                        "properties": {"specs": {"type": "array", "items": {"type": "object"}}},
                    },
                ),
                "503": _busy(_BUSY),
            },
        }
    }
    provider: dict[str, Any] = {"type": "string"}
    if webhook_providers:
        provider = {"enum": sorted(webhook_providers)}
    paths["/webhooks/{provider}"] = {
        "post": {
            "summary": "Provider webhooks: verified, recorded once, turned into a command",
            "operationId": "receiveWebhook",
            "parameters": [
                {
                    "name": "provider",
                    "in": "path",
                    "required": True,
                    "description": "a configured webhook source; others answer 404",
                    "schema": provider,
                }
            ],
            "security": [],
            "requestBody": {
                "description": "the provider's event, as it signed it (Stripe: `Stripe-Signature`; "
                "Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`)",
                "content": _json_content({"type": "object"}),
            },
            "responses": {
                "200": _respond(
                    "taken, or seen before (`duplicate`)",
                    {
                        "type": "object",
                        "required": ["received"],
                        "properties": {
                            "received": {"type": "string", "description": "the event id"},
                            "command": {
                                "type": ["string", "null"],
                                "description": "the operation it became; null for an event only recorded",
                            },
                            "duplicate": {"const": True},
                        },
                    },
                ),
                "400": _respond("not authentic or not well-formed: nothing recorded as valid", message),
                "404": _respond("no webhook source of that name is configured", message),
                "408": _respond("the body did not arrive in time", message),
                "413": _respond("body too large", message),
                "503": _busy(
                    "could not be recorded or queued, or " + _BUSY + "; the provider retries", message
                ),
            },
        }
    }
    paths["/healthz"] = {
        "get": {
            "summary": "Liveness",
            "operationId": "healthz",
            "security": [],
            "responses": {
                "200": _respond(
                    "alive",
                    {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
                )
            },
        }
    }
    ready = {
        "type": "object",
        "required": ["ready", "checks"],
        "properties": {
            "ready": {"type": "boolean"},
            "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
        },
    }
    paths["/readyz"] = {
        "get": {
            "summary": "Readiness: the database and the broker answer",
            "operationId": "readyz",
            "security": [],
            "responses": {"200": _respond("ready", ready), "503": _busy("not ready, or " + _BUSY, ready)},
        }
    }
    if metrics:
        paths["/metrics"] = {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "security": [],
                "responses": {
                    "200": {
                        "description": "the Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "503": _busy(_BUSY),
                },
            }
        }
    paths[OPENAPI_PATH] = {
        "get": {
            "summary": "This document",
            "operationId": "openapi",
            "security": [],
            "responses": {
                "200": _respond("the OpenAPI document", {"type": "object"}),
                "503": _busy(_BUSY),
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "oprunner",
            "version": "1.0.0",
            "description": "The HTTP surface of `oprunner serve`. On any path, a request whose line and "
            "headers do not arrive within the header timeout is answered 408 "
            '`{"error": ...}` and closed, and a header block past the size limit 400 (plain text).',
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
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


def write_docs(
    registry: OperationRegistry, settings: Settings, outdir: Path, *, stylesheet: str | None = None
) -> list[Path]:
    """The JSON documents, the schemas and the Markdown catalog; with ``stylesheet`` (the
    CSS text), also the browsable pages of ``runner.docs_html`` beside it."""
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
    if stylesheet is not None:
        from .docs_html import STYLESHEET, html_pages

        put(outdir / STYLESHEET, stylesheet)
        for name, text in html_pages(registry, settings).items():
            put(outdir / name, text)
    return written
