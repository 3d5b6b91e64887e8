"""End-to-end benchmark: oprunner against the bare pipe and three hand-written consumers.

    python -m bench.e2e [--commands 20000] [--rate 500] [--seconds 20] [--workers 2]
                        [--only broker,bare,handwritten,batched,samework,oprunner,workers,exactlyonce]
                        [--latency-broker noida|same] [--profile]

Rows: ``bare`` (aiokafka consume -> produce, nothing else), ``handwritten`` (the FastStream
consumer a team writes first: a transaction and an awaited publish per message),
``batched`` (the one it writes for speed: FastStream's batch subscriber, a transaction per
batch), ``samework`` (that one doing oprunner's work: a JWT, the owner rule's query, an
audit row, a result and an audit event per command), ``oprunner`` (one ``serve``) and
``oprunner-wN`` (``serve --workers N``) and ``oprunner-eos`` (one ``serve`` with
``OPRUNNER_KAFKA_EXACTLY_ONCE``, read ``read_committed``); see ``bench/pipelines.py``.

Two brokers in one run: throughput on the default local broker (``OPRUNNER_DEV_BROKER``,
Tansu), latency on noida-db (flat latency, where Tansu's grows with its partitions;
``--latency-broker same`` keeps one). ``oprunner-eos`` needs transactions, which Tansu lacks,
so both its phases run on the latency broker; compare it with the ``oprunner`` latency row
(same broker, same rate: CPU per command and percentiles).

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
import shutil
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
from infra.devservices import Postgres, broker_client_env, broker_kind, free_port, new_broker
from infra.kafka import ensure_topics
from infra.postgres import migrate
from runner import mint_token
from runner.client import PacedFetch

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-that-is-long-enough-for-hs256"
PIPELINES = ("broker", "bare", "handwritten", "batched", "samework", "oprunner", "workers", "exactlyonce")
SLOW_COMMANDS = 4000
WORKERS = [2]
"""``serve --workers N`` for the ``workers`` row (``--workers``)."""
SERVE_KINDS = ("oprunner", "workers", "exactlyonce")
"""The rows that run ``oprunner serve``."""


@dataclass(frozen=True)
class Kafka:
    """A broker the run uses: where, which kind (for its clients' settings), its pid."""

    bootstrap: str
    kind: str | None = None  # None: as the environment says (a broker given by URL)
    pid: int | None = None

    def client_env(self) -> dict[str, str]:
        return broker_client_env(self.kind)

    @property
    def reader_interval_ms(self) -> int:
        """The pipelines' consumers fetch at most as often as the broker needs (``PacedFetch``:
        noida answers every fetch at once); the benchmark's own readers up to every 1 ms
        there, so at most that is added to what they measure and they take no core from the
        pipeline under test."""
        return min(int(self.client_env()["OPRUNNER_FETCH_MIN_INTERVAL_MS"]), 1)

    @property
    def transactions(self) -> bool:
        return self.kind != "tansu"


@dataclass
class Figures:
    pipeline: str
    throughput_broker: str | None = None
    latency_broker: str | None = None
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
    cpu_us_per_command: dict[str, float] = field(default_factory=dict)
    latency_cpu_us_per_command: dict[str, float] = field(default_factory=dict)
    """The same during the latency run, at its fixed rate (small batches: the per-batch costs
    weigh more than at full speed)."""
    """CPU time per command of each process group during the throughput run, from /proc."""
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    """oprunner's per-batch time in each stage during the latency run (``runner.observability.STAGES``)."""
    notes: list[str] = field(default_factory=list)
    postgres_per_command: dict[str, Any] = field(default_factory=dict)
    """WAL bytes, commits and rows written per command in the throughput run, from Postgres's
    own statistics (``pg_stat_wal``, ``pg_stat_database``; every database of the server)."""
    profile: list[tuple[str, float]] = field(default_factory=list)
    """With ``--profile``: the functions with the most own time in the throughput run, and
    their share of the samples (py-spy, attached to ``serve``)."""


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

    def __init__(self, kind: str, kafka: Kafka, dsn: str) -> None:
        suffix = uuid.uuid4().hex[:8]
        bootstrap = kafka.bootstrap
        self.kind, self.kafka, self.bootstrap = kind, kafka, bootstrap
        self.commands, self.results = f"bench.{suffix}.commands", f"bench.{suffix}.results"
        self.env = {
            **os.environ,
            "OPRUNNER_KAFKA_BOOTSTRAP": bootstrap,
            **kafka.client_env(),  # idempotent producers, paced fetches: what the broker takes
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
            "OPRUNNER_LOG_LEVEL": "WARNING",
            **({"OPRUNNER_KAFKA_EXACTLY_ONCE": "true"} if kind == "exactlyonce" else {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None  # none for the broker row
        self.port = free_port()  # its HTTP port (oprunner's /metrics)
        self.log = Path(f"/tmp/bench-{kind}-{suffix}.log")
        self.workers = WORKERS[0] if kind == "workers" else 1  # "serving" lines to wait for

    async def topics(self) -> None:
        await ensure_topics(
            self.bootstrap, {self.commands: 4, self.results: 4, self.env["OPRUNNER_AUDIT_TOPIC"]: 4}
        )

    @property
    def name(self) -> str:
        return {"workers": f"oprunner-w{self.workers}", "exactlyonce": "oprunner-eos"}.get(
            self.kind, self.kind
        )

    def start(self) -> None:
        if self.kind in SERVE_KINDS:
            cmd = [
                sys.executable,
                *["-m", "runner", "serve", "bench.app:registry"],
                *(["--workers", str(self.workers)] if self.kind == "workers" else []),
            ]
            self.env["OPRUNNER_LOG_LEVEL"] = "INFO"  # "serving" marks readiness
        else:
            cmd = [sys.executable, "-m", "bench.pipelines", self.kind]
        env = {**self.env, "OPRUNNER_HTTP_PORT": str(self.port)}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60 * self.workers
        marker = "ready" if self.kind in ("bare", "handwritten", "batched", "samework") else "serving "
        while self.log.read_text(errors="replace").count(marker) < self.workers:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} did not start: {self.log.read_text()[-1500:]}")
            time.sleep(0.05)

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def peak_rss_mb(self) -> float | None:
        """The largest peak RSS (VmHWM) among the pipeline's processes: a supervisor's
        workers count, each on its own."""
        peaks = []
        for pid in cpu_by_role(self.pids, self.kafka)["runner"]:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks.append(int(line.split()[1]) / 1024)
            except OSError:
                continue
        return max(peaks) if peaks else None

    def stage_counts(self) -> dict[str, dict[str, Any]]:
        """The ``oprunner_stage_seconds`` histogram (every worker's, summed, under
        ``--workers``): stage -> sum, count and cumulative bucket counts."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        out: dict[str, dict[str, Any]] = {}
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            if family.name != "oprunner_stage_seconds":
                continue
            for sample in family.samples:
                stage = out.setdefault(sample.labels["stage"], {"sum": 0.0, "count": 0.0, "buckets": {}})
                if sample.name.endswith("_sum"):
                    stage["sum"] += sample.value
                elif sample.name.endswith("_count"):
                    stage["count"] += sample.value
                elif sample.name.endswith("_bucket"):
                    stage["buckets"][float(sample.labels["le"])] = sample.value
        return out

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


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


async def reader(bootstrap: str, topic: str, *, committed: bool = False) -> AIOKafkaConsumer:
    """A reader of every partition of ``topic`` from its start; ``committed``: as a
    ``read_committed`` subscriber (what exactly-once mode promises to)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=5,
        isolation_level="read_committed" if committed else "read_uncommitted",
    )
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
    consumer: AIOKafkaConsumer, kind: str, ids: set[str], within: float, interval_ms: int
) -> list[tuple[str, int]]:
    """(causation id, Kafka timestamp in ms) of results for ``ids``, until all came or time ran out."""
    got: list[tuple[str, int]] = []
    seen: set[str] = set()
    deadline = time.monotonic() + within
    paced = PacedFetch(consumer, interval_ms)
    while not ids <= seen and time.monotonic() < deadline:
        fetched = await paced.getmany(timeout_ms=200, max_records=5000)
        for messages in fetched.values():
            for m in messages:
                cause = causation(kind, m)
                if cause in ids:
                    got.append((cause, m.timestamp))
                    seen.add(cause)
    return got


async def throughput(kind: str, kafka: Kafka, dsn: str, n: int, accounts: int, headers: list[Any]) -> Figures:
    """Start the pipeline and let its group settle (200 commands answered), then produce ``n``
    commands as fast as the producer can and time the pipeline from its first result to its
    last, by the results' own Kafka timestamps (when the pipeline sent them). The hand-written
    per-message consumer gets at most ``SLOW_COMMANDS`` (a rate needs no more, and it runs
    ~150/s: 20,000 would take two minutes)."""
    asked, n = n, min(n, SLOW_COMMANDS) if kind == "handwritten" else n
    pipe = Pipeline(kind, kafka, dsn)
    bootstrap, interval = kafka.bootstrap, kafka.reader_interval_ms
    await pipe.topics()
    consumer = await reader(bootstrap, pipe.results, committed=kind == "exactlyonce")
    try:
        pipe.start()
        warm = batch_for(kind, 200, accounts, f"warm-{uuid.uuid4().hex[:6]}")
        await produce(bootstrap, pipe.commands, warm, headers)
        await collect(consumer, kind, {c for _, _, c in warm}, 60, interval)
        batch = batch_for(kind, n, accounts, f"tp-{uuid.uuid4().hex[:6]}")
        ids = {c for _, _, c in batch}
        cpu_before = cpu_by_role(pipe.pids, pipe.kafka)
        pg_before = await pg_counters(dsn)
        sampling = Sampler(pipe.pids[0]) if PROFILE[0] and kind == "oprunner" else None
        producing = asyncio.create_task(produce(bootstrap, pipe.commands, batch, headers))
        got = await collect(consumer, kind, ids, max(120.0, n / 100), interval)
        await producing
        cpu = cpu_per_command(cpu_before, cpu_by_role(pipe.pids, pipe.kafka), n)
        profile = sampling.stop() if sampling is not None else []
        await asyncio.sleep(1.1)  # backends flush their statistics at most once a second
        pg_after = await pg_counters(dsn)
        seen = {c for c, _ in got}
        stamps = [t for _, t in got]
        first, last = (min(stamps) / 1000, max(stamps) / 1000) if stamps else (0.0, 0.0)
        figures = Figures(pipe.name, commands=len(seen), seconds=round(last - first, 3))
        figures.per_second = round((len(seen) - 1) / (last - first), 1) if last > first else 0.0
        if len(seen) < n:
            figures.notes.append(f"only {len(seen)} of {n} results before the deadline")
        if n < asked:
            figures.notes.append(f"throughput over {n} commands, not {asked}")
        if len(got) > len(seen):
            figures.notes.append(f"{len(got) - len(seen)} duplicate results (redeliveries answered again)")
        figures.peak_rss_mb = pipe.peak_rss_mb()
        figures.cpu_us_per_command = cpu
        figures.profile = profile
        figures.postgres_per_command = pg_per_command(pg_before, pg_after, n) if n else {}
        return figures
    finally:
        await consumer.stop()
        pipe.stop()


async def latency(
    kind: str, kafka: Kafka, dsn: str, rate: int, seconds: float, accounts: int, headers: list[Any]
) -> dict[str, Any]:
    pipe = Pipeline(kind, kafka, dsn)
    bootstrap, interval = kafka.bootstrap, kafka.reader_interval_ms
    await pipe.topics()
    total = int(rate * seconds)
    batch = commands(total, accounts, f"lat-{uuid.uuid4().hex[:6]}")
    sent: dict[str, float] = {}
    received: dict[str, float] = {}
    consumer = await reader(
        bootstrap, pipe.commands if kind == "broker" else pipe.results, committed=kind == "exactlyonce"
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    if kind != "broker":
        pipe.start()
    warm = batch_for(kind, 200, accounts, f"warm-{uuid.uuid4().hex[:6]}")
    await produce(bootstrap, pipe.commands, warm, headers)
    await collect(consumer, kind, {c for _, _, c in warm}, 60, interval)
    staged = kind in ("oprunner", "exactlyonce")
    before = pipe.stage_counts() if staged else {}
    cpu_before = cpu_by_role(pipe.pids, pipe.kafka)

    paced = PacedFetch(consumer, interval)

    async def read(until: float) -> None:
        while time.monotonic() < until and len(received) < total:
            fetched = await paced.getmany(timeout_ms=50, max_records=5000)
            for messages in fetched.values():
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
        stages = stage_breakdown(before, pipe.stage_counts()) if staged else {}
        cpu = cpu_per_command(cpu_before, cpu_by_role(pipe.pids, pipe.kafka), len(received))
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
        "stages": stages,
        "latency_cpu_us_per_command": cpu,
    }


def stage_breakdown(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per stage, over what happened between two scrapes: batches, mean ms, and p50/p99 ms
    (the upper bound of the histogram bucket the quantile falls in)."""
    from runner.observability import STAGES

    out: dict[str, Any] = {}
    for name in STAGES:
        now, then = after.get(name), before.get(name, {"sum": 0.0, "count": 0.0, "buckets": {}})
        if now is None:
            continue
        count = now["count"] - then["count"]
        if count <= 0:
            continue
        buckets = sorted((le, n - then["buckets"].get(le, 0.0)) for le, n in now["buckets"].items())

        def quantile(q: float, buckets: list[tuple[float, float]] = buckets, count: float = count) -> float:
            return next((le for le, n in buckets if n >= q * count), float("inf")) * 1000

        out[name] = {
            "batches": int(count),
            "mean_ms": round((now["sum"] - then["sum"]) / count * 1000, 2),
            "p50_ms": quantile(0.5),
            "p99_ms": quantile(0.99),
        }
    return out


def stage_table(stages: dict[str, Any]) -> str:
    lines = [f"{'stage':14} {'batches':>8} {'mean ms':>9} {'p50 ms <=':>10} {'p99 ms <=':>10}"]
    for name, s in stages.items():
        lines.append(
            f"{name:14} {s['batches']:8} {s['mean_ms']:9.2f} {s['p50_ms']:10.1f} {s['p99_ms']:10.1f}"
        )
    return "\n".join(lines)


PG_SETTINGS = ("shared_preload_libraries=pg_stat_statements", "pg_stat_statements.track=all")
"""The benchmark's own Postgres counts every statement (``pg_stat_statements``), nested ones
(the migrations' functions) too."""


async def pg_counters(dsn: str) -> dict[str, Any]:
    """Postgres's cumulative WAL bytes, commits, rows written and statements, read now; the
    statements by text when ``pg_stat_statements`` is loaded (the benchmark's own Postgres)."""
    conn = await asyncpg.connect(dsn)
    try:
        wal = await conn.fetchval("SELECT wal_bytes FROM pg_stat_wal")
        row = await conn.fetchrow(
            "SELECT sum(xact_commit) AS commits, sum(tup_inserted + tup_updated + tup_deleted) AS rows"
            " FROM pg_stat_database"
        )
        statements: dict[str, float] = {}
        with contextlib.suppress(asyncpg.PostgresError):
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            for s in await conn.fetch(
                "SELECT query, sum(calls) AS calls FROM pg_stat_statements"
                " WHERE query NOT LIKE '%pg_stat_%' GROUP BY query"
            ):
                statements[" ".join(s["query"].split())[:90]] = float(s["calls"])
    finally:
        await conn.close()
    return {
        "wal_bytes": float(wal),
        "commits": float(row["commits"]),
        "rows_written": float(row["rows"]),
        "statements": sum(statements.values()) if statements else float("nan"),
        "by_statement": statements,
    }


def pg_per_command(before: dict[str, Any], after: dict[str, Any], n: int) -> dict[str, Any]:
    """What one command cost Postgres between two readings of ``pg_counters``."""
    figures: dict[str, Any] = {
        name: round((after[name] - before[name]) / n, 3) for name in after if name != "by_statement"
    }
    by = after["by_statement"]
    figures["by_statement"] = dict(
        sorted(
            ((q, round((c - before["by_statement"].get(q, 0.0)) / n, 3)) for q, c in by.items()),
            key=lambda item: -item[1],
        )[:12]
    )
    return figures


PROFILE = [False]
"""``--profile``: sample oprunner's ``serve`` with py-spy during its throughput run."""


class Sampler:
    """py-spy attached to one process until ``stop``: own time per function, from its raw
    (collapsed-stack) output. Its sampling takes CPU of its own, counted to no role; the
    process sampled runs a little slower while it is attached."""

    def __init__(self, pid: int, rate: int = 250) -> None:
        self.out = Path(f"/tmp/bench-profile-{pid}.txt")
        self.proc = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(self.out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self, top: int = 15) -> list[tuple[str, float]]:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return []
        own: dict[str, int] = {}
        total = 0
        for line in self.out.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            leaf = stack.rsplit(";", 1)[-1]
            own[leaf] = own.get(leaf, 0) + int(count)
            total += int(count)
        ranked = sorted(own.items(), key=lambda kv: -kv[1])[:top]
        return [(name, round(100 * n / total, 1)) for name, n in ranked] if total else []


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SERVICE_PIDS: dict[str, int] = {}
BROKER_PIDS: set[int] = set()
"""The root process of each service the benchmark started (``broker``, ``postgres``)."""


def _processes() -> dict[int, tuple[int, float]]:
    """Every process: pid -> (parent pid, CPU seconds so far, user + system)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return out


def cpu_by_role(runner_pids: list[int], kafka: Kafka) -> dict[str, dict[int, float]]:
    """CPU seconds so far of each process of each role: the pipeline (``runner``), the load
    generator (this process), and the broker (``kafka``'s) and Postgres the benchmark
    started, with their children (Postgres backends). The other broker counts for no role."""
    procs = _processes()
    roots = {"runner": runner_pids, "load": [os.getpid()], **{k: [v] for k, v in SERVICE_PIDS.items()}}
    if kafka.pid:
        roots["broker"] = [kafka.pid]
    for pid in BROKER_PIDS - {kafka.pid}:
        roots[f"idle-{pid}"] = [pid]
    out: dict[str, dict[int, float]] = {}
    for role, pids in roots.items():
        members = {p for p in pids if p in procs}
        grown = True
        while grown:  # add children until none is new (the load generator's own are not others')
            new = {p for p, (parent, _) in procs.items() if parent in members and p not in members}
            new -= {p for r, ps in roots.items() if r != role for p in ps}
            grown = bool(new)
            members |= new
        out[role] = {p: procs[p][1] for p in members}
    return {role: cpu for role, cpu in out.items() if not role.startswith("idle-")}


def cpu_per_command(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], n: int
) -> dict[str, float]:
    """Microseconds of CPU per command, per role, between two ``cpu_by_role`` snapshots (a
    process that started between them counts all its CPU)."""
    return {
        role: round(sum(cpu - before.get(role, {}).get(pid, 0.0) for pid, cpu in now.items()) / n * 1e6, 1)
        for role, now in after.items()
        if n
    }


@contextlib.contextmanager
def services(latency_broker: str) -> Any:
    """Postgres, and the brokers: (throughput's, latency's), the same one when a URL is given
    or ``latency_broker`` is ``same``."""
    bootstrap, dsn = os.environ.get("OPRUNNER_KAFKA_BOOTSTRAP"), os.environ.get("OPRUNNER_DATABASE_URL")
    started: list[Any] = []
    try:
        if not dsn:
            pg = Postgres(settings=PG_SETTINGS).start()
            started.append(pg)
            dsn = pg.dsn
            if pg.proc_pid:
                SERVICE_PIDS["postgres"] = pg.proc_pid
        if bootstrap:
            given = Kafka(bootstrap)
            yield (given, given), dsn
            return

        def local(kind: str) -> Kafka:
            broker = new_broker(kind).start()
            started.append(broker)
            pid = getattr(getattr(broker, "proc", None), "pid", None)
            if pid:
                BROKER_PIDS.add(pid)
            return Kafka(broker.bootstrap, kind, pid)

        default = broker_kind()
        first = local(default)
        other = latency_broker if latency_broker != "same" else default
        yield (first, first if other == default else local(other)), dsn
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
    WORKERS[0] = args.workers
    PROFILE[0] = args.profile
    if args.profile and shutil.which("py-spy") is None:
        print("bench.e2e: --profile needs py-spy: pip install py-spy", file=sys.stderr)
        return 2
    headers = [("authorization", f"Bearer {mint_token(SECRET, sub='alice', tenant='t1', ttl=7200)}".encode())]
    chosen = [p for p in PIPELINES if p in args.only.split(",")]
    with services(args.latency_broker) as ((fast, flat), dsn):
        await prepare(dsn, args.accounts)
        rows = []
        for kind in chosen:
            # exactly-once mode needs transactions: the latency broker's, if the default lacks them
            kafka = flat if kind == "exactlyonce" and not fast.transactions else fast
            if kind == "exactlyonce" and not kafka.transactions:
                print(f"[{kind}] skipped: {kafka.kind} has no transactions (--latency-broker noida)")
                continue
            if kind == "broker":  # latency only: what the broker alone adds, one hop
                figures = Figures(kind)
            else:
                print(
                    f"[{kind}] throughput on {kafka.kind or 'Kafka'}: {args.commands} commands ...",
                    flush=True,
                )
                figures = await throughput(kind, kafka, dsn, args.commands, args.accounts, headers)
                figures.throughput_broker = kafka.kind
            if kind in args.latency.split(","):
                print(
                    f"[{kind}] latency on {flat.kind or 'Kafka'}: {args.rate}/s for {args.seconds}s ...",
                    flush=True,
                )
                lat = await latency(kind, flat, dsn, args.rate, args.seconds, args.accounts, headers)
                figures.latency_broker = flat.kind
                rss = lat.pop("rss")
                figures.stages = lat.pop("stages") or {}
                figures.latency_cpu_us_per_command = lat.pop("latency_cpu_us_per_command")
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
    for ours in [r.pipeline for r in rows if r.pipeline.startswith("oprunner")]:
        for base in ("bare", "handwritten", "batched", "samework"):
            if base in by and by[base].throughput_broker != by[ours].throughput_broker:
                continue  # oprunner-eos on another broker than the others: not comparable
            if base in by and by[base].per_second:
                ratios[f"{ours}/{base}"] = round(by[ours].per_second / by[base].per_second, 3)
    print()
    print(table(rows))
    for name, value in ratios.items():
        print(f"{name}: {value}")
    for attribute, when in (
        ("cpu_us_per_command", "in the throughput run"),
        ("latency_cpu_us_per_command", "in the latency run"),
    ):
        budgets = [r for r in rows if getattr(r, attribute)]
        if not budgets:
            continue
        roles = list(getattr(budgets[0], attribute))
        print(f"\nCPU µs per command {when} (from /proc; the load generator includes its reader):")
        print(f"{'pipeline':12} " + " ".join(f"{role:>9}" for role in [*roles, "total"]))
        for r in budgets:
            cells = [getattr(r, attribute).get(role, 0.0) for role in roles]
            print(f"{r.pipeline:12} " + " ".join(f"{c:9.1f}" for c in [*cells, sum(cells)]))
    if any(r.postgres_per_command for r in rows):
        print(
            "\nPostgres per command in the throughput run"
            " (pg_stat_wal, pg_stat_database, pg_stat_statements):"
        )
        print(f"{'pipeline':12} {'WAL bytes':>10} {'commits':>8} {'rows':>6} {'statements':>10}")
        for r in rows:
            if r.postgres_per_command:
                pg = r.postgres_per_command
                print(
                    f"{r.pipeline:12} {pg['wal_bytes']:10.0f} {pg['commits']:8.3f} {pg['rows_written']:6.2f}"
                    f" {pg['statements']:10.3f}"
                )
        for r in rows:
            if r.postgres_per_command.get("by_statement"):
                print(f"\n{r.pipeline}'s statements per command (pg_stat_statements):")
                for query, calls in r.postgres_per_command["by_statement"].items():
                    if calls:
                        print(f"  {calls:7.3f}  {query}")
    if "oprunner" in by and by["oprunner"].profile:
        print("\noprunner's top functions by own time in the throughput run (py-spy, % of samples):")
        for name, share in by["oprunner"].profile:
            print(f"{share:6.1f}%  {name}")
    for name in ("oprunner", "oprunner-eos"):
        if name in by and by[name].stages:
            print(f"\n{name}'s stages at the latency run's rate (per batch; from its /metrics):")
            print(stage_table(by[name].stages))
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
    parser.add_argument("--rate", type=int, default=500, help="commands per second in the latency runs")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--only", default=",".join(PIPELINES), help="comma-separated pipelines to run")
    parser.add_argument(
        "--latency", default="broker,bare,oprunner,exactlyonce", help="pipelines whose latency is measured"
    )
    parser.add_argument(
        "--latency-broker",
        default="noida",
        choices=("noida", "tansu", "same"),
        help="the local broker of the latency runs (and of oprunner-eos); same: the default one",
    )
    parser.add_argument("--json", default="", help="where to write the figures")
    parser.add_argument(
        "--profile", action="store_true", help="print oprunner's top 15 functions by own time (py-spy)"
    )
    parser.add_argument("--workers", type=int, default=2, help="serve --workers N for the workers row")
    sys.exit(asyncio.run(main(parser.parse_args())))
