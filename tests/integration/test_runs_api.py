"""The operator's runs API on ``oprunner serve``: the list with its filters and cursor, a
run's page with its audit trail, the live stream, the catalog; each seen by the actors who may
see it and by no one else."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from runner.model import REDACTED
from tests.support import Reader, ServeProcess, Topics, auth, caused, cloudevent, produce, seed_ledger, token

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
async def ledger(clean_db: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    await seed_ledger(clean_db, [("a1", "alice", "t1"), ("a2", "alice", "t1"), ("b1", "bob", "t1")])
    yield clean_db


@pytest.fixture
def server(topics: Topics, database_url: str, serving: Any, ledger: asyncpg.Pool) -> ServeProcess:
    return serving(topics, database_url)  # type: ignore[no-any-return]


async def add_account(db: asyncpg.Pool, account: str, owner: str, tenant: str | None) -> None:
    await db.execute(
        "INSERT INTO ledger_accounts (id, owner_id, tenant_id) VALUES ($1, $2, $3)", account, owner, tenant
    )


def bearer(sub: str = "alice", **claims: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {token(sub, **claims)}"}


ALICE = bearer("alice", tenant="t1")
BOB = bearer("bob", tenant="t1")
ADMIN_T1 = bearer("ops-t1", kind="admin", tenant="t1")
ADMIN_T2 = bearer("ops-t2", kind="admin", tenant="t2")
ADMIN = bearer("ops", kind="admin")


async def credit(
    http: httpx.AsyncClient, account: Any, who: dict[str, str], **headers: str
) -> dict[str, Any]:
    r = await http.post(
        "/ops/ledger.credit", json={"accountId": account, "amount": "1"}, headers={**who, **headers}
    )
    return dict(r.json())


async def listed(http: httpx.AsyncClient, who: dict[str, str], **query: Any) -> list[dict[str, Any]]:
    """Every page of the list, following ``next``."""
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {**query, **({"cursor": cursor} if cursor else {})}
        r = await http.get("/ops/runs", params=params, headers=who)
        assert r.status_code == 200, r.text
        out += r.json()["runs"]
        cursor = r.json()["next"]
        if cursor is None:
            return out


async def test_the_list_is_filtered_paged_and_shows_each_actor_only_theirs(server: ServeProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        ok = [await credit(http, "a1", ALICE, **{"x-correlation-id": "flow-7"}) for _ in range(3)]
        rejected = await credit(http, "", ALICE)  # an empty account id: invalid input
        denied = await credit(http, "b1", ALICE)  # bob's account
        bobs = await credit(http, "b1", BOB)
        other_tenant = await credit(http, "a2", bearer("alice", tenant="t2"))  # not alice of t1
        assert [r["status"] for r in (*ok, rejected, denied, bobs, other_tenant)] == [
            "succeeded",
            "succeeded",
            "succeeded",
            "rejected",
            "denied",
            "succeeded",
            "denied",
        ]
        mine = {r["commandId"] for r in (*ok, rejected, denied)}

        def ids(runs: list[dict[str, Any]]) -> set[str]:
            return {r["commandId"] for r in runs}

        alices = await listed(http, ALICE, limit=2)  # four pages of two: the cursor is followed
        assert ids(alices) == mine and len(alices) == 5
        assert [r["id"] for r in alices] == sorted((r["id"] for r in alices), reverse=True)  # newest first
        denial = next(r for r in alices if r["commandId"] == denied["commandId"])
        assert (denial["status"], denial["decision"], denial["error"]) == ("denied", "deny", "FORBIDDEN")
        assert denial["actorId"] == "alice" and denial["tenant"] == "t1" and denial["op"] == "ledger.credit"
        assert ids(await listed(http, ALICE, status="rejected")) == {rejected["commandId"]}
        assert ids(await listed(http, ALICE, correlationId="flow-7")) == {r["commandId"] for r in ok}
        assert ids(await listed(http, ALICE, op="billing.capturePayment")) == set()
        # asking for someone else's is not a way round the rule: nothing, not an error
        assert await listed(http, ALICE, actor="bob") == []
        assert await listed(http, ALICE, tenant="t2") == []
        assert ids(await listed(http, BOB)) == {bobs["commandId"]}
        # a tenant's admin sees the tenant's, whoever acted; an admin of another tenant none of it
        assert ids(await listed(http, ADMIN_T1)) == mine | {bobs["commandId"]}
        assert ids(await listed(http, ADMIN_T1, actor="bob")) == {bobs["commandId"]}
        assert ids(await listed(http, ADMIN_T2)) == {other_tenant["commandId"]}
        assert await listed(http, ADMIN_T2, tenant="t1") == []
        assert len(await listed(http, ADMIN)) == 7  # an admin without a tenant: everything
        # time range: nothing recorded in the future, everything since a minute ago
        assert await listed(http, ADMIN, since="2999-01-01T00:00:00Z") == []
        assert len(await listed(http, ADMIN, since="2020-01-01T00:00:00+00:00", until="2999-01-01")) == 7


async def test_bad_queries_and_missing_tokens_get_a_clear_answer(server: ServeProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        assert (await http.get("/ops/runs")).status_code == 401
        assert (await http.get("/ops/runs", headers={"authorization": "Bearer nope"})).status_code == 401
        for query, named in [
            ({"status": "done"}, "status"),
            ({"since": "yesterday"}, "since"),
            ({"limit": "0"}, "limit"),
            ({"limit": "201"}, "limit"),
            ({"cursor": "-1"}, "cursor"),
            ({"op": "x" * 2000}, "op"),
            ({"actor": "a\x00b"}, "actor"),
            ({"limit": "\u00b2"}, "limit"),  # a digit to str.isdigit, not to int()
            ({"cursor": "9" * 5000}, "cursor"),
        ]:
            r = await http.get("/ops/runs", params=query, headers=ALICE)
            assert r.status_code == 400 and r.json()["error"].startswith(named), (query, r.text)
        for resume in ("x", b"\xb2", "9" * 5000):  # bytes: a header value past ASCII
            streamed = {**ALICE, "accept": "text/event-stream", "last-event-id": resume}
            r = await http.get("/ops/runs", headers=streamed)
            assert r.status_code == 400 and "Last-Event-ID" in r.json()["error"]


async def test_a_runs_page_has_its_audit_trail_attempts_timings_and_trace(server: ServeProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        sent = {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01", "x-correlation-id": "flow-9"}
        first = await credit(http, "a1", ALICE, **{"idempotency-key": "pay-once", **sent})
        again = await credit(http, "a1", ALICE, **{"idempotency-key": "pay-once"})  # the stored result
        assert first["status"] == again["status"] == "succeeded"
        page = (await http.get(f"/ops/runs/{first['commandId']}", headers=ALICE)).json()
        assert page["status"] == "succeeded" and page["attempts"] == 1
        assert page["createdAt"] <= page["completedAt"]
        assert page["traceId"] == TRACE and page["correlationId"] == "flow-9"
        [entry] = page["audit"]  # the replay was sent as another command: its own entry
        assert entry["input"]["accountId"] == "a1" and entry["actor"]["id"] == "alice"
        assert entry["decision"] == "allow" and entry["durationMs"] >= 0
        replays = await listed(http, ALICE, replays="true")
        assert [r["replayed"] for r in replays if r["commandId"] == again["commandId"]] == [True]
        assert again["commandId"] not in {r["commandId"] for r in await listed(http, ALICE)}
        # another actor, the same tenant's admin, and another tenant's admin
        assert (await http.get(f"/ops/runs/{first['commandId']}", headers=BOB)).status_code == 404
        assert len((await http.get(f"/ops/runs/{first['commandId']}", headers=ADMIN_T1)).json()["audit"]) == 1
        assert (await http.get(f"/ops/runs/{first['commandId']}", headers=ADMIN_T2)).status_code == 404


async def test_the_catalog_lists_every_spec_with_its_schemas_and_policy(server: ServeProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        specs = {s["key"]: s for s in (await http.get("/ops/specs")).json()["specs"]}
    credit_spec = specs["ledger.credit"]
    assert credit_spec["version"] == "1.0.0" and credit_spec["kind"] == "command"
    assert set(credit_spec["input"]["required"]) == {"accountId", "amount"}
    assert credit_spec["policy"]["rules"][0]["resource"] == "account"
    assert credit_spec["sensitive"] == [] and credit_spec["deprecated"] is False


class Stream:
    """An open ``GET /ops/runs`` as Server-Sent Events: the entries it has sent so far."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.events: list[tuple[int, dict[str, Any]]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        event: dict[str, str] = {}
        async for line in self.response.aiter_lines():
            if line == "" and "data" in event:
                self.events.append((int(event["id"]), orjson.loads(event["data"])))
                event = {}
            elif line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                event[name] = value

    async def until(self, done: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while not done([e for _, e in self.events]):
            assert time.monotonic() < deadline, f"stream has {self.events!r}"
            assert not self.task.done(), "the stream ended"
            await asyncio.sleep(0.05)
        return [e for _, e in self.events]


async def test_the_live_stream_sends_new_runs_as_they_happen_and_resumes(server: ServeProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(20, read=None)) as http:
        before = await credit(http, "a1", ALICE)  # recorded before the stream opened: not sent
        headers = {**ALICE, "accept": "text/event-stream"}
        async with http.stream("GET", "/ops/runs", headers=headers, params={"status": "succeeded"}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            stream = Stream(r)
            await asyncio.sleep(0)  # the stream has started reading
            await credit(http, "b1", BOB)  # bob's: never on alice's stream
            await credit(http, "b1", ALICE)  # denied: filtered out
            new = [await credit(http, "a2", ALICE) for _ in range(3)]
            seen = await stream.until(lambda es: len(es) >= 3)
            assert [e["commandId"] for e in seen] == [n["commandId"] for n in new]  # in order, once each
            last_id = stream.events[0][0]
            stream.task.cancel()
        # a client that comes back with Last-Event-ID gets what came after it, nothing twice
        headers["last-event-id"] = str(last_id)
        async with http.stream("GET", "/ops/runs", headers=headers, params={"status": "succeeded"}) as r:
            resumed = Stream(r)
            seen = await resumed.until(lambda es: len(es) >= 2)
            assert [e["commandId"] for e in seen] == [n["commandId"] for n in new[1:]]
            resumed.task.cancel()
        assert before["commandId"] not in {e["commandId"] for e in seen}


async def test_an_open_stream_does_not_hold_up_sigterm(server: ServeProcess) -> None:
    headers = {**ADMIN, "accept": "text/event-stream"}
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(20, read=None)) as http,
        http.stream("GET", "/ops/runs", headers=headers) as r,
    ):
        stream = Stream(r)
        await credit(http, "a1", ALICE)
        await stream.until(lambda es: len(es) >= 1)
        server.signal(signal.SIGTERM)
        # the server ends the stream itself, rather than let it hold the HTTP drain to its bound
        await asyncio.wait_for(stream.task, 10)
        assert server.wait(30) == 0


async def test_admins_list_and_replay_dead_letters_and_lend_their_token_to_their_own_only(
    topics: Topics, database_url: str, serving: Any, ledger: asyncpg.Pool, kafka_bootstrap: str
) -> None:
    server = serving(topics, database_url, OPRUNNER_PARK_AFTER_ATTEMPTS="2", OPRUNNER_PARK_AFTER_SECONDS="0")
    ops = ("ops", {"kind": "admin", "tenant": None})
    # a row whose deferred foreign key fails at COMMIT, every time: parked, until the row it
    # names exists (below), as an operator would fix the cause and then replay
    poison = {"accountId": "a1", "amount": "1", "fail": "DEFERRED_FK"}
    alices = cloudevent("ledger.credit", poison, id="parked-alice")
    own = cloudevent("ledger.credit", {**poison, "accountId": "o1"}, id="parked-ops")
    await add_account(ledger, "o1", "ops", None)  # the operator's own account
    await produce(
        kafka_bootstrap,
        topics.commands,
        [
            (b"x", b"\xffnot json", auth("alice", tenant="t1")),
            (b"a1", alices, auth("alice", tenant="t1")),
            (b"o1", own, auth(ops[0], **ops[1])),
        ],
    )
    async with Reader(kafka_bootstrap, topics.dlq) as dlq:
        await dlq.until(lambda ms: len(ms) >= 3, timeout=60)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        assert (await http.get("/ops/dlq")).status_code == 401
        assert (await http.get("/ops/dlq", headers=ALICE)).status_code == 403  # not an admin
        shown = (await http.get("/ops/dlq", headers=ADMIN)).json()["deadLetters"]
        assert len(shown) == 3
        by_code: dict[str, list[dict[str, Any]]] = {}
        for letter in shown:
            by_code.setdefault(letter["code"], []).append(letter)
        [malformed] = by_code["MALFORMED"]
        assert malformed["sender"]["sub"] == "alice" and malformed["source"].startswith(topics.commands + "/")
        # not a command: its size and the digest of its whole value, never its bytes
        assert malformed["preview"] is None and malformed["bytes"] == 9
        assert malformed["sha256"] == hashlib.sha256(b"\xffnot json").hexdigest()
        parked = {orjson.loads(d["preview"])["id"]: d for d in by_code["RETRIES_EXHAUSTED"]}
        assert set(parked) == {"parked-alice", "parked-ops"} and parked["parked-ops"]["attempts"] == 2
        # a tenant's admin sees what its tenant's actors sent, and nothing else
        t1 = (await http.get("/ops/dlq", headers=ADMIN_T1)).json()["deadLetters"]
        assert {d["sender"]["sub"] for d in t1} == {"alice"} and len(t1) == 2
        assert (await http.get("/ops/dlq", headers=ADMIN_T2)).json()["deadLetters"] == []
        assert (await http.post("/ops/dlq/replay", json={"entries": []}, headers=ADMIN)).status_code == 400
        await add_account(ledger, "no-such-account", "alice", "t1")
        where = [{"partition": d["partition"], "offset": d["offset"]} for d in parked.values()]
        refused = await http.post("/ops/dlq/replay", json={"entries": where}, headers=ADMIN_T2)
        assert refused.json()["replayed"] == [] and len(refused.json()["notFound"]) == 2
        done = await http.post("/ops/dlq/replay", json={"entries": where}, headers=bearer(ops[0], **ops[1]))
        assert sorted(done.json()["replayed"], key=lambda e: e["offset"]) == sorted(
            where, key=lambda e: e["offset"]
        )
    # the operator's own command ran with their token; alice's went back without one: denied
    async with Reader(kafka_bootstrap, topics.results) as results:
        await results.until(lambda ms: {"parked-alice", "parked-ops"} <= caused(ms), timeout=60)
    statuses = {e["causationid"]: e["data"]["status"] for e in results.events()}
    assert statuses == {"parked-ops": "succeeded", "parked-alice": "denied"}


async def test_a_token_limited_to_some_operations_sees_only_their_runs(server: ServeProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        done = await credit(http, "a1", ALICE)
        other_op = bearer("alice", tenant="t1", ops=["ledger.debit"])  # the same alice, another op
        assert await listed(http, other_op) == []
        assert await listed(http, other_op, op="ledger.credit") == []
        assert (await http.get(f"/ops/runs/{done['commandId']}", headers=other_op)).status_code == 404
        its_op = bearer("alice", tenant="t1", ops=["ledger.credit"])
        assert [r["commandId"] for r in await listed(http, its_op)] == [done["commandId"]]


async def test_live_streams_are_bounded_per_actor(server: ServeProcess) -> None:
    headers = {**ALICE, "accept": "text/event-stream"}
    async with httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(20, read=None)) as http:
        async with contextlib.AsyncExitStack() as open_streams:
            for _ in range(4):
                r = await open_streams.enter_async_context(http.stream("GET", "/ops/runs", headers=headers))
                assert r.status_code == 200
            refused = await http.get("/ops/runs", headers=headers)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
            bobs = await http.get("/ops/runs", headers={**BOB, "accept": "application/json"})
            assert bobs.status_code == 200
        # closed by the client, each gives its place back (once the server sees it gone)
        deadline = time.monotonic() + 20
        while True:
            async with http.stream("GET", "/ops/runs", headers=headers) as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the closed streams kept their places"
            await asyncio.sleep(0.1)


async def try_stream(
    held: contextlib.AsyncExitStack, http: httpx.AsyncClient, who: dict[str, str]
) -> httpx.Response:
    """Ask for a live stream as ``who``: kept open in ``held`` when granted, else its refusal read."""
    asked = http.stream("GET", "/ops/runs", headers={**who, "accept": "text/event-stream"})
    r = await held.enter_async_context(asked)
    if r.status_code != 200:
        await r.aread()
    return r


async def test_operators_still_get_streams_when_tenants_have_taken_all_theirs(server: ServeProcess) -> None:
    users = [bearer(f"user{i}", tenant=f"t{i // 2}") for i in range(8)]  # two per tenant
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(20, read=None)) as http,
        contextlib.AsyncExitStack() as held,
    ):
        opened, refusals = 0, []
        for who in users:  # each opens streams until refused
            while (r := await try_stream(held, http, who)).status_code == 200:
                opened += 1
            refusals.append(r)
        assert opened == 24  # of 32, the other 8 are kept for operators
        assert all(r.status_code == 503 and r.headers["retry-after"] == "5" for r in refusals)
        assert all("the most one actor may" in r.json()["error"] for r in refusals[:6])
        assert all("other 8 are kept for operators" in r.json()["error"] for r in refusals[6:])
        tenant_admin = await try_stream(held, http, ADMIN_T1)  # a member of t1, which has its 8
        assert tenant_admin.status_code == 503 and "this tenant has 8" in tenant_admin.json()["error"]
        for operator in (ADMIN, bearer("ops-2", kind="admin")):  # admins without a tenant
            for _ in range(4):
                assert (await try_stream(held, http, operator)).status_code == 200
        full = await try_stream(held, http, bearer("ops-3", kind="admin"))
        assert full.status_code == 503 and "all 32 live streams are taken" in full.json()["error"]


async def test_one_tenant_cannot_take_the_others_share_of_streams(server: ServeProcess) -> None:
    """Neither its users nor its admins: a tenant's admin is one of the tenant's, and eight
    admin tokens of one tenant (the outsider's review) hold 8 streams, not all 32."""
    t9 = [bearer(f"t9-user{i}", tenant="t9") for i in range(3)]
    t8_admins = [bearer(f"t8-admin{i}", kind="admin", tenant="t8") for i in range(8)]
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(20, read=None)) as http,
        contextlib.AsyncExitStack() as held,
    ):
        for who in t9[:2]:
            for _ in range(4):
                assert (await try_stream(held, http, who)).status_code == 200
        refused = await try_stream(held, http, t9[2])  # a third of t9's users: its first stream
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert "this tenant has 8 live streams open" in refused.json()["error"]
        t9_admin = await try_stream(held, http, bearer("ops-t9", kind="admin", tenant="t9"))
        assert t9_admin.status_code == 503 and "this tenant has 8" in t9_admin.json()["error"]
        opened = 0
        for who in t8_admins:
            while (await try_stream(held, http, who)).status_code == 200:
                opened += 1
        assert opened == 8
        assert (await try_stream(held, http, ALICE)).status_code == 200  # another tenant's user
        assert (await try_stream(held, http, ADMIN)).status_code == 200  # an operator


async def test_a_stream_of_nothing_visible_is_refused_not_held(server: ServeProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        for _ in range(5):  # past the 4 an actor may hold, had they been opened
            answer = await http.get("/ops/runs?tenant=t2", headers={**ALICE, "accept": "text/event-stream"})
            assert answer.status_code == 403 and "may not see" in answer.json()["error"]
        listed = await http.get("/ops/runs?tenant=t2", headers=ALICE)
        assert listed.status_code == 200 and listed.json()["runs"] == []


PAYMENT_METHOD = "pm_card_secret_4242"


async def test_dead_letter_previews_redact_sensitive_fields_and_show_the_rest_by_digest(
    topics: Topics, database_url: str, serving: Any, clean_db: asyncpg.Pool, kafka_bootstrap: str
) -> None:
    # every capture's write fails at COMMIT: parked whole, or cut to 2 KiB (half the 4 KiB limit)
    server = serving(
        topics,
        database_url,
        app="tests.apps.parked:registry",
        OPRUNNER_PARK_AFTER_ATTEMPTS="2",
        OPRUNNER_PARK_AFTER_SECONDS="0",
        OPRUNNER_MAX_MESSAGE_BYTES="4096",
    )
    data = {"invoiceId": "inv_none", "amount": "25.00", "currency": "EUR", "paymentMethodId": PAYMENT_METHOD}
    whole = cloudevent("billing.capturePayment", data, id="cap-whole")
    long = cloudevent("billing.capturePayment", data, id="cap-long", pad="x" * 3000)
    malformed = b"\xff" + orjson.dumps(data)
    alice = auth("alice", tenant="t1")
    await produce(
        kafka_bootstrap,
        topics.commands,
        [(b"i", whole, alice), (b"i", long, alice), (b"x", malformed, alice)],
    )
    # dead-lettered by a runner that had this operation, listed by one that has it no longer
    retired = cloudevent("billing.retiredCapture", data, id="cap-retired")
    sent_by = orjson.dumps({"sub": "alice", "tenant": "t1", "kind": "user"})
    lettered = [("dlq-code", b"RETRIES_EXHAUSTED"), ("dlq-reason", b"parked"), ("dlq-actor", sent_by)]
    await produce(kafka_bootstrap, topics.dlq, [(b"i", retired, lettered)])
    async with Reader(kafka_bootstrap, topics.dlq) as dlq:
        await dlq.until(lambda ms: len(ms) >= 4, timeout=60)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        r = await http.get("/ops/dlq", headers=ADMIN_T1)  # alice's tenant's admin
        assert r.status_code == 200 and PAYMENT_METHOD not in r.text
        assert (await http.get("/ops/dlq", headers=ADMIN_T2)).json()["deadLetters"] == []
    by_digest = {d["sha256"]: d for d in r.json()["deadLetters"]}

    def sha(value: bytes) -> str:
        return hashlib.sha256(value).hexdigest()

    assert set(by_digest) == {sha(whole), sha(long[:2048]), sha(malformed), sha(retired)}
    shown = by_digest[sha(whole)]  # a command of a spec installed here: as its audit shows it
    assert shown["code"] == "RETRIES_EXHAUSTED" and shown["bytes"] == len(whole) and not shown["previewCut"]
    command = orjson.loads(shown["preview"])
    assert command["id"] == "cap-whole" and command["type"] == "billing.capturePayment"
    assert command["data"] == {**data, "paymentMethodId": REDACTED}
    cut = by_digest[sha(long[:2048])]  # cut short when dead-lettered: no command to parse
    assert cut["truncated"] and cut["bytes"] == 2048 and cut["originalBytes"] == len(long)
    assert cut["preview"] is None
    assert by_digest[sha(malformed)]["code"] == "MALFORMED" and by_digest[sha(malformed)]["preview"] is None
    assert by_digest[sha(retired)]["preview"] is None  # no spec here says what is sensitive


async def test_a_one_command_token_holds_no_stream(server: ServeProcess) -> None:
    """It travels in ops.commands for days: read off the topic, it would hold its tenant's
    streams. It follows its one run by id instead."""
    from runner.auth import CommandSigner, command_key
    from runner.envelope import command as new_command
    from tests.support import SECRET

    key = command_key(SECRET, None)
    assert key is not None
    lifted = CommandSigner(key, subject="oprunner-webhooks", ttl=600).token_for(
        new_command("ledger.credit", {"accountId": "a1", "amount": "1"}), tenant="t1"
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        answer = await http.get(
            "/ops/runs", headers={"authorization": f"Bearer {lifted}", "accept": "text/event-stream"}
        )
        assert answer.status_code == 403 and "one-command token" in answer.json()["error"]
