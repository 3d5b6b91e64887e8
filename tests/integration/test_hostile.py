"""Hostile input against a running ``serve``: every message gets a specific answer, none stops
the consumer or the HTTP server, memory stays bounded, and nobody gets in."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.support import SECRET, Reader, ServeProcess, Topics, auth, caused, cloudevent, seed_ledger, token


@pytest.fixture
async def accounts(clean_db: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    await seed_ledger(
        clean_db,
        [("mine", "alice", "t1"), ("theirs", "mallory", "t2"), ("same-id-other-tenant", "alice", "t2")],
    )
    yield clean_db


@pytest.fixture
def server(topics: Topics, database_url: str, accounts: Any, serving: Any) -> tuple[ServeProcess, Topics]:
    # Under the broker's own limit (Kafka's default, about 1 MB), so the runner's is what is met.
    return serving(topics, database_url, OPRUNNER_MAX_MESSAGE_BYTES=str(LIMIT)), topics


LIMIT = 256 * 1024
"""The runner's message size limit in these tests."""


async def send_raw(
    bootstrap: str, topic: str, messages: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        for key, value, headers in messages:
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


def peak_rss_mb(proc: ServeProcess) -> float:
    assert proc.proc is not None
    for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def bearer_of(raw: str) -> list[tuple[str, bytes]]:
    return [("authorization", f"Bearer {raw}".encode())]


def credit(account: str, id: str, **data: Any) -> bytes:
    return cloudevent("ledger.credit", {"accountId": account, "amount": "1", **data}, id=id)


async def test_hostile_messages_are_answered_and_the_consumer_keeps_going(
    server: tuple[ServeProcess, Topics], kafka_bootstrap: str, accounts: asyncpg.Pool
) -> None:
    proc, topics = server
    envelope = b'{"specversion":"1.0","id":"x","source":"s","type":"ledger.credit","data":'
    await send_raw(
        kafka_bootstrap,
        topics.commands,
        [
            (b"mine", envelope + b'"' + b"a" * (LIMIT + 10) + b'"}', auth()),  # over the size limit
            (b"mine", b"[" * 100_000 + b"]" * 100_000, auth()),  # nested 100,000 deep
            (b"mine", envelope + b"9" * 200_000 + b"}", auth()),  # a number with 200,000 digits
            (b"mine", b'{"specversion":"1.0","id":"\xff\xfe","source":"s","type":"t","data":{}}', auth()),
            (b"mine", cloudevent("ledger.credit", "a string", id="string-data"), auth()),
            (b"mine", credit("mine", "after-all-that"), auth()),
        ],
    )
    async with Reader(kafka_bootstrap, topics.dlq) as dlq, Reader(kafka_bootstrap, topics.results) as results:
        await dlq.until(lambda ms: len(ms) >= 4, timeout=60)
        await results.until(lambda ms: len(ms) >= 2, timeout=60)
    reasons = [dict(m.headers)["dlq-reason"].decode() for m in dlq.messages]
    assert f"exceeds the {LIMIT}-byte limit" in reasons[0]
    assert (
        reasons[1].startswith("not JSON")
        and reasons[2].startswith("not JSON")
        and reasons[3].startswith("not JSON")
    )
    assert dict(dlq.messages[0].headers).get("dlq-truncated") == b"true"
    got = {
        e["causationid"]: (e["data"]["status"], (e["data"].get("error") or {}).get("code"))
        for e in results.events()
    }
    assert got == {"string-data": ("rejected", "INVALID_INPUT"), "after-all-that": ("succeeded", None)}
    assert peak_rss_mb(proc) < 250
    assert proc.proc is not None and proc.proc.poll() is None


def forged_tokens() -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": "alice", "tenant": "t1", "exp": now + 600}
    header = orjson.dumps({"alg": "none", "typ": "JWT"})
    body = orjson.dumps(claims)
    import base64

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return {
        "alg-none": f"{b64(header)}.{b64(body)}.",
        "expired": jwt.encode({**claims, "exp": now - 3600}, SECRET, algorithm="HS256"),
        "not-yet-valid": jwt.encode({**claims, "nbf": now + 3600}, SECRET, algorithm="HS256"),
        "wrong-secret": jwt.encode(claims, "x" * 40, algorithm="HS256"),
        "missing-sub": jwt.encode({"tenant": "t1", "exp": now + 600}, SECRET, algorithm="HS256"),
        "half-a-megabyte": "a" * (512 * 1024),  # the record stays under the broker's 1 MB
        "garbage": "not.a.token",
    }


async def test_bad_tokens_and_smuggled_actors_get_nowhere(
    server: tuple[ServeProcess, Topics], kafka_bootstrap: str, accounts: asyncpg.Pool
) -> None:
    proc, topics = server
    messages = [
        (b"mine", credit("mine", f"token-{name}"), bearer_of(raw)) for name, raw in forged_tokens().items()
    ]
    messages += [
        (b"theirs", credit("theirs", "smuggled-user", userId="mallory"), auth()),
        (b"theirs", credit("theirs", "smuggled-tenant", tenant="t2", roles=["admin"]), auth()),
        (b"theirs", credit("theirs", "other-tenant"), auth()),
        (b"same-id-other-tenant", credit("same-id-other-tenant", "same-user-other-tenant"), auth()),
    ]
    await send_raw(kafka_bootstrap, topics.commands, messages)
    async with Reader(kafka_bootstrap, topics.results) as results:
        await results.until(lambda ms: len(ms) >= len(messages), timeout=60)
    got = {e["causationid"]: (e["data"]["status"], e["data"]["error"]["code"]) for e in results.events()}
    for name in forged_tokens():
        assert got[f"token-{name}"] == ("denied", "UNAUTHENTICATED"), name
    assert got["smuggled-user"] == ("rejected", "INVALID_INPUT")
    assert got["smuggled-tenant"] == ("rejected", "INVALID_INPUT")
    assert got["other-tenant"] == ("denied", "FORBIDDEN")
    assert got["same-user-other-tenant"] == ("denied", "FORBIDDEN")
    assert await accounts.fetchval("SELECT count(*) FROM ledger_effects") == 0

    async with httpx.AsyncClient(base_url=proc.url, timeout=30) as http:
        for name, raw in forged_tokens().items():
            response = await http.post(
                "/ops/ledger.credit",
                json={"accountId": "mine", "amount": "1"},
                headers={"authorization": f"Bearer {raw}"},
            )
            # a header past 128 KiB is refused by the HTTP server itself, before authentication
            expected = 400 if name == "half-a-megabyte" else 401
            assert response.status_code == expected, (name, response.text)
        good = await http.post(
            "/ops/ledger.credit",
            json={"accountId": "mine", "amount": "1"},
            headers={"authorization": f"Bearer {token('alice', tenant='t1')}"},
        )
        assert good.status_code == 200
    assert peak_rss_mb(proc) < 250


async def test_published_events_keep_their_order_per_key_whatever_their_size(kafka_bootstrap: str) -> None:
    from infra.kafka import KafkaPublisher
    from runner.store import Publication

    topics = Topics()
    await topics.create(kafka_bootstrap)
    sizes = [10, 20_000, 10, 10, 30_000, 10]  # small ones share a record batch; large go alone
    pubs = [
        Publication(topics.results, b"k", f"{n:02d}".encode() + b" " * size) for n, size in enumerate(sizes)
    ]
    pubs.insert(2, Publication(topics.results, b"other", b"x"))
    publisher = KafkaPublisher.connecting_to(kafka_bootstrap, acks="all")
    await publisher.start()
    try:
        await publisher.publish(pubs)
    finally:
        await publisher.stop()
    async with Reader(kafka_bootstrap, topics.results) as reader:
        await reader.until(lambda ms: len(ms) >= len(pubs))
    assert [m.value[:2] for m in reader.messages if m.key == b"k"] == [
        b"00",
        b"01",
        b"02",
        b"03",
        b"04",
        b"05",
    ]


async def test_an_unpublishable_outbox_row_is_parked_and_blocks_nothing(
    clean_db: asyncpg.Pool, kafka_bootstrap: str
) -> None:
    from infra.kafka import KafkaPublisher, OutboxRelay
    from infra.postgres import PostgresStore

    topic = Topics().results
    await clean_db.executemany(
        """INSERT INTO oprunner_outbox (topic, key, value, created_at)
           VALUES ($1, $2, $3, now() - interval '1 minute')""",
        [(topic, b"k", b'{"n": 1}'), (topic, b"k", b"x" * (3 * 1024 * 1024)), (topic, b"k", b'{"n": 3}')],
    )
    publisher = KafkaPublisher.connecting_to(kafka_bootstrap, acks="all")
    await publisher.start()
    try:
        relay = OutboxRelay(PostgresStore(clean_db), publisher)
        assert await relay.sweep_once() == 3
        assert relay.parked == 1 and relay.published == 2
        assert await relay.sweep_once() == 0  # the parked row is not tried again
    finally:
        await publisher.stop()
    rows = await clean_db.fetch("SELECT length(value) AS size, failed_at, error FROM oprunner_outbox")
    assert len(rows) == 1 and rows[0]["size"] == 3 * 1024 * 1024 and rows[0]["failed_at"] is not None
    assert "TooLarge" in rows[0]["error"]
    async with Reader(kafka_bootstrap, topic) as reader:
        await reader.until(lambda ms: {m.value for m in ms} >= {b'{"n": 1}', b'{"n": 3}'})
    # both good rows arrived (row 1 may arrive twice: the failed batch had sent it already)
    assert {m.value for m in reader.messages} == {b'{"n": 1}', b'{"n": 3}'}


async def test_poison_and_nul_messages_get_an_answer_each_and_the_partition_moves_on(
    topics: Topics, database_url: str, accounts: asyncpg.Pool, serving: Any, kafka_bootstrap: str
) -> None:
    """U+0000 in each attribute, key and data; eight commands the store refuses every time (a
    deferred foreign key their handler breaks fails the commit), all on one key; then valid
    commands on that key."""
    serving(topics, database_url, OPRUNNER_PARK_AFTER_ATTEMPTS="2")
    nul = "\x00"
    hostile = {
        f"nul-{name}": cloudevent("ledger.credit", {"accountId": "mine", "amount": "1"}, **{name: f"a{nul}b"})
        for name in ("source", "idempotencykey", "correlationid", "opversion", "subject")
    }
    hostile["nul-id"] = cloudevent("ledger.credit", {"accountId": "mine", "amount": "1"}, id=f"x{nul}")
    hostile["nul-type"] = cloudevent(f"ledger.cre{nul}dit", {"accountId": "mine", "amount": "1"})
    messages = [(b"mine", value, auth()) for value in hostile.values()]
    messages.append((f"mi{nul}ne".encode(), credit("mine", "nul-kafka-key"), auth()))
    messages.append((b"mine", credit(f"mi{nul}ne", "nul-data"), auth()))
    messages.append((b"mine", credit("mine", "nul-data-key", **{f"k{nul}": 1}), auth()))
    messages += [(b"mine", credit("mine", f"poison-{i}", fail="DEFERRED_FK"), auth()) for i in range(8)]
    messages += [(b"mine", credit("mine", f"after-{i}"), auth()) for i in range(5)]
    await send_raw(kafka_bootstrap, topics.commands, messages)

    after = {f"after-{i}" for i in range(5)} | {"nul-kafka-key"}
    async with (
        Reader(kafka_bootstrap, topics.results) as results,
        Reader(kafka_bootstrap, topics.dlq) as dlq,
        Reader(kafka_bootstrap, topics.audit) as audit,
    ):
        await results.until(lambda ms: after | {"nul-data", "nul-data-key"} <= caused(ms), timeout=120)
        await dlq.until(lambda ms: len(ms) >= 7 + 8, timeout=60)
        await audit.until(lambda ms: len(ms) >= len(messages), timeout=60)
    answers = {e["causationid"]: e["data"] for e in results.events()}
    assert all(answers[i]["status"] == "succeeded" for i in after)
    for rejected in ("nul-data", "nul-data-key"):
        assert answers[rejected]["status"] == "rejected"
        assert answers[rejected]["error"]["code"] == "INVALID_INPUT"
    headers = [dict(m.headers) for m in dlq.messages]
    malformed = [h for h in headers if h["dlq-code"] == b"MALFORMED"]
    parked = [h for h in headers if h["dlq-code"] == b"RETRIES_EXHAUSTED"]
    assert len(malformed) == 7 and all(b"U+0000" in h["dlq-reason"] for h in malformed)
    assert len(parked) == 8 and all(b"ForeignKeyViolation" in h["dlq-last-error"] for h in parked)
    codes = [e["data"]["error"] for e in audit.events()]
    assert codes.count("RETRIES_EXHAUSTED") == 8 and codes.count("MALFORMED") == 7
    assert not any(
        r["idempotency_key"].startswith("poison")
        for r in await accounts.fetch("SELECT idempotency_key FROM ledger_effects")
    )


async def test_a_command_speaks_with_one_credential(
    server: tuple[ServeProcess, Topics], kafka_bootstrap: str, accounts: asyncpg.Pool
) -> None:
    """Two ``authorization`` headers (a bad one first, alice's last, as a proxy adding its
    own would make) are no guess at which one counts: the message is dead-lettered with the
    reason. The header's name is read in any case, as HTTP's is."""
    _, topics = server
    alice = auth()[0][1]
    two = [("authorization", b"Bearer a"), ("Authorization", alice)]
    await send_raw(
        kafka_bootstrap,
        topics.commands,
        [
            (b"mine", credit("mine", "two-credentials"), two),
            (b"mine", credit("mine", "capitalised"), [("Authorization", alice)]),
        ],
    )
    async with Reader(kafka_bootstrap, topics.dlq) as dlq, Reader(kafka_bootstrap, topics.results) as results:
        await dlq.until(lambda ms: len(ms) >= 1, timeout=60)
        await results.until(lambda ms: "capitalised" in caused(ms), timeout=60)
    [letter] = [dict(m.headers) for m in dlq.messages]
    assert (
        letter["dlq-code"] == b"MALFORMED" and b"more than one authorization header" in letter["dlq-reason"]
    )
    [answer] = [e["data"] for e in results.events() if e["causationid"] == "capitalised"]
    assert answer["status"] == "succeeded"
    assert "two-credentials" not in caused(results.messages)
