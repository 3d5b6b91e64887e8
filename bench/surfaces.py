"""What each call surface adds to a command: ``/ops`` (the baseline), ``/graphql`` and MCP.

One ``serve`` of the ledger test app and one ``oprunner mcp --http`` beside it, on one broker
and one database; the same ``ledger.credit`` command sent one at a time (closed loop, a new
idempotency key each) through each surface, after a warm-up. Prints the latency of a call,
request to answer (p50/p95/p99 ms) and calls/s per surface, and the ratio to ``/ops``.

    python -m bench.surfaces [--calls 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bench.e2e import prepare, services
from infra.devservices import free_port
from infra.mcp import IDEMPOTENCY_META
from tests.support import ServeProcess, Topics, token

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.apps.ledger:registry"
GRAPHQL = (
    "mutation($in: LedgerCreditInput!, $k: String) "
    "{ ledgerCredit(input: $in, idempotencyKey: $k) { status } }"
)


def _start_mcp(env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "runner", "mcp", APP, "--http"]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_port(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a process exited {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


async def _measure(name: str, calls: int, once: Callable[[int], Awaitable[None]]) -> dict[str, Any]:
    for i in range(30):  # warm-up: connections, caches, the first JIT-less paths
        await once(-1 - i)
    took = []
    started = time.perf_counter()
    for i in range(calls):
        t = time.perf_counter()
        await once(i)
        took.append((time.perf_counter() - t) * 1000)
    seconds = time.perf_counter() - started
    cuts = statistics.quantiles(took, n=100)
    return {"surface": name, "p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "per_s": calls / seconds}


async def run(calls: int) -> list[dict[str, Any]]:
    with services() as (bootstrap, dsn):
        await prepare(dsn, 100)
        topics = Topics()
        await topics.create(bootstrap)
        serve = ServeProcess(topics.env(bootstrap, dsn), app=APP).start()
        port = free_port()
        env = {**os.environ, **topics.env(bootstrap, dsn, OPRUNNER_MCP_PORT=str(port))}
        mcp = _start_mcp(env)
        try:
            serve.wait_serving(60)
            _wait_port(port, mcp, time.monotonic() + 60)
            bearer = {"authorization": f"Bearer {token('alice', tenant='t1')}"}
            rows = []
            async with httpx.AsyncClient(base_url=serve.url, headers=bearer, timeout=30) as http:

                async def ops(i: int) -> None:
                    body = {"accountId": f"acc-{i % 100}", "amount": "1"}
                    answer = await http.post(
                        "/ops/ledger.credit", json=body, headers={"idempotency-key": f"o{i}"}
                    )
                    assert answer.status_code == 200, answer.text

                async def graphql(i: int) -> None:
                    variables = {"in": {"accountId": f"acc-{i % 100}", "amount": "1"}, "k": f"g{i}"}
                    answer = await http.post("/graphql", json={"query": GRAPHQL, "variables": variables})
                    assert answer.json()["data"]["ledgerCredit"]["status"] == "succeeded", answer.text

                rows.append(await _measure("/ops", calls, ops))
                rows.append(await _measure("/graphql", calls, graphql))
            client = httpx2.AsyncClient(headers=bearer, timeout=httpx2.Timeout(30, read=60))
            async with Client(
                streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=client)
            ) as session:
                await session.list_tools()

                async def tool(i: int) -> None:
                    args = {"accountId": f"acc-{i % 100}", "amount": "1"}
                    result = await session.call_tool("ledger.credit", args, meta={IDEMPOTENCY_META: f"m{i}"})
                    assert not result.is_error, result.content

                rows.append(await _measure("MCP (HTTP)", calls, tool))
            return rows
        finally:
            mcp.terminate()
            mcp.wait(30)
            serve.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    rows = asyncio.run(run(args.calls))
    base = rows[0]
    print(f"{'surface':12} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'calls/s':>8} {'p50 vs /ops':>12}")
    for row in rows:
        ratio = row["p50"] / base["p50"]
        print(
            f"{row['surface']:12} {row['p50']:8.2f} {row['p95']:8.2f} {row['p99']:8.2f} "
            f"{row['per_s']:8.1f} {ratio:11.2f}x"
        )


if __name__ == "__main__":
    main()
