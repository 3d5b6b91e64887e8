"""What a costly GraphQL document does to everyone else: ``/healthz`` timed beside it.

One ``serve`` of the ledger test app. ``/healthz`` is asked one request at a time for
``--seconds`` while nothing else runs (the baseline), then while one anonymous client sends,
back to back, each of: the review's amplification document (five fragments of ten aliases,
refused before it runs), the widest document the budget admits to run until it stops (thirty
aliases of every type's fields), and the schema's full introspection. Prints ``/healthz``
p50/p99/max ms beside each, and how long the document itself took.

    python -m bench.graphql_cost [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import httpx
from graphql import get_introspection_query

from bench.e2e import prepare, services
from tests.integration.test_graphql import _amplifier
from tests.support import ServeProcess, Topics

APP = "tests.apps.ledger:registry"
WIDE = (
    "{ __schema { "
    + " ".join(f"t{i}: types {{ name fields {{ name type {{ name }} }} }}" for i in range(30))
    + " } }"
)
DOCUMENTS = {
    "nothing (baseline)": None,
    "amplification, k=10": _amplifier(10),
    "widest admitted (stops at budget)": WIDE,
    "full introspection": get_introspection_query(descriptions=True),
}


def _cuts(took: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(took, n=100)
    return cuts[49], cuts[98], max(took)


async def _beside(http: httpx.AsyncClient, document: str | None, seconds: float) -> dict[str, Any]:
    stop = time.monotonic() + seconds
    sent: list[float] = []

    async def attacker() -> None:
        while document is not None and time.monotonic() < stop:
            t = time.perf_counter()
            await http.post("/graphql", json={"query": document})
            sent.append((time.perf_counter() - t) * 1000)

    attack = asyncio.get_running_loop().create_task(attacker())
    health: list[float] = []
    while time.monotonic() < stop:
        t = time.perf_counter()
        answer = await http.get("/healthz")
        assert answer.status_code == 200
        health.append((time.perf_counter() - t) * 1000)
    await attack
    row: dict[str, Any] = dict(zip(("p50", "p99", "max"), _cuts(health), strict=True))
    row["documents"] = len(sent)
    row["doc_p50"] = statistics.median(sent) if sent else 0.0
    return row


async def run(seconds: float) -> dict[str, dict[str, Any]]:
    with services() as (bootstrap, dsn):
        await prepare(dsn, 100)
        topics = Topics()
        await topics.create(bootstrap)
        serve = ServeProcess(topics.env(bootstrap, dsn), app=APP).start()
        try:
            serve.wait_serving(60)
            limits = httpx.Limits(max_connections=4)
            async with httpx.AsyncClient(base_url=serve.url, timeout=120, limits=limits) as http:
                await _beside(http, None, 1.0)  # warm-up
                return {name: await _beside(http, doc, seconds) for name, doc in DOCUMENTS.items()}
        finally:
            serve.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    rows = asyncio.run(run(parser.parse_args().seconds))
    print(f"{'beside':36} {'healthz p50':>11} {'p99':>7} {'max':>7} {'docs':>6} {'doc p50 ms':>10}")
    for name, row in rows.items():
        print(
            f"{name:36} {row['p50']:11.2f} {row['p99']:7.2f} {row['max']:7.2f} "
            f"{row['documents']:6d} {row['doc_p50']:10.1f}"
        )


if __name__ == "__main__":
    main()
