"""The spec model: a declared contract (meta, input/output, policy) for one operation."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .model import SENSITIVE, Model

if TYPE_CHECKING:
    from .auth import Actor

Stability = Literal["experimental", "beta", "stable", "deprecated"]
Kind = Literal["command", "query", "event"]
AuthLevel = Literal["public", "user", "service", "admin"]
AUTH_LEVELS: tuple[AuthLevel, ...] = ("public", "user", "service", "admin")

_KEY = re.compile(r"^[a-z][a-zA-Z0-9]*(\.[a-z][a-zA-Z0-9]*)+$")
_VERSION = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")


def parse_version(version: str) -> tuple[int, int, int]:
    """``"1.2.3"`` -> ``(1, 2, 3)``, so versions order numerically (``1.10.0 > 1.9.0``)."""
    match = _VERSION.match(version)
    if match is None:
        raise ValueError(f"version {version!r} is not MAJOR.MINOR.PATCH")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


@dataclass(frozen=True, kw_only=True)
class Meta:
    """What the operation is, for people and for generated docs."""

    key: str
    version: str
    description: str
    goal: str = ""
    context: str = ""
    owners: Sequence[str] = ()
    tags: Sequence[str] = ()
    stability: Stability = "stable"

    def __post_init__(self) -> None:
        if not _KEY.match(self.key):
            raise ValueError(f"operation key {self.key!r} must look like 'domain.camelCaseName'")
        parse_version(self.version)
        if self.stability not in ("experimental", "beta", "stable", "deprecated"):
            raise ValueError(f"stability {self.stability!r} is not one of the four")
        object.__setattr__(self, "owners", tuple(self.owners))
        object.__setattr__(self, "tags", tuple(self.tags))


@dataclass(frozen=True, kw_only=True)
class IO:
    """Input and output models, and the domain error codes the handler may answer with."""

    input: type[Model]
    output: type[Model]
    errors: Mapping[str, str] = field(default_factory=dict)


ConditionFn = Callable[["Actor", Any, Any], "bool | Awaitable[bool]"]
Condition = str | ConditionFn
_NAMED = ("owner", "tenant", "admin", "service")


@dataclass(frozen=True, kw_only=True)
class Rule:
    """One authorization rule. All of a policy's rules must pass.

    ``condition`` is ``owner`` (the resource's owner is the actor, same tenant), ``tenant``
    (same tenant), ``admin`` / ``service`` (actor kind; a service with a tenant, or a
    follow-up, only on its tenant's resource), ``role:<name>``, a callable
    ``(actor, resource, input) -> bool``, or a sequence of these meaning *any of*
    (``("owner", "admin")``). The resource is loaded by the resolver registered for
    ``resource``, with the id taken from the input field ``id_field``.

    ``if_missing`` says what a missing resource means: ``deny`` (the default; reveals nothing)
    or ``allow`` (let the handler answer, e.g. with ``INVOICE_NOT_FOUND``).
    """

    resource: str | None = None
    action: str = ""
    condition: Condition | Sequence[Condition] = "owner"
    id_field: str | None = None
    if_missing: Literal["deny", "allow"] = "deny"

    @functools.cached_property
    def conditions(self) -> tuple[Condition, ...]:
        if isinstance(self.condition, str) or callable(self.condition):
            return (self.condition,)
        return tuple(self.condition)

    @functools.cached_property
    def _needs_resource(self) -> bool:
        if any(callable(c) or c in ("owner", "tenant") for c in self.conditions):
            return True
        # a rule naming its resource with a ``service`` condition: a service with a tenant
        # (or a follow-up) acts on that tenant's only, so the resource's tenant is looked at
        return "service" in self.conditions and self.resource is not None and self.id_field is not None

    def needs_resource(self) -> bool:
        return self._needs_resource

    @functools.cached_property
    def _needs_resource_for_any(self) -> bool:
        return any(callable(c) or c in ("owner", "tenant") for c in self.conditions)

    def needs_resource_for(self, scoped_service: bool) -> bool:
        """Whether checking this rule for an actor loads the resource: always when a
        condition reads it; for a ``service`` condition only when the actor is a service held
        to one tenant (``runner.policy.scoped``), so a global service's command (a webhook's,
        an operator's) does not now need its resource to exist."""
        return self._needs_resource_for_any or (self._needs_resource and scoped_service)

    def __post_init__(self) -> None:
        for cond in self.conditions:
            if isinstance(cond, str) and cond not in _NAMED and not cond.startswith("role:"):
                raise ValueError(f"unknown rule condition {cond!r}")
        if self.needs_resource() and (self.resource is None or self.id_field is None):
            raise ValueError("a rule that looks at a resource needs resource= and id_field=")


@dataclass(frozen=True, kw_only=True)
class Policy:
    """Who may run the operation: an authentication level, then every rule.

    ``public``: no token needed; ``user``: any authenticated actor; ``service``: service or
    admin tokens; ``admin``: admin tokens only.
    """

    auth: AuthLevel = "user"
    rules: Sequence[Rule] = ()

    def __post_init__(self) -> None:
        if self.auth not in AUTH_LEVELS:  # a typo ("users") must not be found at run time
            raise ValueError(f"Policy(auth={self.auth!r}): auth is one of {', '.join(AUTH_LEVELS)}")
        if isinstance(self.rules, Rule):
            raise ValueError("Policy(rules=...) takes a list of Rule, got one Rule")
        object.__setattr__(self, "rules", tuple(self.rules))
        for rule in self.rules:
            if not isinstance(rule, Rule):
                raise ValueError(f"Policy(rules=...) takes Rule objects, got {type(rule).__name__}")


@dataclass(frozen=True, kw_only=True)
class Retry:
    """How transient failures are retried: exponential backoff with jitter, then ``failed``."""

    max_attempts: int = 3
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    retry_on: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        retry_on = tuple(self.retry_on)  # a list works too; isinstance() needs a tuple
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on):
            raise ValueError("Retry(retry_on=...) takes exception classes")
        object.__setattr__(self, "retry_on", retry_on)


@dataclass(frozen=True, kw_only=True)
class OperationSpec:
    """A declared operation. Build it with ``define_command``/``define_query``/``define_event``."""

    kind: Kind
    meta: Meta
    io: IO
    policy: Policy
    partition_key: str | None = None
    retry: Retry = field(default_factory=Retry)
    timeout: float = 30.0

    @property
    def key(self) -> str:
        return self.meta.key

    @property
    def version(self) -> str:
        return self.meta.version

    @property
    def deprecated(self) -> bool:
        return self.meta.stability == "deprecated"

    def partition_value(self, value: Model) -> str | None:
        """The Kafka message key for a validated input: one resource's commands stay ordered."""
        if self.partition_key is None:
            return None
        return str(getattr(value, self.partition_key))

    def input_schema(self) -> dict[str, Any]:
        return self.io.input.model_json_schema(by_alias=True)

    def output_schema(self) -> dict[str, Any]:
        return self.io.output.model_json_schema(by_alias=True, mode="serialization")

    def sensitive_fields(self) -> list[str]:
        return [
            f.alias or name
            for name, f in self.io.input.model_fields.items()
            if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get(SENSITIVE)
        ]

    def describe(self) -> dict[str, Any]:
        """Everything a catalog or ``oprunner specs show`` prints about the spec."""
        m = self.meta
        return {
            "key": m.key,
            "version": m.version,
            "kind": self.kind,
            "description": m.description,
            "goal": m.goal,
            "context": m.context,
            "owners": list(m.owners),
            "tags": list(m.tags),
            "stability": m.stability,
            "partitionKey": self.partition_key,
            "policy": {
                "auth": self.policy.auth,
                "rules": [
                    {
                        "resource": r.resource,
                        "action": r.action,
                        "condition": [c if isinstance(c, str) else "<callable>" for c in r.conditions],
                        "idField": r.id_field,
                    }
                    for r in self.policy.rules
                ],
            },
            "errors": dict(self.io.errors),
            "input": self.input_schema(),
            "output": self.output_schema(),
        }


def _define(
    kind: Kind,
    meta: Meta,
    io: IO,
    policy: Policy | None,
    partition_key: str | None,
    retry: Retry | None,
    timeout: float,
) -> OperationSpec:
    fields = io.input.model_fields
    if partition_key is not None and partition_key not in fields:
        raise ValueError(f"{meta.key}: partition_key {partition_key!r} is not an input field")
    for rule in (policy or Policy()).rules:
        if rule.id_field is not None and rule.id_field not in fields:
            raise ValueError(f"{meta.key}: rule id_field {rule.id_field!r} is not an input field")
    return OperationSpec(
        kind=kind,
        meta=meta,
        io=io,
        policy=policy or Policy(),
        partition_key=partition_key,
        retry=retry or Retry(),
        timeout=timeout,
    )


def define_command(
    *,
    meta: Meta,
    io: IO,
    policy: Policy | None = None,
    partition_key: str | None = None,
    retry: Retry | None = None,
    timeout: float = 30.0,
) -> OperationSpec:
    """A command changes state: it runs once per idempotency key."""
    return _define("command", meta, io, policy, partition_key, retry, timeout)


def define_query(
    *,
    meta: Meta,
    io: IO,
    policy: Policy | None = None,
    partition_key: str | None = None,
    retry: Retry | None = None,
    timeout: float = 30.0,
) -> OperationSpec:
    """A query reads: it runs every time it is asked, no idempotency claim, still audited."""
    return _define("query", meta, io, policy, partition_key, retry, timeout)


def define_event(
    *,
    meta: Meta,
    io: IO,
    policy: Policy | None = None,
    partition_key: str | None = None,
    retry: Retry | None = None,
    timeout: float = 30.0,
) -> OperationSpec:
    """An event records a fact that happened elsewhere (a webhook): handled once per key."""
    return _define("event", meta, io, policy or Policy(auth="service"), partition_key, retry, timeout)
