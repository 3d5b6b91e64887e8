"""Helpers for tests that run ``oprunner serve`` as a real process against real servers."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from infra.devservices import broker_client_env, free_port
from infra.kafka import ensure_topics
from runner import mint_token
from runner.client import assign_whole_topic

ROOT = Path(__file__).resolve().parent.parent
SECRET = "integration-secret-that-is-long-enough!"


def idempotence() -> bool:
    """Whether producers use ``enable_idempotence``: ``OPRUNNER_KAFKA_IDEMPOTENT_PRODUCER``
    when set (a broker of one's own), else whether the session's local broker has it."""
    return broker_client_env()["OPRUNNER_KAFKA_IDEMPOTENT_PRODUCER"].lower() in ("1", "true", "yes")


def token(sub: str = "alice", **claims: Any) -> str:
    return mint_token(SECRET, sub=sub, **claims)


def cloudevent(op: str, data: Any, *, id: str | None = None, **ext: Any) -> bytes:
    """A command as any producer would write it: structured CloudEvents JSON."""
    doc = {
        "specversion": "1.0",
        "id": id or str(uuid.uuid4()),
        "source": "tests",
        "type": op,
        "data": data,
        **ext,
    }
    return orjson.dumps(doc)


@dataclass
class Topics:
    """Topic and group names unique to one test, so tests never see each other's messages."""

    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def commands(self) -> str:
        return f"t{self.suffix}.commands"

    @property
    def results(self) -> str:
        return f"t{self.suffix}.results"

    @property
    def audit(self) -> str:
        return f"t{self.suffix}.audit"

    @property
    def dlq(self) -> str:
        return f"t{self.suffix}.dlq"

    @property
    def group(self) -> str:
        return f"g{self.suffix}"

    async def create(self, bootstrap: str, partitions: int = 4) -> None:
        await ensure_topics(
            bootstrap,
            {self.commands: partitions, self.results: partitions, self.audit: partitions, self.dlq: 1},
        )

    def env(self, bootstrap: str, database_url: str, **extra: str) -> dict[str, str]:
        return {
            "OPRUNNER_KAFKA_BOOTSTRAP": bootstrap,
            **broker_client_env(),  # idempotent producers, paced fetches: what the broker takes
            "OPRUNNER_DATABASE_URL": database_url,
            "OPRUNNER_JWT_SECRET": SECRET,
            "OPRUNNER_COMMANDS_TOPIC": self.commands,
            "OPRUNNER_RESULTS_TOPIC": self.results,
            "OPRUNNER_AUDIT_TOPIC": self.audit,
            "OPRUNNER_DLQ_TOPIC": self.dlq,
            "OPRUNNER_GROUP_ID": self.group,
            "OPRUNNER_SESSION_TIMEOUT_MS": "6000",
            "OPRUNNER_FETCH_MAX_WAIT_MS": "5",
            "OPRUNNER_SHUTDOWN_TIMEOUT": "20",
            "OPRUNNER_TOPIC_REPLICATION_FACTOR": "1",
            "OPRUNNER_TOPIC_MIN_INSYNC_REPLICAS": "1",
            **extra,
        }


class ServeProcess:
    """``oprunner serve APP`` in a child process, stopped by PID."""

    def __init__(
        self,
        env: dict[str, str],
        app: str = "tests.apps.ledger:registry",
        log: Path | None = None,
        cwd: Path = ROOT,
        args: tuple[str, ...] = (),
    ) -> None:
        self.cwd = cwd
        self.args = args
        self.http_port = int(env.get("OPRUNNER_HTTP_PORT") or free_port())
        self.env = {**os.environ, **env, "OPRUNNER_HTTP_PORT": str(self.http_port)}
        self.app = app
        self.log = log or Path(f"/tmp/oprunner-serve-{uuid.uuid4().hex[:8]}.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServeProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runner", "serve", self.app, *self.args],
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_serving(self, timeout: float = 30.0, count: int = 1) -> None:
        """Until ``count`` "serving" lines are in the log (one per worker)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.output()[-2000:]}")
            if len(re.findall(r"\bserving \d+ operations", self.output())) >= count:
                return
            time.sleep(0.05)
        raise AssertionError(f"serve not ready in {timeout}s: {self.output()[-2000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


async def produce(
    bootstrap: str,
    topic: str,
    messages: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]],
    *,
    idempotent: bool | None = None,
) -> None:
    """Send ``(key, value, headers)`` with a plain aiokafka producer and wait for every ack
    (idempotent when the session's broker can be, or as ``idempotent`` says)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=idempotence() if idempotent is None else idempotent,
        linger_ms=5,
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, headers=headers) for key, value, headers in messages
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def auth(sub: str = "alice", **claims: Any) -> list[tuple[str, bytes]]:
    claims.setdefault("tenant", "t1")
    return [("authorization", f"Bearer {token(sub, **claims)}".encode())]


class Reader:
    """Reads a topic from the beginning (no consumer group) and collects decoded messages."""

    def __init__(self, bootstrap: str, topic: str, *, isolation_level: str = "read_uncommitted") -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.isolation_level = isolation_level
        self.messages: list[Any] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> Reader:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level=self.isolation_level,
        )
        await self._consumer.start()
        await assign_whole_topic(self._consumer, self.topic, wait=10)  # from the beginning
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._consumer is not None
        await self._consumer.stop()

    async def until(self, done: Callable[[list[Any]], bool], timeout: float = 30.0) -> list[Any]:
        """Poll until ``done(messages)`` holds; fail with what arrived at the deadline."""
        assert self._consumer is not None
        deadline = time.monotonic() + timeout
        while not done(self.messages):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.topic}: condition not met in {timeout}s; got {len(self.messages)}"
                )
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                self.messages.extend(records)
        return self.messages

    async def to_end(self, timeout: float = 30.0) -> list[Any]:
        """Poll until every partition is read to its end as of now (for ``read_committed``,
        the last stable offset: what no open transaction holds back)."""
        assert self._consumer is not None
        consumer = self._consumer
        parts = [TopicPartition(self.topic, p) for p in consumer.partitions_for_topic(self.topic) or ()]
        ends = await consumer.end_offsets(parts)
        deadline = time.monotonic() + timeout
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.topic}: not read to its end in {timeout}s")
            for records in (await consumer.getmany(timeout_ms=200)).values():
                self.messages.extend(records)
        return self.messages

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(m.value) for m in self.messages]


def caused(messages: list[Any]) -> set[str]:
    """The command ids the result messages answer."""
    return {orjson.loads(m.value)["causationid"] for m in messages}


async def seed_ledger(db: Any, accounts: list[tuple[str, str, str]]) -> None:
    """The ledger app's tables, emptied, with ``(id, owner, tenant)`` accounts."""
    from tests.apps.ledger import SCHEMA

    await db.execute(SCHEMA)
    await db.execute("TRUNCATE ledger_accounts, ledger_effects, ledger_holds")
    await db.executemany(
        "INSERT INTO ledger_accounts (id, owner_id, tenant_id) VALUES ($1, $2, $3)", accounts
    )


async def store_state(db: Any) -> str:
    """What the store holds, for a failure message: runs by state, outbox rows, effects."""
    runs = await db.fetch("SELECT status, outcome, count(*) AS n FROM oprunner_runs GROUP BY 1, 2")
    outbox = await db.fetchval("SELECT count(*) FROM oprunner_outbox")
    parked = await db.fetchval("SELECT count(*) FROM oprunner_outbox WHERE failed_at IS NOT NULL")
    effects = await db.fetchval("SELECT count(*) FROM ledger_effects")
    by_state = {f"{r['status']}/{r['outcome']}": r["n"] for r in runs}
    return f"runs {by_state}, outbox rows {outbox} ({parked} parked), ledger effects {effects}"


async def ledger_check(db: Any, results: Reader, ids: set[str], total: int | None = None) -> None:
    """Every command has a result; every effect happened exactly once (``total``: the sum of
    all amounts, when not one per command)."""
    answered = caused(results.messages)
    assert not ids - answered, f"{len(ids - answered)} commands have no result"
    rows = await db.fetch("SELECT idempotency_key, count(*) AS n FROM ledger_effects GROUP BY 1")
    effects = {r["idempotency_key"]: r["n"] for r in rows}
    assert set(effects) == ids, f"{len(ids - set(effects))} effects missing"
    doubled = {k: n for k, n in effects.items() if n != 1}
    assert not doubled, f"effects doubled: {doubled}"
    assert await db.fetchval("SELECT sum(balance) FROM ledger_accounts") == (total or len(ids))
