"""The executor suite of tests/unit, run again on the Postgres store: same outcomes, real SQL.

The fuzz test runs here too: only a real Postgres refuses what it cannot hold (U+0000)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest

from infra.postgres import PostgresStore
from runner import Executor, JwtAuthenticator
from tests.unit.conftest import SECRET, App, Behaviour, _no_sleep, build_app
from tests.unit.test_executor import *  # noqa: F403  (the suite itself)
from tests.unit.test_executor_fuzz import test_any_json_gets_a_documented_outcome  # noqa: F401  (and its fuzzing)


@pytest.fixture
def app(clean_db: asyncpg.Pool) -> App:  # overrides the in-memory fixture for every test above
    behaviour = Behaviour()
    registry = build_app(behaviour)
    store = PostgresStore(clean_db)
    executor = Executor(registry, store, JwtAuthenticator(secret=SECRET), sleep=_no_sleep)
    return App(registry, store, executor, behaviour)  # type: ignore[arg-type]


async def test_outcomes_are_durable_rows(app: App, clean_db: asyncpg.Pool) -> None:
    out = await app.run("docs.pay", {"docId": "d1", "amount": "1", "card": "c"}, id="row-1")
    run = await clean_db.fetchrow("SELECT * FROM oprunner_runs WHERE idempotency_key = 'row-1'")
    assert run["status"] == "completed" and run["outcome"] == "succeeded" and run["attempts"] == 1
    assert await clean_db.fetchval("SELECT count(*) FROM oprunner_outbox") == 2
    audit = await clean_db.fetchrow("SELECT * FROM oprunner_audit")
    assert audit["command_id"] == "row-1" and audit["actor_id"] == "alice"
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await clean_db.execute("DELETE FROM oprunner_audit")
    assert set(out.outbox_ids) == {r["id"] for r in await clean_db.fetch("SELECT id FROM oprunner_outbox")}


@contextlib.asynccontextmanager
async def _database_before(database_url: str, migration: int) -> AsyncIterator[str]:
    """The URL of a new database holding the migrations numbered below ``migration`` only, as
    an older release left it; dropped after."""
    from infra.postgres.migrate import migration_files

    admin = await asyncpg.connect(database_url)
    name = f"before_{migration}_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {name}")
    dsn = database_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "CREATE TABLE oprunner_schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for number, file, sql in migration_files():
                if number < migration:
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO oprunner_schema_migrations VALUES ($1, $2)", number, file)
        finally:
            await conn.close()
        yield dsn
    finally:
        await admin.execute(f"DROP DATABASE {name}")
        await admin.close()


async def test_existing_runs_move_to_their_callers_scope(database_url: str) -> None:
    """Migration 0005 on a database holding runs from before it: each keeps its key, now under
    its caller's scope, and the runner finds it there."""
    from infra.postgres import migrate
    from runner.store import run_key

    async with _database_before(database_url, 5) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.executemany(
                """INSERT INTO oprunner_runs
                   (idempotency_key, op, version, input_hash, command_id, status, actor_id, tenant_id)
                   VALUES ($1, 'op', '1', 'h', $1, 'completed', $2, $3)""",
                [("k/1", "alice", "t1"), ("k:2", "bob", None), ("k3", None, None)],
            )
            assert (await migrate(conn))[0] == "0005_scoped_keys.sql"
            stored = {
                r["idempotency_key"]: r["run_key"] for r in await conn.fetch("SELECT * FROM oprunner_runs")
            }
            assert stored == {
                "k/1": run_key("t1", "alice", "k/1", kind="user"),
                "k:2": run_key(None, "bob", "k:2", kind="user"),
                "k3": run_key(None, None, "k3", kind=None),
            }
        finally:
            await conn.close()


async def test_existing_runs_of_services_and_admins_move_to_their_kinds_scope(database_url: str) -> None:
    """Migration 0009 on runs written in 0005's format: a service's or an admin's moves to its
    kind's scope (by its audited kind, its acceptance, or its reserved subject), a user's and
    an anonymous one's stay, and a command redelivered after the upgrade replays its run."""
    from infra.postgres import migrate
    from runner.store import ClaimRequest, ClaimStatus, run_key

    async with _database_before(database_url, 9) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            rows = [  # (command id, subject, tenant, status, the kind audited or accepted, where)
                ("c-user", "alice", "t1", "completed", "user", "audit"),
                ("c-svc", "svc", "t1", "completed", "service", "audit"),
                ("c-admin", "root", None, "completed", "admin", "audit"),
                ("c-hook", "oprunner-webhooks", None, "running", None, None),  # crashed mid-run
                ("c-follow", "op:billing.capture", "t1", "running", None, None),
                ("c-async", "svc2", None, "running", "service", "accepted"),
                ("c-bob", "bob", None, "running", None, None),  # no record of his kind: a user
                ("c-anon", None, None, "completed", None, None),
            ]
            for command_id, sub, tenant, status, kind, where in rows:
                await conn.execute(
                    """INSERT INTO oprunner_runs (run_key, idempotency_key, op, version, input_hash,
                           command_id, status, outcome, result, actor_id, tenant_id, attempts, lease_until)
                       VALUES ($1, $2, 'op', '1', 'h', $2, $3, $4, $5::jsonb, $6, $7, 1,
                               now() - interval '1 s')""",
                    run_key(tenant, sub, command_id, kind=None),  # 0005's format, whatever the kind
                    command_id,
                    status,
                    "succeeded" if status == "completed" else None,
                    '{"status": "succeeded", "output": {"n": 1}}' if status == "completed" else None,
                    sub,
                    tenant,
                )
                actor = orjson.dumps({"kind": kind, "id": sub, "tenant": tenant, "roles": []}).decode()
                if where == "audit":  # a denied entry of another kind first: not the claimer's
                    for decision, audited in (("deny", '{"actor": {"kind": "user"}}'), ("allow", None)):
                        await conn.execute(
                            """INSERT INTO oprunner_audit (command_id, op, status, decision, actor_id, data)
                               VALUES ($1, 'op', 'x', $2, $3, $4::jsonb)""",
                            command_id,
                            decision,
                            sub,
                            audited or f'{{"actor": {actor}}}',
                        )
                elif where == "accepted":
                    await conn.execute(
                        """INSERT INTO oprunner_accepted (command_id, command, actor, actor_id, tenant_id,
                               claimed_until) VALUES ($1, '\\x00', $2::jsonb, $3, $4, now())""",
                        command_id,
                        actor,
                        sub,
                        tenant,
                    )
            assert await migrate(conn) == ["0009_kind_scoped_keys.sql", "0010_run_events.sql"]
            stored = {r["command_id"]: r["run_key"] for r in await conn.fetch("SELECT * FROM oprunner_runs")}
            kinds = {"c-user": "user", "c-svc": "service", "c-admin": "admin", "c-hook": "service"}
            kinds |= {"c-follow": "service", "c-async": "service", "c-bob": "user", "c-anon": None}
            assert stored == {c: run_key(t, s, c, kind=kinds[c]) for c, s, t, *_ in rows}
            assert stored["c-svc"].startswith("service|")
            assert stored["c-user"] == run_key("t1", "alice", "c-user", kind=None)  # as it was
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        try:  # redelivered after the upgrade, each is found where the runner now looks
            store = PostgresStore(pool)

            def again(command_id: str, sub: str, tenant: str | None, kind: str) -> ClaimRequest:
                key = run_key(tenant, sub, command_id, kind=kind)
                return ClaimRequest(key, "op", "1", "h", command_id, "w2", 30, sub, tenant, command_id)

            replayed = await store.claim(again("c-svc", "svc", "t1", "service"))
            assert replayed.status == ClaimStatus.COMPLETED and replayed.result == {
                "status": "succeeded",
                "output": {"n": 1},
            }
            assert (
                await store.claim(again("c-admin", "root", None, "admin"))
            ).status == ClaimStatus.COMPLETED
            # the crashed one's lease ran out: taken over, its second attempt of the same run
            taken = await store.claim(again("c-hook", "oprunner-webhooks", None, "service"))
            assert (taken.status, taken.attempts) == (ClaimStatus.ACQUIRED, 2)
            assert await pool.fetchval("SELECT count(*) FROM oprunner_runs") == len(rows)  # no second run
        finally:
            await pool.close()
