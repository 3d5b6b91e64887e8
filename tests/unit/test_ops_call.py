"""``OpsApi.call``, the path /ops, /graphql and MCP share: a stalled broker does not hold the
answer once the outcome is durable."""

from __future__ import annotations

import asyncio
import time

from infra.http import OpsApi
from runner import (
    IO,
    Executor,
    Meta,
    Model,
    OperationContext,
    OperationRegistry,
    Policy,
    define_command,
    install_op,
)
from runner.executor import Outcome
from runner.testing import InMemoryStore


class Ping(Model):
    n: int


async def ping(value: Ping, ctx: OperationContext) -> Ping:
    return value


async def test_a_stalled_publish_does_not_hold_the_answer() -> None:
    registry = OperationRegistry()
    spec = define_command(
        meta=Meta(key="t.ping", version="1.0.0", description="p"),
        io=IO(input=Ping, output=Ping),
        policy=Policy(auth="public"),
    )
    install_op(registry, spec, ping)
    store = InMemoryStore()
    stalled = asyncio.Event()
    published: list[Outcome] = []

    async def deliver(outcome: Outcome) -> None:
        await stalled.wait()  # a broker that does not answer
        published.append(outcome)

    ops = OpsApi(Executor(registry, store, None), deliver, publish_wait=0.05)
    started = time.monotonic()
    outcome = await ops.call(ops.command("t.ping", {"n": 1}), None)
    assert outcome.status == "succeeded" and time.monotonic() - started < 5
    assert not published and len(store.outbox) == 2  # durable, for the relay if need be
    stalled.set()
    for _ in range(500):  # the publish goes on after the answer (a poll with a deadline)
        if published:
            break
        await asyncio.sleep(0.01)
    assert published == [outcome]
