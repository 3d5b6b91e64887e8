"""The surface users touch: HTTP operations and runs, the Python client, the CLI commands."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from runner.client import OperationClient
from tests.apps import ledger
from tests.e2e.test_cli_errors import oprunner
from tests.support import ServeProcess, Topics, seed_ledger, token


@pytest.fixture
async def accounts(clean_db: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    await seed_ledger(clean_db, [("a1", "alice", "t1"), ("a2", "alice", "t1"), ("b1", "bob", "t1")])
    yield clean_db


@pytest.fixture
def server(topics: Topics, database_url: str, accounts: Any, serving: Any) -> ServeProcess:
    return serving(topics, database_url)


def bearer(sub: str = "alice", **claims: Any) -> dict[str, str]:
    claims.setdefault("tenant", "t1")
    return {"authorization": f"Bearer {token(sub, **claims)}"}


async def test_http_operations(server: ServeProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"database": True, "kafka": True}

        ok = await http.post("/ops/ledger.credit", json={"accountId": "a1", "amount": "3"}, headers=bearer())
        assert (
            ok.status_code == 200
            and ok.json()["status"] == "succeeded"
            and ok.json()["output"]["balance"] == "3"
        )

        cases = [
            ({"accountId": "a1", "amount": "3"}, {}, 401, "UNAUTHENTICATED"),
            ({"accountId": "b1", "amount": "3"}, bearer(), 403, "FORBIDDEN"),
            ({"accountId": "a1", "amount": "-3"}, bearer(), 400, "INVALID_INPUT"),
        ]
        for body, headers, status, code in cases:
            response = await http.post("/ops/ledger.credit", json=body, headers=headers)
            assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text
        assert (await http.post("/ops/ledger.nope", json={}, headers=bearer())).status_code == 404
        bad_json = await http.post("/ops/ledger.credit", content=b"{nope", headers=bearer())
        assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "INVALID_JSON"

        keyed = {**bearer(), "idempotency-key": "http-key-1"}
        first = await http.post("/ops/ledger.credit", json={"accountId": "a2", "amount": "1"}, headers=keyed)
        again = await http.post("/ops/ledger.credit", json={"accountId": "a2", "amount": "1"}, headers=keyed)
        assert first.json()["output"] == again.json()["output"] == {"accountId": "a2", "balance": "1"}
        other = await http.post("/ops/ledger.credit", json={"accountId": "a2", "amount": "2"}, headers=keyed)
        assert other.status_code == 409

        accepted = await http.post(
            "/ops/ledger.credit",
            json={"accountId": "a1", "amount": "1"},
            headers={**bearer(), "prefer": "respond-async"},
        )
        assert accepted.status_code == 202
        location = accepted.headers["location"]
        deadline = time.monotonic() + 20
        while True:
            run = await http.get(location, headers=bearer())
            assert run.status_code == 200, run.text
            if run.json()["status"] not in ("pending", "running"):
                break
            assert time.monotonic() < deadline, run.text
            await asyncio.sleep(0.05)
        assert run.json()["status"] == "succeeded", run.text
        assert (run.json()["result"] or {}).get("output", {}).get("balance") == "4", run.text
        assert (await http.get(location, headers=bearer("bob"))).status_code == 404
        assert (await http.get(location)).status_code == 401
        assert (await http.get(location, headers=bearer("root", kind="admin"))).status_code == 200
        denied_run = await http.post(
            "/ops/ledger.credit", json={"accountId": "b1", "amount": "1"}, headers=bearer()
        )
        seen = await http.get(f"/ops/runs/{denied_run.json()['commandId']}", headers=bearer())
        assert seen.status_code == 200 and seen.json()["status"] == "denied"


async def _raw_request(port: int, head: bytes, rest: bytes) -> bytes:
    """Send ``head``, wait for the server's answer to begin, send ``rest``, read the whole answer.

    Writing after the server answered is what a client mid-upload does; a server that closed
    without draining resets the connection then, and the read below fails."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        first = await asyncio.wait_for(reader.read(12), 20)
        writer.write(rest)
        await writer.drain()
        return first + await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()


async def test_answers_sent_before_the_request_was_read_reach_the_client(server: ServeProcess) -> None:
    """A 413 before the body, or a 400 for a header block past the limit, is read by the client,
    never a reset: the server drains what the client still sends before it closes."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for _ in range(5):  # on one kept-alive client: the connection after a 413 is not reused dead
            huge = await http.post("/ops/ledger.credit", content=b"x" * (1024 * 1024 + 1), headers=bearer())
            assert huge.status_code == 413 and huge.headers["connection"] == "close"
            assert huge.json()["error"]["code"] == "TOO_LARGE"
            ok = await http.post(
                "/ops/ledger.credit", json={"accountId": "a1", "amount": "1"}, headers=bearer()
            )
            assert ok.status_code == 200
    filler = b"x-filler: " + b"f" * 8000 + b"\r\n"
    head = b"POST /ops/ledger.credit HTTP/1.1\r\nhost: test\r\n" + filler * 20  # 160 KB > 128 KiB
    for _ in range(5):
        answer = await _raw_request(server.http_port, head, filler * 20 + b"content-length: 2\r\n\r\n{}")
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    body = b"x" * (2 * 1024 * 1024)
    start = b"POST /ops/ledger.credit HTTP/1.1\r\nhost: test\r\ncontent-length: %d\r\n\r\n" % len(body)
    for _ in range(5):
        answer = await _raw_request(server.http_port, start + body[:1024], body[1024:])
        assert answer.startswith(b"HTTP/1.1 413") and b"connection: close" in answer.lower(), answer[:200]


async def test_python_client(server: ServeProcess, topics: Topics, kafka_bootstrap: str) -> None:
    async with OperationClient(
        kafka_bootstrap,
        registry=ledger.registry,
        commands_topic=topics.commands,
        results_topic=topics.results,
    ) as client:
        stream = client.results("ledger.credit")
        first = asyncio.ensure_future(stream.__anext__())
        result = await client.call(
            "ledger.credit", {"accountId": "a1", "amount": "2"}, token=token("alice", tenant="t1")
        )
        assert result["data"]["status"] == "succeeded" and result["type"] == "ledger.credit.result"
        assert (await asyncio.wait_for(first, 10))["correlationid"] == result["correlationid"]
        command_id = await client.send(
            "ledger.credit", {"accountId": "a1", "amount": "1"}, token=token("alice", tenant="t1")
        )
        assert command_id
        with pytest.raises(ValueError):  # checked against the spec before it leaves the process
            await client.send("ledger.credit", {"accountId": "a1", "amount": "zero"}, token="t")
        await stream.aclose()


def test_cli_commands(server: ServeProcess, topics: Topics, kafka_bootstrap: str, tmp_path: Path) -> None:
    env = {k: v for k, v in server.env.items() if k.startswith("OPRUNNER_")}
    env["OPRUNNER_TOKEN"] = token("alice", tenant="t1")
    app = ("--app", "tests.apps.ledger:registry")
    called = oprunner("call", "ledger.credit", '{"accountId": "a1", "amount": "5"}', *app, **env)
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["status"] == "succeeded"
    denied = oprunner("call", "ledger.credit", '{"accountId": "b1", "amount": "5"}', *app, **env)
    assert denied.returncode == 2 and json.loads(denied.stdout)["status"] == "denied"
    sent = oprunner("send", "ledger.credit", '{"accountId": "a1", "amount": "1"}', *app, **env)
    assert sent.returncode == 0 and len(sent.stdout.strip()) == 36
    tailed = oprunner("tail", "results", "--from-beginning", "--limit", "2", "--json", **env)
    assert tailed.returncode == 0 and all(
        json.loads(line)["type"] == "ledger.credit.result" for line in tailed.stdout.splitlines()
    )
    table = oprunner("tail", "audit", "--from-beginning", "--limit", "1", **env)
    assert table.returncode == 0 and "ledger.credit" in table.stdout and "decision" in table.stdout
    bad = oprunner("call", "ledger.credit", "not json", *app, **env)
    assert bad.returncode == 1 and bad.stderr.startswith("oprunner: INPUT is not JSON")
    invalid = oprunner("send", "ledger.credit", '{"accountId": "a1"}', *app, **env)
    assert invalid.returncode == 1 and "invalid input: amount" in invalid.stderr
    no_token = oprunner("send", "ledger.credit", "{}", *app, **{**env, "OPRUNNER_TOKEN": ""})
    assert no_token.returncode == 1 and "no token" in no_token.stderr
    docs = oprunner("docs", str(tmp_path / "docs"))
    assert docs.returncode == 0
    assert {p.name for p in (tmp_path / "docs").iterdir()} == {
        "asyncapi.json",
        "openapi.json",
        "catalog.md",
        "schemas",
    }
    listed = oprunner("specs", "list")
    assert "billing.capturePayment" in listed.stdout and "billing.refundPayment" in listed.stdout
    shown = json.loads(oprunner("specs", "show", "billing.capturePayment").stdout)
    assert shown["input"]["properties"]["paymentMethodId"]["sensitive"] is True


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"],
        ["migrate"],
        ["dev"],
        ["send"],
        ["call"],
        ["tail"],
        ["specs"],
        ["docs"],
        ["token"],
        ["dlq", "replay"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = oprunner(*command, "--help")
    assert result.returncode == 0 and "Usage" in result.stdout


async def test_dlq_replay_sends_dead_letters_back_once(
    server: ServeProcess, topics: Topics, kafka_bootstrap: str
) -> None:
    from tests.support import Reader, produce

    await produce(kafka_bootstrap, topics.commands, [(b"a1", b"not a command", [])])
    async with Reader(kafka_bootstrap, topics.dlq) as dlq:
        await dlq.until(lambda ms: len(ms) >= 1)
    env = {k: v for k, v in server.env.items() if k.startswith("OPRUNNER_")}
    listed = await asyncio.to_thread(oprunner, "dlq", "replay", "--dry-run", **env)
    assert (
        listed.returncode == 0
        and "would replay 1 message(s)" in listed.stdout
        and "not JSON" in listed.stdout
    )
    replayed = await asyncio.to_thread(oprunner, "dlq", "replay", **env)
    assert replayed.returncode == 0 and "replayed 1 message(s)" in replayed.stdout
    async with Reader(kafka_bootstrap, topics.dlq) as dlq:  # still malformed: dead-lettered again
        await dlq.until(lambda ms: len(ms) >= 2)
    again = await asyncio.to_thread(oprunner, "dlq", "replay", **env)
    assert again.returncode == 0 and "replayed 1 message(s)" in again.stdout  # only the new one


async def test_dlq_replay_gives_the_operator_token_only_to_that_senders_commands(
    server: ServeProcess, topics: Topics, kafka_bootstrap: str
) -> None:
    """Dead letters keep no token, only who sent them: a replay runs alice's parked command as
    the alice token the operator gives, and bob's without it (denied), whatever token was
    left in the dead letter."""
    from tests.support import Reader, cloudevent, produce

    def parked(id: str, sender: str) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        value = cloudevent("ledger.credit", {"accountId": "a1", "amount": "2"}, id=id)
        headers = [
            ("dlq-code", b"RETRIES_EXHAUSTED"),
            ("dlq-actor", json.dumps({"sub": sender, "tenant": "t1", "kind": "user"}).encode()),
            ("authorization", f"Bearer {token('alice', tenant='t1')}".encode()),  # never passed on
        ]
        return b"a1", value, headers

    for letter in (parked("alices", "alice"), parked("bobs", "bob")):
        await produce(kafka_bootstrap, topics.dlq, [letter])
    env = {k: v for k, v in server.env.items() if k.startswith("OPRUNNER_")}
    replayed = await asyncio.to_thread(
        oprunner, "dlq", "replay", "--token", token("alice", tenant="t1"), **env
    )
    assert replayed.returncode == 0 and "replayed 2 message(s)" in replayed.stdout, replayed.stderr
    async with Reader(kafka_bootstrap, topics.results) as results:
        await results.until(lambda ms: {"alices", "bobs"} <= {e["causationid"] for e in results.events()})
    status = {e["causationid"]: e["data"]["status"] for e in results.events()}
    assert status["alices"] == "succeeded"
    assert status["bobs"] == "denied"  # bob's command never runs with alice's token
