"""A Standard Webhooks delivery to ``oprunner serve`` (``tests.apps.hooks``) against the
session's broker and Postgres: signed as the specification says, it is ingested once."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from runner.docs import OPENAPI_PATH
from tests.support import Reader, ServeProcess, Topics, seed_ledger

KEY = b"standard-webhooks-integration-k"  # 31 bytes
SECRET = "whsec_" + base64.b64encode(KEY).decode()


@pytest.fixture
async def ledger(clean_db: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    await seed_ledger(clean_db, [("acc-1", "alice", "t1")])
    yield clean_db


@pytest.fixture
def server(topics: Topics, database_url: str, ledger: Any, serving: Any) -> ServeProcess:
    started: ServeProcess = serving(
        topics, database_url, app="tests.apps.hooks:app", OPRUNNER_LEDGER_WEBHOOK_SECRET=SECRET
    )
    return started


def signed(body: bytes, msg_id: str, *, key: bytes = KEY, at: int | None = None) -> dict[str, str]:
    stamp = str(int(time.time()) if at is None else at)
    digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def event(type: str, **data: Any) -> bytes:
    return orjson.dumps({"type": type, "timestamp": "2024-05-01T12:00:00Z", "data": data})


async def post(server: ServeProcess, body: bytes, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"{server.url}/webhooks/ledger",
            content=body,
            headers={"content-type": "application/json", **headers},
            timeout=20,
        )


async def test_a_delivery_signed_per_the_specification_is_ingested_once(
    server: ServeProcess, topics: Topics, kafka_bootstrap: str, ledger: asyncpg.Pool
) -> None:
    body = event("ledger.credit.requested", accountId="acc-1", amount="2.50")
    first = await post(server, body, signed(body, "msg_once"))
    assert first.status_code == 200, first.text
    assert first.json() == {"received": "msg_once", "command": "ledger.deposit"}

    # the provider retries: the same delivery, and the same message re-signed later
    again = await post(server, body, signed(body, "msg_once"))
    assert again.status_code == 200 and again.json() == {"received": "msg_once", "duplicate": True}
    later = await post(server, body, signed(body, "msg_once", at=int(time.time()) + 5))
    assert later.status_code == 200 and later.json()["duplicate"] is True

    forged = await post(server, body, signed(body, "msg_forged", key=b"not-the-key" * 3))
    assert forged.status_code == 400 and "signature" in forged.json()["error"]
    tampered = event("ledger.credit.requested", accountId="acc-1", amount="2500")
    assert (await post(server, tampered, signed(body, "msg_tampered"))).status_code == 400
    stale = await post(server, body, signed(body, "msg_stale", at=int(time.time()) - 3600))
    assert stale.status_code == 400 and "old" in stale.json()["error"]
    assert (await post(server, body, {})).json() == {"error": "missing webhook-id header"}
    huge = b"x" * (1024 * 1024 + 1)
    assert (await post(server, huge, signed(huge, "msg_huge"))).status_code == 413
    not_json = b"{nope"
    assert (await post(server, not_json, signed(not_json, "msg_nj"))).status_code == 400

    # a mapping that raises, and a type it does not map: recorded, 200, nothing published
    boom = event("ledger.boom")
    answered = await post(server, boom, signed(boom, "msg_boom"))
    assert answered.status_code == 200 and answered.json() == {"received": "msg_boom", "command": None}
    other = event("ledger.account.opened", accountId="acc-1")
    assert (await post(server, other, signed(other, "msg_other"))).json()["command"] is None

    # one command was published for all of that, and it ran once
    async with Reader(kafka_bootstrap, topics.results) as results:
        await results.until(lambda ms: len(ms) >= 1, timeout=45)
    [result] = results.events()
    assert result["type"] == "ledger.deposit.result" and result["causationid"] == "ledger:msg_once"
    assert result["idempotencykey"] == "ledger:msg_once"
    assert result["data"] == {"status": "succeeded", "output": {"accountId": "acc-1", "balance": "2.50"}}
    async with Reader(kafka_bootstrap, topics.commands) as commands:
        await commands.until(lambda ms: len(ms) >= 1, timeout=10)
    [command] = commands.messages
    assert command.key == b"acc-1"
    assert orjson.loads(command.value)["source"] == "oprunner.webhooks.ledger"
    effects = await ledger.fetch("SELECT idempotency_key FROM ledger_effects")
    assert [r["idempotency_key"] for r in effects] == ["ledger:msg_once"]
    inbox = await ledger.fetch(
        """SELECT event_id, event_type, published_at IS NOT NULL AS published
           FROM oprunner_webhook_inbox WHERE provider = 'ledger' ORDER BY id"""
    )
    assert [tuple(r) for r in inbox] == [
        ("msg_once", "ledger.credit.requested", True),
        ("msg_boom", "ledger.boom", True),
        ("msg_other", "ledger.account.opened", True),
    ]


async def test_the_openapi_document_names_the_provider_and_stripe_is_not_served(server: ServeProcess) -> None:
    async with httpx.AsyncClient() as client:
        document = (await client.get(f"{server.url}{OPENAPI_PATH}", timeout=10)).json()
        stripe = await client.post(f"{server.url}/webhooks/stripe", content=b"{}", timeout=10)
    [provider] = document["paths"]["/webhooks/{provider}"]["post"]["parameters"]
    assert provider["schema"] == {"enum": ["ledger"]}
    assert stripe.status_code == 404
