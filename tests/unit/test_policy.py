"""Policy: auth levels and rules, failing closed."""

from __future__ import annotations

from typing import Any

import pytest

from runner import (
    IO,
    Actor,
    Meta,
    Model,
    OperationRegistry,
    Policy,
    PolicyContext,
    Resource,
    Rule,
    define_command,
)
from runner.auth import Binding
from runner.policy import authorize


class In(Model):
    doc_id: str


class Out(Model):
    ok: bool


def _spec(policy: Policy) -> Any:
    return define_command(
        meta=Meta(key="t.op", version="1.0.0", description="t"),
        io=IO(input=In, output=Out),
        policy=policy,
    )


ALICES_DOC = Resource("d", owner_id="alice", tenant_id="t1")


def _registry(resource: Resource | None = ALICES_DOC) -> OperationRegistry:
    registry = OperationRegistry()

    async def load(doc_id: str, ctx: PolicyContext) -> Resource | None:
        return resource

    registry.add_resource("doc", load)
    return registry


ALICE = Actor("user", "alice", "t1", frozenset({"ops"}))
BOB = Actor("user", "bob", "t1")
EVE = Actor("user", "alice", "t2")  # same user id, other tenant
SVC = Actor("service", "stripe-webhook", None)
ROOT = Actor("admin", "root", None)


async def _allowed(policy: Policy, actor: Actor | None, registry: OperationRegistry | None = None) -> bool:
    spec = _spec(policy)
    value = In(doc_id="d")
    registry = _registry() if registry is None else registry
    decision = await authorize(spec, actor, registry, PolicyContext(actor, spec, value, None))
    return decision.allowed


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("public", [True, True, True, True]),
        ("user", [False, True, True, True]),
        ("service", [False, False, True, True]),
        ("admin", [False, False, False, True]),
    ],
)
async def test_auth_levels(level: Any, expected: list[bool]) -> None:
    got = [await _allowed(Policy(auth=level), actor) for actor in (None, ALICE, SVC, ROOT)]
    assert got == expected


async def test_owner_rule() -> None:
    policy = Policy(rules=[Rule(resource="doc", condition="owner", id_field="doc_id")])
    assert await _allowed(policy, ALICE)
    assert not await _allowed(policy, BOB)
    assert not await _allowed(policy, EVE)
    assert not await _allowed(policy, ROOT)  # admin is not implicitly an owner


async def test_any_of_conditions() -> None:
    policy = Policy(rules=[Rule(resource="doc", condition=("owner", "admin"), id_field="doc_id")])
    assert await _allowed(policy, ROOT) and await _allowed(policy, ALICE) and not await _allowed(policy, BOB)


async def test_tenant_and_role_rules() -> None:
    tenant = Policy(rules=[Rule(resource="doc", condition="tenant", id_field="doc_id")])
    assert await _allowed(tenant, BOB) and not await _allowed(tenant, EVE)
    role = Policy(rules=[Rule(condition="role:ops")])
    assert await _allowed(role, ALICE) and not await _allowed(role, BOB)


async def test_callable_condition_sync_and_async() -> None:
    async def big(actor: Actor, resource: Any, value: Any) -> bool:
        return resource.owner_id == "alice" and actor.user_id == "bob"

    policy = Policy(rules=[Rule(resource="doc", condition=big, id_field="doc_id")])
    assert await _allowed(policy, BOB) and not await _allowed(policy, ALICE)
    truthy = Policy(rules=[Rule(resource="doc", condition=lambda a, r, v: 1, id_field="doc_id")])
    assert not await _allowed(truthy, ALICE)  # only a real True allows


async def test_missing_resource_denies_unless_allowed() -> None:
    deny = Policy(rules=[Rule(resource="doc", condition="owner", id_field="doc_id")])
    assert not await _allowed(deny, ALICE, _registry(None))
    allow = Policy(rules=[Rule(resource="doc", condition="owner", id_field="doc_id", if_missing="allow")])
    assert await _allowed(allow, ALICE, _registry(None))


async def test_missing_resolver_denies_and_check_reports_it() -> None:
    policy = Policy(rules=[Rule(resource="doc", condition="owner", id_field="doc_id")])
    empty = OperationRegistry()
    assert not await _allowed(policy, ALICE, empty)

    async def handler(value: Any, ctx: Any) -> Any:
        return {"ok": True}

    empty.install(_spec(policy), handler)
    assert "no resolver for resource 'doc'" in empty.problems()[0]
    with pytest.raises(Exception, match="no resolver"):
        empty.check()


def test_rule_definitions_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown rule condition"):
        Rule(condition="owns")
    with pytest.raises(ValueError, match="needs resource"):
        Rule(condition="owner")


@pytest.mark.parametrize(
    "row",
    [
        {"owner_id": "alice", "tenant_id": "t1"},
        {"ownerId": "alice", "tenantId": "t1"},
        {"owner": "alice", "tenant": "t1"},
    ],
)
async def test_resolvers_may_return_rows_and_be_sync(row: dict[str, str]) -> None:
    registry = OperationRegistry()
    registry.add_resource("doc", lambda doc_id, ctx: row)
    policy = Policy(rules=[Rule(resource="doc", condition="owner", id_field="doc_id")])
    assert await _allowed(policy, ALICE, registry)
    assert not await _allowed(policy, BOB, registry)


async def test_a_tenant_admin_administers_only_its_tenant() -> None:
    policy = Policy(rules=[Rule(resource="doc", condition=("owner", "admin"), id_field="doc_id")])
    assert await _allowed(policy, Actor("admin", "ops-t1", "t1"))
    assert not await _allowed(policy, Actor("admin", "ops-t2", "t2"))
    assert await _allowed(policy, ROOT)  # no tenant: a global operator
    untenanted = _registry(Resource("d", owner_id="alice", tenant_id=None))
    assert not await _allowed(policy, Actor("admin", "ops-t1", "t1"), untenanted)
    assert await _allowed(policy, ROOT, untenanted)
    no_resource = Policy(rules=[Rule(condition="admin")])
    assert not await _allowed(no_resource, Actor("admin", "ops-t1", "t1"))
    assert await _allowed(no_resource, ROOT)


async def test_a_token_limited_to_operations_runs_only_those() -> None:
    narrow = Actor("user", "alice", "t1", ops=frozenset({"t.other"}))
    spec = _spec(Policy())
    decision = await authorize(spec, narrow, _registry(), PolicyContext(narrow, spec, In(doc_id="d"), None))
    assert not decision.allowed and "t.other" in decision.reason
    assert await _allowed(Policy(), Actor("user", "alice", "t1", ops=frozenset({"t.op"})))


def _follow_up(tenant: str | None) -> Actor:
    """A follow-up's actor as its one-command token makes it: its binding names its cause."""
    return Actor(
        "service", "op:t.parent", tenant, bound=Binding("c", "0" * 64, cause="parent", corr="parent")
    )


@pytest.mark.parametrize(
    ("actor", "t1", "t2", "untenanted"),
    [
        (_follow_up(None), False, False, True),  # a tenant-less parent's reaches no tenant's
        (_follow_up("t1"), True, False, False),
        (Actor("service", "oprunner-webhooks", None), True, True, True),  # the runner's own: global
        (Actor("service", "svc", "t1"), True, False, False),
    ],
)
async def test_a_follow_up_acts_only_where_its_parent_could(
    actor: Actor, t1: bool, t2: bool, untenanted: bool
) -> None:
    """Every named condition, for a follow-up of a parent with or without a tenant: only the
    tenant-less resource is open to the tenant-less parent's, as its parent's own tenant is
    to a tenant's. A rule that names a resource but only ``service`` checks it too."""
    rules = [
        Rule(resource="doc", condition=("owner", "service"), id_field="doc_id"),
        Rule(resource="doc", condition="service", id_field="doc_id"),
    ]
    for rule in rules:
        got = [
            await _allowed(
                Policy(auth="service", rules=[rule]), actor, _registry(Resource("d", "carol", tenant))
            )
            for tenant in ("t1", "t2", None)
        ]
        assert got == [t1, t2, untenanted], (rule.condition, actor)
    for condition in (
        "owner",
        "tenant",
        "admin",
    ):  # a follow-up owns nothing, is no tenant's member nor admin
        rule = Rule(resource="doc", condition=condition, id_field="doc_id")
        for tenant in ("t1", "t2", None):
            registry = _registry(Resource("d", "carol", tenant))
            assert not await _allowed(Policy(auth="service", rules=[rule]), _follow_up(None), registry)
    assert await _allowed(Policy(auth="service", rules=[Rule(condition="service")]), _follow_up(None))
    # for a service held to a tenant, a rule naming its resource looks at it, so a missing
    # one denies as in any other rule; a global service (a webhook's command) needs none
    only_service = Policy(auth="service", rules=[rules[1]])
    assert not await _allowed(only_service, _follow_up("t1"), _registry(None))
    assert not await _allowed(only_service, Actor("service", "svc", "t1"), _registry(None))
    assert await _allowed(only_service, Actor("service", "oprunner-webhooks", None), _registry(None))
    assert "no resolver" in _problems(only_service)


def _problems(policy: Policy) -> str:
    registry = OperationRegistry()

    async def handler(value: Any, ctx: Any) -> Any:
        return {"ok": True}

    registry.install(_spec(policy), handler)
    return " ".join(registry.problems())
