"""End-to-end benchmark: oprunner against the bare pipe and a hand-written consumer.

    python -m bench.e2e [--commands 20000] [--rate 1000] [--seconds 20]

One run, one broker, one database, one message set (``ledger.credit`` commands over 1,000
accounts, each with a JWT). For each pipeline: throughput (commands produced beforehand,
results/s between the first and the last result), then open-loop latency at a fixed rate
(produce -> result, p50/p95/p99). Prints one table and the ratios, writes JSON to
``bench/results/``. Local services are started unless OPRUNNER_KAFKA_BOOTSTRAP and
OPRUNNER_DATABASE_URL are set.

The ``broker`` row is the latency floor: the same commands at the same rate, read back from
the commands topic by the benchmark itself (one hop, no pipeline). On the local broker it
is far from flat: its in-memory storage gets slower as a partition grows, so latency over a
20 s run rises second by second for every pipeline alike (a pipeline has two hops).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.app import LEDGER_SCHEMA as SCHEMA
from infra.devservices import Postgres, free_port, new_broker
from infra.kafka import ensure_topics
from infra.postgres import migrate
from runner import mint_token

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-that-is-long-enough-for-hs256"
PIPELINES = ("broker", "bare", "handwritten", "oprunner")


@dataclass
class Figures:
    pipeline: str
    commands: int = 0
    seconds: float = 0.0
    per_second: float = 0.0
    latency_rate: int = 0
    latency_sent: int = 0
    latency_received: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    peak_rss_mb: float | None = None
    notes: list[str] = field(default_factory=list)


def commands(n: int, accounts: int, prefix: str) -> list[tuple[bytes, bytes, str]]:
    out = []
    for i in range(n):
        account = f"acc-{i % accounts}"
        cid = f"{prefix}-{i}"
        doc = {
            "specversion": "1.0",
            "id": cid,
            "source": "bench",
            "type": "ledger.credit",
            "data": {"accountId": account, "amount": "1"},
        }
        out.append((account.encode(), orjson.dumps(doc), cid))
    return out


class Pipeline:
    """One pipeline process on its own topics and group."""

    def __init__(self, kind: str, bootstrap: str, dsn: str) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.kind, self.bootstrap = kind, bootstrap
        self.commands, self.results = f"bench.{suffix}.commands", f"bench.{suffix}.results"
        self.env = {
            **os.environ,
            "OPRUNNER_KAFKA_BOOTSTRAP": bootstrap,
            "OPRUNNER_KAFKA_IDEMPOTENT_PRODUCER": os.environ.get(
                "OPRUNNER_KAFKA_IDEMPOTENT_PRODUCER", str(new_broker().idempotent).lower()
            ),
            "OPRUNNER_DATABASE_URL": dsn,
            "OPRUNNER_JWT_SECRET": SECRET,
            "OPRUNNER_COMMANDS_TOPIC": self.commands,
            "OPRUNNER_RESULTS_TOPIC": self.results,
            "OPRUNNER_AUDIT_TOPIC": f"bench.{suffix}.audit",
            "OPRUNNER_DLQ_TOPIC": f"bench.{suffix}.dlq",
            "OPRUNNER_GROUP_ID": f"bench-{suffix}",
            "OPRUNNER_SESSION_TIMEOUT_MS": "6000",
            "OPRUNNER_TOPIC_REPLICATION_FACTOR": "1",
            "OPRUNNER_TOPIC_MIN_INSYNC_REPLICAS": "1",
            "OPRUNNER_FETCH_MAX_WAIT_MS": "5",  # Tansu holds fetches to the deadline; all three get 5
            "OPRUNNER_HTTP_PORT": str(free_port()),
            "OPRUNNER_LOG_LEVEL": "WARNING",
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = Path(f"/tmp/bench-{kind}-{suffix}.log")
        self.processes = int(os.environ.get("BENCH_PROCESSES", "1")) if kind == "oprunner" else 1

    async def topics(self) -> None:
        await ensure_topics(
            self.bootstrap, {self.commands: 4, self.results: 4, self.env["OPRUNNER_AUDIT_TOPIC"]: 4}
        )

    def start(self) -> None:
        if self.kind == "oprunner":
            cmd = [sys.executable, "-m", "runner", "serve", "bench.app:registry"]
            self.env["OPRUNNER_LOG_LEVEL"] = "INFO"  # "serving" marks readiness
        else:
            cmd = [sys.executable, "-m", "bench.pipelines", self.kind]
        for n in range(self.processes):
            env = {**self.env, "OPRUNNER_HTTP_PORT": str(free_port())}
            with self.log.open("ab") as out:
                self.procs.append(
                    subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
                )
            deadline = time.monotonic() + 60
            marker = "serving" if self.kind == "oprunner" else "ready"
            while self.log.read_text(errors="replace").count(marker) < n + 1:
                if self.procs[-1].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.kind} did not start: {self.log.read_text()[-1500:]}")
                time.sleep(0.05)

    def peak_rss_mb(self) -> float | None:
        """The largest peak RSS (VmHWM) among the pipeline's processes."""
        peaks = []
        for proc in self.procs:
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks.append(int(line.split()[1]) / 1024)
            except OSError:
                continue
        return max(peaks) if peaks else None

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


async def produce(
    bootstrap: str, topic: str, batch: list[tuple[bytes, bytes, str]], headers: list[Any]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=262144)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key, headers=headers) for key, value, _ in batch]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def reader(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5)
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(4)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return consumer


def causation(kind: str, message: Any) -> str:
    try:
        if kind == "bare":
            return str(orjson.loads(bytes(dict(message.headers)["causation"]))["id"])
        if kind == "broker":  # the command itself, read back
            return str(orjson.loads(message.value)["id"])
        return str(orjson.loads(message.value)["causationid"])
    except (KeyError, ValueError):
        return ""


def batch_for(kind: str, n: int, accounts: int, prefix: str) -> list[tuple[bytes, bytes, str]]:
    batch = commands(n, accounts, prefix)
    if kind == "bare":  # the bare pipe echoes the first 64 bytes of the value as its causation
        batch = [(k, orjson.dumps({"id": c}), c) for k, _, c in batch]
    return batch


async def collect(
    consumer: AIOKafkaConsumer, kind: str, ids: set[str], within: float
) -> list[tuple[str, int]]:
    """(causation id, Kafka timestamp in ms) of results for ``ids``, until all came or time ran out."""
    got: list[tuple[str, int]] = []
    seen: set[str] = set()
    deadline = time.monotonic() + within
    while not ids <= seen and time.monotonic() < deadline:
        for messages in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
            for m in messages:
                cause = causation(kind, m)
                if cause in ids:
                    got.append((cause, m.timestamp))
                    seen.add(cause)
    return got


async def throughput(
    kind: str, bootstrap: str, dsn: str, n: int, accounts: int, headers: list[Any]
) -> Figures:
    """Start the pipeline and let its group settle (200 commands answered), then produce ``n``
    commands as fast as the producer can and time the pipeline from its first result to its
    last, by the results' own Kafka timestamps (when the pipeline sent them)."""
    pipe = Pipeline(kind, bootstrap, dsn)
    await pipe.topics()
    consumer = await reader(bootstrap, pipe.results)
    try:
        pipe.start()
        warm = batch_for(kind, 200, accounts, f"warm-{uuid.uuid4().hex[:6]}")
        await produce(bootstrap, pipe.commands, warm, headers)
        await collect(consumer, kind, {c for _, _, c in warm}, 60)
        batch = batch_for(kind, n, accounts, f"tp-{uuid.uuid4().hex[:6]}")
        ids = {c for _, _, c in batch}
        producing = asyncio.create_task(produce(bootstrap, pipe.commands, batch, headers))
        got = await collect(consumer, kind, ids, max(120.0, n / 100))
        await producing
        seen = {c for c, _ in got}
        stamps = [t for _, t in got]
        first, last = (min(stamps) / 1000, max(stamps) / 1000) if stamps else (0.0, 0.0)
        figures = Figures(kind, commands=len(seen), seconds=round(last - first, 3))
        figures.per_second = round((len(seen) - 1) / (last - first), 1) if last > first else 0.0
        if len(seen) < n:
            figures.notes.append(f"only {len(seen)} of {n} results before the deadline")
        if len(got) > len(seen):
            figures.notes.append(f"{len(got) - len(seen)} duplicate results (redeliveries answered again)")
        figures.peak_rss_mb = pipe.peak_rss_mb()
        return figures
    finally:
        await consumer.stop()
        pipe.stop()


async def latency(
    kind: str, bootstrap: str, dsn: str, rate: int, seconds: float, accounts: int, headers: list[Any]
) -> dict[str, Any]:
    pipe = Pipeline(kind, bootstrap, dsn)
    await pipe.topics()
    total = int(rate * seconds)
    batch = commands(total, accounts, f"lat-{uuid.uuid4().hex[:6]}")
    sent: dict[str, float] = {}
    received: dict[str, float] = {}
    consumer = await reader(bootstrap, pipe.commands if kind == "broker" else pipe.results)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    if kind != "broker":
        pipe.start()
    warm = batch_for(kind, 200, accounts, f"warm-{uuid.uuid4().hex[:6]}")
    await produce(bootstrap, pipe.commands, warm, headers)
    await collect(consumer, kind, {c for _, _, c in warm}, 60)

    async def read(until: float) -> None:
        while time.monotonic() < until and len(received) < total:
            for messages in (await consumer.getmany(timeout_ms=50, max_records=5000)).values():
                now = time.monotonic()
                for m in messages:
                    key = causation(kind, m)
                    if key in sent:
                        received.setdefault(key, now)

    async def write() -> None:
        start = time.monotonic()
        for i, (key, value, cid) in enumerate(batch):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if kind == "bare":
                value = orjson.dumps({"id": cid})
            sent[cid] = time.monotonic()
            await producer.send(pipe.commands, value, key=key, headers=headers)

    try:
        reading = asyncio.create_task(read(time.monotonic() + seconds + 60))
        await write()
        await reading
        rss = pipe.peak_rss_mb()
    finally:
        await producer.stop()
        await consumer.stop()
        pipe.stop()
    lat = sorted((received[k] - sent[k]) * 1000 for k in received)

    def pct(q: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None

    return {
        "latency_rate": rate,
        "latency_sent": len(sent),
        "latency_received": len(received),
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "rss": rss,
    }


@contextlib.contextmanager
def services() -> Any:
    bootstrap, dsn = os.environ.get("OPRUNNER_KAFKA_BOOTSTRAP"), os.environ.get("OPRUNNER_DATABASE_URL")
    started: list[Any] = []
    try:
        if not dsn:
            pg = Postgres().start()
            started.append(pg)
            dsn = pg.dsn
        if not bootstrap:
            broker = new_broker().start()
            started.append(broker)
            bootstrap = broker.bootstrap
        yield bootstrap, dsn
    finally:
        for service in started:
            service.stop()


async def prepare(dsn: str, accounts: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await conn.execute(SCHEMA)
        await conn.execute("TRUNCATE ledger_accounts, ledger_effects, ledger_holds")
        await conn.copy_records_to_table(
            "ledger_accounts",
            records=[(f"acc-{i}", "alice", "t1", Decimal(0)) for i in range(accounts)],
            columns=["id", "owner_id", "tenant_id", "balance"],
        )
    finally:
        await conn.close()


COLUMNS = ("pipeline", "commands", "seconds", "cmd/s", "rate", "p50 ms", "p95 ms", "p99 ms", "peak RSS MB")
WIDTHS = (12, 9, 8, 9, 6, 8, 8, 8, 12)


def table(rows: list[Figures]) -> str:
    def line(cells: tuple[Any, ...]) -> str:
        first, *rest = cells
        return f"{first!s:<{WIDTHS[0]}}" + "".join(
            f" {'-' if c is None else c!s:>{w}}" for c, w in zip(rest, WIDTHS[1:], strict=True)
        )

    head = line(COLUMNS)
    lines = [head, "-" * len(head)]
    for r in rows:
        rss = round(r.peak_rss_mb, 1) if r.peak_rss_mb else None
        cells = (
            r.pipeline,
            r.commands,
            r.seconds,
            r.per_second,
            r.latency_rate or None,
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            rss,
        )
        lines.append(line(cells))
        lines += [f"  note: {note}" for note in r.notes]
    return "\n".join(lines)


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip()


async def main(args: argparse.Namespace) -> int:
    headers = [("authorization", f"Bearer {mint_token(SECRET, sub='alice', tenant='t1', ttl=7200)}".encode())]
    chosen = [p for p in PIPELINES if p in args.only.split(",")]
    with services() as (bootstrap, dsn):
        await prepare(dsn, args.accounts)
        rows = []
        for kind in chosen:
            if kind == "broker":  # latency only: what the broker alone adds, one hop
                figures = Figures(kind)
            else:
                print(f"[{kind}] throughput: {args.commands} commands ...", flush=True)
                figures = await throughput(kind, bootstrap, dsn, args.commands, args.accounts, headers)
            if kind in args.latency.split(","):
                print(f"[{kind}] latency: {args.rate}/s for {args.seconds}s ...", flush=True)
                lat = await latency(kind, bootstrap, dsn, args.rate, args.seconds, args.accounts, headers)
                rss = lat.pop("rss")
                for name, value in lat.items():
                    setattr(figures, name, value)
                if rss and (figures.peak_rss_mb is None or rss > figures.peak_rss_mb):
                    figures.peak_rss_mb = rss
                if lat["latency_received"] < lat["latency_sent"]:
                    figures.notes.append(
                        f"latency: {lat['latency_received']} of {lat['latency_sent']} answered"
                    )
            rows.append(figures)
            print(table([figures]).splitlines()[-1], flush=True)
    by = {r.pipeline: r for r in rows}
    ratios = {}
    if "oprunner" in by:
        for base in ("bare", "handwritten"):
            if base in by and by[base].per_second:
                ratios[f"oprunner/{base}"] = round(by["oprunner"].per_second / by[base].per_second, 3)
    print()
    print(table(rows))
    for name, value in ratios.items():
        print(f"{name}: {value}")
    out = Path(args.json) if args.json else ROOT / "bench" / "results" / f"e2e-{int(time.time())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    out.write_text(
        json.dumps(
            {"commit": commit, "args": vars(args), "pipelines": [asdict(r) for r in rows], "ratios": ratios},
            indent=2,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--rate", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--only", default=",".join(PIPELINES), help="comma-separated pipelines to run")
    parser.add_argument(
        "--latency", default="broker,bare,oprunner", help="pipelines whose latency is measured"
    )
    parser.add_argument("--json", default="", help="where to write the figures")
    sys.exit(asyncio.run(main(parser.parse_args())))
