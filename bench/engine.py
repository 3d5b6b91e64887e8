"""The engine alone: CPU per command of ``Executor.execute_many`` over the in-memory store,
with the benchmark's credit operation (JWT, owner rule through a batch resolver, batch
handler), parsing included. No broker and no database: what is left is the engine's own
Python, the part of ``bench.e2e``'s runner figure that no statement or socket explains.

    python -m bench.engine [--commands 20000] [--batch 32] [--profile]

``--profile`` prints the top functions by own time (cProfile; it slows the run;
``BENCH_SORT=cumtime`` sorts by time including callees, ``BENCH_TOP=N`` prints N)."""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from bench.app import Credit, CreditInput, CreditOutput
from runner import OperationContext, OperationRegistry, PolicyContext, heap, install_op, mint_token
from runner.auth import JwtAuthenticator
from runner.envelope import parse_command
from runner.executor import ExecutionMode, Executor
from runner.observability import Metrics, configure_tracing
from runner.testing import InMemoryStore

SECRET = "bench-engine-secret-0123456789abcdef"
ACCOUNTS = {f"acc-{i}": {"id": f"acc-{i}", "owner_id": "alice", "tenant_id": "t1"} for i in range(1000)}


async def _credit_many(items: Sequence[tuple[CreditInput, OperationContext]]) -> list[CreditOutput]:
    return [CreditOutput(account_id=value.account_id) for value, _ in items]


async def _credit(value: CreditInput, ctx: OperationContext) -> CreditOutput:
    return CreditOutput(account_id=value.account_id)


def registry() -> OperationRegistry:
    reg = OperationRegistry()
    install_op(reg, Credit, _credit, batch=_credit_many)

    @reg.resources("account")
    async def load(ids: list[str], ctx: PolicyContext) -> Mapping[str, Any]:
        return {i: ACCOUNTS[i] for i in ids if i in ACCOUNTS}

    return reg


def messages(n: int, prefix: str) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "specversion": "1.0",
                "id": f"{prefix}-{i}",
                "source": "bench",
                "type": "ledger.credit",
                "data": {"accountId": f"acc-{i % 1000}", "amount": "1"},
            }
        )
        for i in range(n)
    ]


async def run(n: int, batch: int, profile: bool) -> None:
    configure_tracing()  # as ``serve`` runs: the SDK installed, unsampled commands not recorded
    executor = Executor(registry(), InMemoryStore(), JwtAuthenticator(secret=SECRET), metrics=Metrics())
    token = mint_token(SECRET, sub="alice", tenant="t1", ttl=3600)
    mode = ExecutionMode(offset_outbox=True, committed_claims=False)

    async def go(raws: list[bytes]) -> None:
        for start in range(0, len(raws), batch):
            items = [(parse_command(raw), token) for raw in raws[start : start + batch]]
            outcomes = await executor.execute_many(items, mode)
            assert all(o.status == "succeeded" for o in outcomes), outcomes[0]

    await go(messages(2000, "warm"))
    raws = messages(n, "run")
    heap.settle()  # as ``oprunner serve`` does once it is serving
    profiler = cProfile.Profile() if profile else None
    cpu, wall = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    await go(raws)
    if profiler is not None:
        profiler.disable()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    per = 1e6 * cpu / n
    print(f"engine: {n} commands in batches of {batch}: {per:.1f} µs CPU per command, {n / wall:,.0f}/s")
    if profiler is not None:
        stats = pstats.Stats(profiler).sort_stats(os.environ.get("BENCH_SORT", "tottime"))
        stats.print_stats(int(os.environ.get("BENCH_TOP", "25")))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    asyncio.run(run(args.commands, args.batch, args.profile))


if __name__ == "__main__":
    main()
