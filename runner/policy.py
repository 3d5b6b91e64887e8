"""Authorization: the spec's auth level, then each rule. Anything unexpected denies."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from .auth import Actor
from .context import PolicyContext
from .registry import OperationRegistry, Resource
from .spec import Condition, OperationSpec, Rule

_LEVELS = {
    "public": ("user", "service", "admin"),
    "user": ("user", "service", "admin"),
    "service": ("service", "admin"),
    "admin": ("admin",),
}


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str = ""


ALLOW = Decision(True)


def _deny(reason: str) -> Decision:
    return Decision(False, reason)


async def _holds(cond: Condition, actor: Actor, resource: Resource | None, ctx: PolicyContext) -> bool:
    if callable(cond):
        verdict = cond(actor, resource, ctx.input)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return verdict is True
    if cond == "admin":
        return administers(actor, resource.tenant_id if resource is not None else None, resource is not None)
    if cond == "service":
        if actor.kind != "service":
            return False
        if not scoped(actor):
            return True  # an operator's service token, a webhook's command: global
        return resource is None or resource.tenant_id == actor.tenant_id
    if cond.startswith("role:"):
        return cond[5:] in actor.roles
    if resource is None:
        return False
    same_tenant = resource.tenant_id is None or resource.tenant_id == actor.tenant_id
    if cond == "owner":
        return resource.owner_id is not None and resource.owner_id == actor.user_id and same_tenant
    if cond == "tenant":
        return resource.tenant_id is not None and same_tenant
    return False


def scoped(actor: Actor) -> bool:
    """Whether a service actor acts in one tenant only: one with a tenant, or a follow-up
    (its binding names the command that sent it) whatever its parent's tenant. A follow-up
    of a parent with no tenant (a user without one, an anonymous caller of a public
    operation) thus reaches only what has no tenant either, never every tenant's."""
    return actor.tenant_id is not None or (actor.bound is not None and actor.bound.cause is not None)


def administers(actor: Actor, tenant_id: str | None, known: bool = True) -> bool:
    """The tenancy rule for admins, in one place: an admin token with a tenant administers
    what belongs to that tenant only (not what has no tenant, nor what is not ``known``: a
    rule with no resource); one without a tenant is a global operator: mint those for
    operators only."""
    if actor.kind != "admin":
        return False
    if actor.tenant_id is None:
        return True
    return known and tenant_id == actor.tenant_id


def _first(source: Any, names: tuple[str, ...]) -> str | None:
    get = source.get if isinstance(source, dict) or hasattr(source, "keys") else None  # rows too
    for name in names:
        value = get(name) if get is not None else getattr(source, name, None)
        if value is not None:
            return str(value)
    return None


def as_resource(resource_id: str, loaded: Any) -> Resource | None:
    """Accept what a resolver naturally returns: a ``Resource``, a row or dict, or an object.

    The owner is read from ``owner_id``/``ownerId``/``owner``/``user_id``, the tenant from
    ``tenant_id``/``tenantId``/``tenant``.
    """
    if loaded is None or isinstance(loaded, Resource):
        return loaded
    owner = _first(loaded, ("owner_id", "ownerId", "owner", "user_id", "userId"))
    tenant = _first(loaded, ("tenant_id", "tenantId", "tenant"))
    return Resource(resource_id, owner_id=owner, tenant_id=tenant)


async def _check_rule(rule: Rule, actor: Actor, registry: OperationRegistry, ctx: PolicyContext) -> Decision:
    resource: Resource | None = None
    if rule.needs_resource_for(actor.kind == "service" and scoped(actor)):
        assert rule.resource is not None and rule.id_field is not None  # checked by Rule
        resolver = registry.resolver(rule.resource)
        if resolver is None:
            return _deny(f"no resolver for resource {rule.resource!r}")
        resource_id = str(getattr(ctx.input, rule.id_field))
        loaded = resolver(resource_id, ctx)
        resource = as_resource(resource_id, await loaded if inspect.isawaitable(loaded) else loaded)
        if resource is None:
            if rule.if_missing == "allow":
                return ALLOW
            return _deny(f"{rule.resource} {resource_id!r} not found or not yours")
    for cond in rule.conditions:
        if await _holds(cond, actor, resource, ctx):
            return ALLOW
    what = f"{rule.resource} " if rule.resource else ""
    return _deny(f"not allowed to {rule.action or 'run'} this {what}".rstrip())


async def authorize(
    spec: OperationSpec, actor: Actor | None, registry: OperationRegistry, ctx: PolicyContext
) -> Decision:
    """Allow only when the auth level admits the actor and every rule holds."""
    level = spec.policy.auth
    if actor is None:
        if level == "public" and not spec.policy.rules:
            return ALLOW
        return _deny("authentication required")
    if actor.kind not in _LEVELS[level]:
        return _deny(f"{spec.key} needs a {level} token, got a {actor.kind} token")
    if actor.ops is not None and spec.key not in actor.ops:
        return _deny(f"this token may run only {', '.join(sorted(actor.ops)) or 'no operation'}")
    for rule in spec.policy.rules:
        decision = await _check_rule(rule, actor, registry, ctx)
        if not decision.allowed:
            return decision
    return ALLOW
