"""Who a command runs as, attacked on ``oprunner serve`` (issue 26, items 3 and 4): the follow-up
of a parent without a tenant, ordinary tokens naming the runner's own identities, and a user
and a service of one subject sharing an idempotency key."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.integration import test_payments
from tests.integration.test_payments import event_body, invoice, post, results_for, sign
from tests.support import Reader, ServeProcess, Topics, auth, cloudevent, produce, seed_ledger, token

billing = test_payments.billing
stripe_client = test_payments.stripe_client
webhooks = test_payments.server


@pytest.fixture
async def tenancy(clean_db: asyncpg.Pool, topics: Topics, database_url: str, serving: Any) -> ServeProcess:
    await seed_ledger(
        clean_db,
        [
            ("carols", "carol", "t2"),
            ("alices", "alice", "t1"),
            ("loose", "carol", None),
            ("a1", "alice", "t1"),
        ],
    )
    return serving(topics, database_url, app="tests.apps.tenancy:registry")  # type: ignore[no-any-return]


def bearer(sub: str, **claims: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {token(sub, **claims)}"}


async def touched(db: asyncpg.Pool) -> list[str]:
    return sorted(r["account_id"] for r in await db.fetch("SELECT account_id FROM ledger_effects"))


async def test_a_tenant_less_parents_follow_up_reaches_no_tenants_resources(
    tenancy: ServeProcess, topics: Topics, kafka_bootstrap: str, clean_db: asyncpg.Pool
) -> None:
    """The review's repro: the follow-up of an anonymous caller, or of alice with no tenant,
    on carol's account in t2 ran as a global service. Now only a tenant-less account is
    theirs to reach, as alice of t1's reaches t1's only."""
    asked = {  # parent id: (account, token headers, the follow-up's status)
        "anon-carols": ("carols", [], "denied"),
        "none-carols": ("carols", auth("alice", tenant=None), "denied"),
        "t1-carols": ("carols", auth("alice", tenant="t1"), "denied"),
        "t1-alices": ("alices", auth("alice", tenant="t1"), "succeeded"),
        "none-loose": ("loose", auth("alice", tenant=None), "succeeded"),
        "anon-loose": ("loose", [], "succeeded"),
    }
    await produce(
        kafka_bootstrap,
        topics.commands,
        [
            (account.encode(), cloudevent("tenancy.ask", {"accountId": account}, id=parent), headers)
            for parent, (account, headers, _) in asked.items()
        ],
    )
    async with Reader(kafka_bootstrap, topics.results) as results:

        def children(events: list[dict[str, Any]]) -> dict[str, str]:
            return {
                e["causationid"]: e["data"]["output"]["touchId"]
                for e in events
                if e["type"] == "tenancy.ask.result" and e["data"]["status"] == "succeeded"
            }

        def answered(messages: list[Any]) -> bool:
            events = [orjson.loads(m.value) for m in messages]
            done = {e["causationid"] for e in events if e["type"] == "tenancy.touch.result"}
            sent = children(events)
            return set(sent) == set(asked) and set(sent.values()) <= done

        await results.until(answered, timeout=60)
    events = results.events()
    touches = {e["causationid"]: e["data"] for e in events if e["type"] == "tenancy.touch.result"}
    got = {parent: touches[child]["status"] for parent, child in children(events).items()}
    assert got == {parent: status for parent, (_, _, status) in asked.items()}, touches
    for parent, child in children(events).items():
        if got[parent] == "denied":
            assert touches[child]["error"]["code"] == "FORBIDDEN"
    assert await touched(clean_db) == ["alices", "loose", "loose"]


async def test_ordinary_tokens_naming_the_runners_identities_are_denied(
    tenancy: ServeProcess, topics: Topics, kafka_bootstrap: str
) -> None:
    """A follow-up runs as ``op:<parent>``: a user token of that name (or of any reserved
    one) would have listed its runs and their input. It is refused at the door instead."""
    await produce(
        kafka_bootstrap,
        topics.commands,
        [(b"loose", cloudevent("tenancy.ask", {"accountId": "loose"}, id="p1"), [])],
    )
    await results_for(kafka_bootstrap, topics.results, {"p1"}, n=1)
    forged = cloudevent("tenancy.ask", {"accountId": "loose"}, id="forged-1")
    await produce(kafka_bootstrap, topics.commands, [(b"loose", forged, auth("op:tenancy.ask", tenant=None))])
    [denied] = (await results_for(kafka_bootstrap, topics.results, {"forged-1"}))["forged-1"]
    assert denied["data"]["status"] == "denied"
    assert denied["data"]["error"]["code"] == "UNAUTHENTICATED"
    assert "reserved" in denied["data"]["error"]["message"]
    async with httpx.AsyncClient(base_url=tenancy.url, timeout=20) as http:
        owner = bearer("ops", kind="admin")  # a global operator: the follow-up's run is there
        listed = (await http.get("/ops/runs", headers=owner)).json()["runs"]
        assert any(r["actorId"] == "op:tenancy.ask" for r in listed), listed
        look_alikes = ("OPRUNNER-webhooks", " op:tenancy.ask", "oprunner\u2011webhooks")
        for sub in ("op:tenancy.ask", "oprunner-webhooks", "oprunner-followups", *look_alikes):
            for kind in ("user", "admin", "service"):
                who = bearer(sub, kind=kind)
                r = await http.get("/ops/runs", headers=who)
                assert r.status_code == 401 and "reserved" in r.json()["error"], (sub, kind, r.text)
                r = await http.post("/ops/tenancy.ask", json={"accountId": "loose"}, headers=who)
                assert r.status_code == 401, (sub, kind, r.text)


async def test_a_user_named_like_the_stripe_webhook_sees_none_of_its_runs(
    webhooks: ServeProcess, topics: Topics, kafka_bootstrap: str, billing: asyncpg.Pool
) -> None:
    """The review's repro on the billing app: a user token with ``sub: oprunner-webhooks``
    and no tenant listed ``billing.recordPayment``'s runs, audited input and all."""
    inv = await invoice(billing)
    body = event_body(inv, event_id=f"evt_{inv}")
    assert (await post(webhooks, body, sign(body))).status_code == 200
    await results_for(kafka_bootstrap, topics.results, {f"stripe:evt_{inv}"})
    async with httpx.AsyncClient(base_url=webhooks.url, timeout=20) as http:
        everything = (await http.get("/ops/runs", headers=bearer("root", kind="admin"))).json()["runs"]
        assert [r["actorId"] for r in everything] == ["oprunner-webhooks"]
        for who in (bearer("oprunner-webhooks"), bearer("oprunner-webhooks", kind="admin")):
            assert (await http.get("/ops/runs", headers=who)).status_code == 401
            assert (await http.get(f"/ops/runs/stripe:evt_{inv}", headers=who)).status_code == 401


async def test_a_service_and_a_user_of_one_subject_have_their_own_keys(tenancy: ServeProcess) -> None:
    """Same subject, tenant and idempotency key, two kinds: two runs (not a replay of the
    other's), each listed and shown to its own kind only."""
    user, service = bearer("alice", tenant="t1"), bearer("alice", tenant="t1", kind="service")
    async with httpx.AsyncClient(base_url=tenancy.url, timeout=20) as http:

        async def ask(who: dict[str, str]) -> dict[str, Any]:
            r = await http.post(
                "/ops/tenancy.ask", json={"accountId": "a1"}, headers={**who, "idempotency-key": "same-key"}
            )
            assert r.status_code == 200, r.text
            return dict(r.json())

        as_user, as_service = await ask(user), await ask(service)
        assert as_user["status"] == as_service["status"] == "succeeded"
        assert as_user["commandId"] != as_service["commandId"]
        assert as_user["output"]["touchId"] != as_service["output"]["touchId"]  # two runs, two follow-ups
        again = await ask(service)
        assert again["output"] == as_service["output"]  # its own run, replayed to it
        for who, mine, theirs in ((user, as_user, as_service), (service, as_service, as_user)):
            runs = (await http.get("/ops/runs", headers=who)).json()["runs"]
            assert {r["commandId"] for r in runs} == {mine["commandId"]}, runs
            assert (await http.get(f"/ops/runs/{mine['commandId']}", headers=who)).status_code == 200
            assert (await http.get(f"/ops/runs/{theirs['commandId']}", headers=who)).status_code == 404
            assert (await http.get("/ops/runs/same-key", headers=who)).json()["commandId"] == mine[
                "commandId"
            ]
