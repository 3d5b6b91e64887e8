"""A small app written only from DESIGN.md: documents owned by users, run on InMemoryStore."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import Field

from runner import (
    IO,
    Executor,
    JwtAuthenticator,
    Meta,
    Model,
    OperationContext,
    OperationError,
    OperationRegistry,
    Policy,
    PolicyContext,
    Resource,
    RetryableError,
    Rule,
    command,
    define_command,
    define_query,
    install_op,
    mint_token,
)
from runner.testing import InMemoryStore
from runner.types import NonEmptyString, PositiveAmount

SECRET = "unit-test-secret-of-at-least-32-bytes!"


class PayInput(Model):
    doc_id: NonEmptyString
    amount: PositiveAmount
    card: NonEmptyString = Field(json_schema_extra={"sensitive": True})


class PayOutput(Model):
    receipt: str
    charged: PositiveAmount


class DocQuery(Model):
    doc_id: NonEmptyString


class DocView(Model):
    doc_id: str
    owner: str


PAY = define_command(
    meta=Meta(key="docs.pay", version="1.0.0", description="Pay for a document"),
    io=IO(input=PayInput, output=PayOutput, errors={"TOO_MUCH": "over the limit"}),
    policy=Policy(
        auth="user",
        rules=[Rule(resource="doc", action="pay", condition="owner", id_field="doc_id")],
    ),
    partition_key="doc_id",
)
VIEW = define_query(
    meta=Meta(key="docs.view", version="1.0.0", description="Look at a document"),
    io=IO(input=DocQuery, output=DocView),
    policy=Policy(auth="user", rules=[Rule(resource="doc", condition=("owner", "admin"), id_field="doc_id")]),
)


@dataclass
class Behaviour:
    """Knobs the tests turn on the handler."""

    calls: int = 0
    transient_failures: int = 0
    raise_error: Exception | None = None
    bad_output: bool = False
    effects: list[str] = field(default_factory=list)
    gate: Any = None  # an asyncio.Event to hold the handler


DOCS = {
    "d1": Resource("d1", owner_id="alice", tenant_id="t1"),
    "d2": Resource("d2", owner_id="bob", tenant_id="t1"),
    "d3": Resource("d3", owner_id="alice", tenant_id="t2"),
}


def build_app(behaviour: Behaviour) -> OperationRegistry:
    registry = OperationRegistry()

    @registry.resource("doc")
    async def load_doc(doc_id: str, ctx: PolicyContext) -> Resource | None:
        return DOCS.get(doc_id)

    async def pay(value: PayInput, ctx: OperationContext) -> Any:
        behaviour.calls += 1
        if behaviour.gate is not None:
            await behaviour.gate.wait()
        if behaviour.transient_failures:
            behaviour.transient_failures -= 1
            raise ConnectionError("flaky")
        if behaviour.raise_error is not None:
            raise behaviour.raise_error
        if behaviour.bad_output:
            return {"receipt": 42}
        behaviour.effects.append(ctx.idempotency_key)
        return PayOutput(receipt=f"r-{value.doc_id}", charged=value.amount)

    async def view(value: DocQuery, ctx: OperationContext) -> DocView:
        doc = DOCS[value.doc_id]
        return DocView(doc_id=doc.id, owner=doc.owner_id or "")

    install_op(registry, PAY, pay)
    install_op(registry, VIEW, view)
    return registry


@dataclass
class App:
    registry: OperationRegistry
    store: InMemoryStore
    executor: Executor
    behaviour: Behaviour

    def token(self, sub: str = "alice", **claims: Any) -> str:
        claims.setdefault("tenant", "t1")
        return mint_token(SECRET, sub=sub, **claims)

    async def run(self, op: str, data: Any, *, token: str | None = "alice", **ext: Any) -> Any:
        bearer = self.token(token) if token in ("alice", "bob", "carol") else token
        return await self.executor.execute(command(op, data, **ext), token=bearer)


async def _no_sleep(_: float) -> None:
    return None


@pytest.fixture
def app() -> App:
    behaviour = Behaviour()
    registry = build_app(behaviour)
    store = InMemoryStore()
    executor = Executor(
        registry,
        store,
        JwtAuthenticator(secret=SECRET),
        sleep=_no_sleep,
        transient_errors=(),
    )
    return App(registry, store, executor, behaviour)


GOOD = {"docId": "d1", "amount": "12.50", "card": "4242-secret"}
Factory = Callable[..., Any]
__all__ = ["GOOD", "PAY", "SECRET", "VIEW", "App", "OperationError", "RetryableError"]
