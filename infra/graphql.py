"""``/graphql``: the registry as a GraphQL schema, built in code with graphql-core.

graphql-core, not Strawberry or Ariadne: both of those start from Python classes or SDL
written by hand, and here the types exist only at run time, in the specs' JSON Schemas.
graphql-core is the reference implementation those two are built on, and builds a schema
from objects directly.

One mutation per command (and event), one query per query spec, named by the key in
camelCase (``billing.capturePayment`` → ``billingCapturePayment``) for the key's default
version, and ``billingCapturePayment_v1_0_0`` for each other version, with that version's
own types. Each takes ``input`` (the spec's input type, field names as on the wire) and an
optional ``idempotencyKey``, and returns ``<Op>Result``: ``status``, ``output`` (the spec's output type),
``error`` (``code``; ``declared``, the code as an enum of those the spec declares;
``message``; ``fields``), ``commandId`` and ``idempotencyKey``. The input types are for
clients and introspection: the executor still validates, so an invalid input is a
``rejected`` result with field errors, audited, as on every path.

A call is an ``/ops`` call (``OpsApi.command`` and ``OpsApi.call``): the actor from the
``Authorization`` header, the same statuses, the same audit. A document may hold at most
``MAX_ROOT_FIELDS`` root fields, fragments expanded (each is a command); mutations in it run
one after another, as GraphQL says.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import re
from collections.abc import Mapping
from typing import Any

import orjson
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLArgument,
    GraphQLBoolean,
    GraphQLEnumType,
    GraphQLError,
    GraphQLField,
    GraphQLFloat,
    GraphQLID,
    GraphQLInputField,
    GraphQLInputObjectType,
    GraphQLInt,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLResolveInfo,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLString,
    InlineFragmentNode,
    OperationDefinitionNode,
    OverlappingFieldsCanBeMergedRule,
    SelectionSetNode,
    execute,
    execute_sync,
    get_introspection_query,
    parse,
    specified_rules,
    validate,
    value_from_ast_untyped,
)
from graphql.error import GraphQLSyntaxError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from runner import _json
from runner.auth import bearer
from runner.envelope import MAX_ID_LENGTH, valid_traceparent
from runner.errors import EnvelopeError, StoreUnavailable
from runner.registry import OperationRegistry
from runner.spec import OperationSpec

from ._requests import BODY_TIMEOUT, BodyNotSent, BodyTooLarge, read_body
from ._worker import GRAPHQL, on_loop
from .graphql_cost import BUDGET_EXCEEDED, Budget, coded, expanded_fields, first_conflict, limits_for
from .http import OpsApi

MAX_ROOT_FIELDS = 32
"""Root fields (calls) in one document: aliases would otherwise let one request run
thousands of commands."""
MAX_TOKENS = 2_000
"""Tokens in one document: a full introspection query is under 200, 32 calls with their
inputs and selections under 1,000. graphql-core stops lexing past it; validation costs
about 30 µs a node, so this bounds it to some 60 ms."""
MAX_FRAGMENTS = 64
"""Fragment definitions in one document: each is visited by several validation rules."""
MAX_FIELDS = 1_000
"""Fields in one document, fragments expanded and aliases counted (a full introspection
query is about 250): checked before validation, whose cost grows with their square."""
MIN_RESOLVED = 10_000
"""Fields one execution may resolve, at least (the demo's full introspection resolves
about 2,000); an app whose own introspection needs more gets twice that."""
MAX_WORKING = 32
"""Documents on the GraphQL worker at once, waiting included; past it, 503 ``BUSY``: the
worker is one thread, and each document waiting for it holds an HTTP request slot."""
MIN_RESPONSE_BYTES = 1 << 20
"""Bytes of one response, at least; likewise raised to twice the app's introspection."""
_NAME = re.compile(r"^[_A-Za-z][_0-9A-Za-z]*$")
_RESERVED = {"true", "false", "null"}  # not enum values in GraphQL
_INT32 = 2**31 - 1
_log = logging.getLogger("oprunner.graphql")


def _untyped(node: Any, variables: Any = None) -> Any:
    return value_from_ast_untyped(node, variables)


def _same(value: Any) -> Any:
    return value


JSON = GraphQLScalarType(
    "JSON",
    description="Any JSON value: where a spec's schema has no GraphQL form (a map, a union).",
    serialize=_same,
    parse_value=_same,
    parse_literal=_untyped,
)
DECIMAL = GraphQLScalarType(
    "Decimal",
    description='A decimal, best sent as a string ("19.99"); whole numbers may be numbers.',
    serialize=_same,
    parse_value=_same,
    parse_literal=_untyped,
)
LONG = GraphQLScalarType(
    "Long",
    description="An integer past GraphQL's 32-bit Int.",
    serialize=_same,
    parse_value=_same,
    parse_literal=_untyped,
)
STATUS = GraphQLEnumType(
    "Status",
    {s: s for s in ("succeeded", "failed", "rejected", "denied")},
    description="What became of the command (the result event's status).",
)
FIELD_ERROR = GraphQLObjectType(
    "FieldError",
    {
        "field": GraphQLField(GraphQLString, description="wire name (dotted path) of the field"),
        "message": GraphQLField(GraphQLString),
        "type": GraphQLField(GraphQLString, description="the rule that failed, e.g. missing, greater_than"),
    },
)


def field_name(key: str) -> str:
    """``billing.capturePayment`` → ``billingCapturePayment``."""
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", key) if p]
    name = parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:]) if parts else "op"
    return name if _NAME.match(name) else f"op_{name}"


def _pascal(key: str) -> str:
    name = field_name(key)
    return name[:1].upper() + name[1:]


class _Types:
    """JSON Schema → GraphQL types, for every spec of one schema (names unique across it)."""

    def __init__(self) -> None:
        self.named: dict[str, Any] = {}
        self._shapes: dict[str, bytes] = {}

    def _name(self, wanted: str, shape: Any) -> tuple[str, bool]:
        """A free type name for ``shape`` (``True``: that type exists already)."""
        encoded = orjson.dumps(shape, option=orjson.OPT_SORT_KEYS)
        name, n = wanted, 1
        while name in self._shapes:
            if self._shapes[name] == encoded:
                return name, True
            n += 1
            name = f"{wanted}{n}"
        self._shapes[name] = encoded
        return name, False

    def convert(self, node: Any, defs: Mapping[str, Any], name: str, *, input: bool) -> Any:
        if not isinstance(node, Mapping):
            return JSON
        if "$ref" in node:
            ref = str(node["$ref"]).rsplit("/", 1)[-1]
            target = defs.get(ref)
            return self.convert(target, defs, ref + ("Input" if input else ""), input=input)
        branches = node.get("anyOf") or node.get("oneOf")
        if branches:
            real = [b for b in branches if not (isinstance(b, Mapping) and b.get("type") == "null")]
            if len(real) == 1:
                return self.convert(real[0], defs, name, input=input)
            kinds = {b.get("type") for b in real if isinstance(b, Mapping)}
            return DECIMAL if kinds == {"string", "integer"} or kinds == {"string", "number"} else JSON
        if "enum" in node:
            values = node["enum"]
            if values and all(isinstance(v, str) and _NAME.match(v) and v not in _RESERVED for v in values):
                type_name, known = self._name(name, values)
                if not known:
                    self.named[type_name] = GraphQLEnumType(
                        type_name, {v: v for v in values}, description=node.get("description")
                    )
                return self.named[type_name]
            return GraphQLString if all(isinstance(v, str) for v in values) else JSON
        kind = node.get("type")
        if kind == "string":
            return GraphQLString
        if kind == "boolean":
            return GraphQLBoolean
        if kind == "number":
            return GraphQLFloat
        if kind == "integer":
            low, high = node.get("minimum", -_INT32 - 1), node.get("maximum", _INT32 + 1)
            return GraphQLInt if low >= -_INT32 - 1 and high <= _INT32 else LONG
        if kind == "array":
            return GraphQLList(self.convert(node.get("items"), defs, name + "Item", input=input))
        if kind == "object" and node.get("properties"):
            return self._object(node, defs, name, input=input)
        return JSON

    def _object(self, node: Mapping[str, Any], defs: Mapping[str, Any], name: str, *, input: bool) -> Any:
        properties: Mapping[str, Any] = node["properties"]
        if not all(_NAME.match(p) for p in properties):
            return JSON  # a wire name GraphQL cannot spell: the whole object travels as JSON
        type_name, known = self._name(name, node)
        if known:
            return self.named[type_name]
        required = set(node.get("required", ()))

        def fields() -> dict[str, Any]:  # a thunk: nested and recursive types resolve lazily
            made: dict[str, Any] = {}
            for prop, sub in properties.items():
                of = self.convert(sub, defs, type_name + prop[:1].upper() + prop[1:], input=input)
                nullable = _nullable(sub)
                description = sub.get("description") if isinstance(sub, Mapping) else None
                if input:
                    must = prop in required and not nullable and "default" not in sub
                    made[prop] = GraphQLInputField(
                        GraphQLNonNull(of) if must else of, description=description
                    )
                else:
                    must = prop in required and not nullable
                    made[prop] = GraphQLField(GraphQLNonNull(of) if must else of, description=description)
            return made

        description = node.get("description")
        made: Any = (
            GraphQLInputObjectType(type_name, fields, description=description)
            if input
            else GraphQLObjectType(type_name, fields, description=description)
        )
        self.named[type_name] = made
        return made


def _nullable(node: Any) -> bool:
    if not isinstance(node, Mapping):
        return True
    branches = node.get("anyOf") or node.get("oneOf") or []
    return (
        any(isinstance(b, Mapping) and b.get("type") == "null" for b in branches)
        or node.get("type") == "null"
    )


def _describe(spec: OperationSpec) -> str:
    meta = spec.meta
    text = meta.description + (f"\n\nGoal: {meta.goal}" if meta.goal else "")
    text += f"\n\nVersion {spec.version}, {meta.stability}; policy: {spec.policy.auth}."
    return f"[deprecated] {text}" if spec.deprecated else text


def build_schema(registry: OperationRegistry) -> GraphQLSchema:
    """The schema of ``registry``: each key's default version (``OperationRegistry.get``) under
    the key's camelCase name, every other version under ``<name>_v<major>_<minor>_<patch>``,
    each with its own version's types, so a pinned caller keeps its contract."""
    types = _Types()
    mutations: dict[str, GraphQLField] = {}
    queries: dict[str, GraphQLField] = {
        "operations": GraphQLField(
            GraphQLNonNull(GraphQLList(GraphQLNonNull(GraphQLString))),
            description="The operation keys this schema serves.",
            resolve=lambda *_: sorted({spec.key for spec in registry}),
        )
    }
    for spec in registry:
        default = registry.get(spec.key).spec
        # the default version under the key's name; every other one pinned, under its own
        suffix = "" if spec is default else "_v" + spec.version.replace(".", "_")
        field = _field(
            types, spec, field_name(spec.key) + suffix, _pascal(spec.key) + suffix.replace("_v", "V", 1)
        )
        (queries if spec.kind == "query" else mutations)[field_name(spec.key) + suffix] = field
    return GraphQLSchema(
        query=GraphQLObjectType("Query", queries),
        mutation=GraphQLObjectType("Mutation", mutations) if mutations else None,
    )


def _field(types: _Types, spec: OperationSpec, name: str, pascal: str) -> GraphQLField:
    key = spec.key
    schema_in, schema_out = spec.input_schema(), spec.output_schema()
    input_type = types.convert(schema_in, schema_in.get("$defs", {}), f"{pascal}Input", input=True)
    output_type = types.convert(schema_out, schema_out.get("$defs", {}), f"{pascal}Output", input=False)
    error_fields: dict[str, GraphQLField] = {
        "code": GraphQLField(GraphQLNonNull(GraphQLString)),
        "message": GraphQLField(GraphQLString),
        "fields": GraphQLField(GraphQLList(GraphQLNonNull(FIELD_ERROR)), description="INVALID_INPUT only"),
        "details": GraphQLField(JSON, description="what a domain failure adds"),
    }
    declared = {code: code for code in spec.io.errors if _NAME.match(code)}
    if declared:
        codes = GraphQLEnumType(
            f"{pascal}ErrorCode",
            dict(declared),
            description=f"The error codes {key} {spec.version} declares.",
        )
        error_fields["declared"] = GraphQLField(
            codes,
            description="The code, when it is one this operation declares (null for the runner's own).",
            resolve=lambda error, _info, known=frozenset(declared): (
                error.get("code") if error.get("code") in known else None
            ),
        )
    result_type = GraphQLObjectType(
        f"{pascal}Result",
        {
            "status": GraphQLField(GraphQLNonNull(STATUS)),
            "output": GraphQLField(output_type),
            "error": GraphQLField(GraphQLObjectType(f"{pascal}Error", error_fields)),
            "commandId": GraphQLField(GraphQLNonNull(GraphQLID)),
            "idempotencyKey": GraphQLField(GraphQLString),
        },
        description=f"The outcome of {key} {spec.version}.",
    )
    args = {
        "input": GraphQLArgument(GraphQLNonNull(input_type) if _required_input(schema_in) else input_type),
        "idempotencyKey": GraphQLArgument(
            GraphQLString, description="Defaults to the Idempotency-Key header, else the command id."
        ),
    }
    return GraphQLField(
        result_type, args=args, resolve=_resolver(key, spec.version), description=_describe(spec)
    )


def _required_input(schema: Mapping[str, Any]) -> bool:
    return bool(schema.get("required"))


def _resolver(key: str, version: str) -> Any:
    async def resolve(
        _root: Any,
        info: GraphQLResolveInfo[Any],
        input: Any = None,
        idempotencyKey: str | None = None,
    ) -> dict[str, Any]:
        call: _Call = info.context
        key_given = idempotencyKey or call.header_key
        if key_given is not None and not 0 < len(key_given) <= MAX_ID_LENGTH:
            raise GraphQLError(
                f"an idempotency key is 1 to {MAX_ID_LENGTH} characters",
                extensions={"code": "INVALID_IDEMPOTENCY_KEY"},
            )
        try:  # the call itself on the server's loop, where the store and the broker are
            command, outcome = await on_loop(
                call.loop, call.context, call.run(key, version, input, key_given)
            )
        except EnvelopeError as exc:
            raise GraphQLError(exc.reason, extensions={"code": "INVALID_COMMAND"}) from None
        except StoreUnavailable:
            raise GraphQLError(
                "the store is unavailable; retry with the same idempotency key",
                extensions={"code": "UNAVAILABLE"},
            ) from None
        data = outcome.result["data"]
        return {**data, "commandId": command.id, "idempotencyKey": command.idempotency_key}

    return resolve


class _Call:
    """What every resolver of one HTTP request shares: its caller, its headers, and the
    server's loop and the request's context, where each call runs."""

    def __init__(self, ops: OpsApi, request: Request, header_key: str | None) -> None:
        self.ops = ops
        self.token = bearer(request.headers.get("authorization"))
        self.header_key = header_key
        self.correlation_id = request.headers.get("x-correlation-id") or None
        self.traceparent = valid_traceparent(request.headers.get("traceparent"))
        self.loop = asyncio.get_running_loop()
        self.context = contextvars.copy_context()

    async def run(self, key: str, version: str, input: Any, idempotency_key: str | None) -> tuple[Any, Any]:
        """One call, as ``/ops`` makes it (run on the server's loop)."""
        command = self.ops.command(
            key,
            input if input is not None else {},
            version=version,
            idempotency_key=idempotency_key,
            correlation_id=self.correlation_id,
            traceparent=self.traceparent,
            source="oprunner.graphql",
        )
        return command, await self.ops.call(command, self.token)


def root_fields(selections: SelectionSetNode, fragments: Mapping[str, FragmentDefinitionNode]) -> int:
    """How many root fields (calls) a selection holds, through inline fragments and fragment
    spreads; it stops counting past ``MAX_ROOT_FIELDS``, so a fragment fanning out to
    fragments costs no more than the limit (validation has refused cycles already)."""
    count = 0
    for selection in selections.selections:
        if count > MAX_ROOT_FIELDS:
            break
        if isinstance(selection, FieldNode):
            count += 1
        elif isinstance(selection, InlineFragmentNode):
            count += root_fields(selection.selection_set, fragments)
        elif isinstance(selection, FragmentSpreadNode) and selection.name.value in fragments:
            count += root_fields(fragments[selection.name.value].selection_set, fragments)
    return count


OPERATION_NOT_CHOSEN = "OPERATION_RESOLUTION_FAILURE"
"""``extensions.code`` when ``operationName`` names no operation of the document, or is
missing where it has several (Apollo Server's code)."""
PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
"""``extensions.code`` of a document that does not parse or does not validate (the codes Apollo
Server uses): what a client tells them apart by, since the messages are graphql-core's and
change between its releases."""


def _coded(error: GraphQLError, code: str) -> dict[str, Any]:
    formatted: dict[str, Any] = dict(error.formatted)
    formatted["extensions"] = {**(error.extensions or {}), "code": code}
    return formatted


def _errors(status: int, *messages: str) -> JSONResponse:
    # answered before the body was read whole: the connection ends (see infra.http._too_large)
    close = {"Connection": "close"} if status in (408, 413) else None
    return JSONResponse({"errors": [{"message": m} for m in messages]}, status_code=status, headers=close)


def _json_body(content_type: str | None) -> bool:
    """``application/json``, with or without parameters: what GraphQL over HTTP sends. A
    ``text/plain`` POST is what a web page may send without asking (no CORS preflight), so
    it is refused before anything is read."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json"


class GraphQLApi:
    """``POST /graphql`` (GraphQL over HTTP, JSON bodies) for ``ops``'s registry.

    Everything a document's author controls runs on the GraphQL worker's loop, not the
    server's (``infra._worker``): parsing, counting, validating, executing and encoding.
    Only the calls themselves come back to the server's loop. See ``infra.graphql_cost`` for
    what a document's cost is counted as, and the constants above for its limits.
    """

    def __init__(self, ops: OpsApi, *, body_timeout: float = BODY_TIMEOUT) -> None:
        self.ops = ops
        self.schema = build_schema(ops.executor.registry)
        self.body_timeout = body_timeout
        self._working = 0  # documents handed to the worker and not answered yet
        # the schema's own full introspection sets the floor of both limits (measured once)
        probe = Budget(1 << 62)
        full = execute_sync(self.schema, parse(_FULL_INTROSPECTION), middleware=[probe])
        self.max_resolved, self.max_bytes = limits_for(
            probe.used,
            len(_json.dumps({"data": full.data})),
            fields=MIN_RESOLVED,
            nbytes=MIN_RESPONSE_BYTES,
        )

    async def handle(self, request: Request) -> Response:
        if not _json_body(request.headers.get("content-type")):
            return _errors(415, "send the document as Content-Type: application/json")
        try:
            body = await read_body(request, self.ops.max_bytes, self.body_timeout)
        except BodyTooLarge:
            return _errors(413, f"body larger than {self.ops.max_bytes} bytes")
        except BodyNotSent:
            return _errors(408, f"the body did not arrive within {self.body_timeout:g} s")
        if self._working >= MAX_WORKING:  # a bounded queue: each document waiting holds a request slot
            message = f"{MAX_WORKING} GraphQL documents are being answered: retry in a moment"
            return JSONResponse(
                {"errors": [coded(message, "BUSY")]}, status_code=503, headers={"Retry-After": "1"}
            )
        call = _Call(self.ops, request, request.headers.get("idempotency-key"))
        self._working += 1
        try:
            status, content = await GRAPHQL.run(self._answer(body, call))
        finally:
            self._working -= 1
        return Response(content, status_code=status, media_type="application/json")

    def _problems(self, document: DocumentNode) -> list[dict[str, Any]]:
        """Why ``document`` is not run, as formatted errors (none: it runs): its size, then
        graphql-core's validation, then ``first_conflict`` (the rule validation leaves out)."""
        if expanded_fields(document, MAX_FIELDS) > MAX_FIELDS:
            asked = f"the document asks for more than {MAX_FIELDS} fields, fragments expanded"
            return [coded(f"{asked}: ask for fewer")]
        if sum(isinstance(d, FragmentDefinitionNode) for d in document.definitions) > MAX_FRAGMENTS:
            return [coded(f"at most {MAX_FRAGMENTS} fragments in one document")]
        problems = validate(self.schema, document, _RULES)
        if not problems and (conflict := first_conflict(document)) is not None:
            problems = [conflict]
        return [_coded(e, VALIDATION_FAILED) for e in problems]

    async def _answer(self, body: bytes, call: _Call) -> tuple[int, bytes]:
        """The status and body of one request, worked out on the worker's loop."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _refused(400, f"body is not JSON{_json.where(exc)}")
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
            return _refused(400, 'the body must be a JSON object with a "query" string')
        variables, operation = payload.get("variables"), payload.get("operationName")
        if variables is not None and not isinstance(variables, dict):
            return _refused(400, '"variables" must be an object')
        if operation is not None and not isinstance(operation, str):
            return _refused(400, '"operationName" must be a string')
        try:
            document = parse(payload["query"], max_tokens=MAX_TOKENS)
        except GraphQLSyntaxError as exc:  # a request, not a transport failure: 200, as with JSON
            return 200, _json.dumps({"errors": [_coded(exc, PARSE_FAILED)]})
        try:
            refused = self._problems(document)
        except RecursionError:  # fragments spread in fragments, each nested: deeper than Python
            refused = [coded("the document is nested too deeply, fragments expanded: flatten it")]
        if refused:
            return 200, _json.dumps({"errors": refused})
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        chosen = [d for d in operations if operation is None or (d.name and d.name.value == operation)]
        fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
        if len(chosen) != 1:
            message = (
                f"the document has {len(chosen)} operations: name the one to run with operationName"
                if chosen
                else f"the document has no operation named {(operation or '')[:100]!r}"
            )
            return 200, _json.dumps({"errors": [coded(message, OPERATION_NOT_CHOSEN)]})
        roots = root_fields(chosen[0].selection_set, fragments)
        if roots > MAX_ROOT_FIELDS:
            return _refused(200, f"at most {MAX_ROOT_FIELDS} root fields in one document")
        if call.header_key is not None and roots != 1:
            return _refused(200, "Idempotency-Key names one call: give each field its own idempotencyKey")
        budget = Budget(self.max_resolved)
        result = execute(
            self.schema,
            document,
            context_value=call,
            variable_values=variables,
            operation_name=operation,
            middleware=[budget],
        )
        if inspect.isawaitable(result):
            result = await result
        errors: list[Any] = [e.formatted for e in result.errors or () if not _over(e)]
        if budget.exceeded:  # one error for all the fields it stopped, not one per field
            errors.append(coded(budget.message))
        content = _json.dumps({"data": result.data, **({"errors": errors} if errors else {})})
        if len(content) > self.max_bytes:  # what each call became stays: its ids replay it
            message = f"the response would be larger than {self.max_bytes} bytes: ask for fewer fields"
            return 200, _json.dumps({"data": _ids(result.data), "errors": [coded(message)]})
        return 200, content


def _ids(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """Of an answer too large to send, what lets its caller find each call again: every root
    field's ``status``, ``commandId`` and ``idempotencyKey`` (a mutation has run)."""
    if data is None:
        return None
    kept = ("status", "commandId", "idempotencyKey")
    return {
        name: {k: value[k] for k in kept if k in value} if isinstance(value, dict) else None
        for name, value in data.items()
    }


def _over(error: GraphQLError) -> bool:
    return (error.extensions or {}).get("code") == BUDGET_EXCEEDED


def _refused(status: int, message: str) -> tuple[int, bytes]:
    return status, _json.dumps({"errors": [{"message": message}]})


_RULES = [rule for rule in specified_rules if rule is not OverlappingFieldsCanBeMergedRule]
"""graphql-core's rules but the quadratic one, which ``first_conflict`` replaces."""
_FULL_INTROSPECTION = get_introspection_query(
    descriptions=True,
    specified_by_url=True,
    directive_is_repeatable=True,
    schema_description=True,
    input_value_deprecation=True,
)
