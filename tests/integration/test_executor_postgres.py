"""The executor suite of tests/unit, run again on the Postgres store: same outcomes, real SQL.

The fuzz test runs here too: only a real Postgres refuses what it cannot hold (U+0000)."""

from __future__ import annotations

import uuid

import asyncpg
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


async def test_existing_runs_move_to_their_callers_scope(database_url: str) -> None:
    """Migration 0005 on a database holding runs from before it: each keeps its key, now under
    its caller's scope, and the runner finds it there."""
    from infra.postgres import migrate
    from infra.postgres.migrate import migration_files
    from runner.store import run_key

    admin = await asyncpg.connect(database_url)
    name = f"scoping_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        conn = await asyncpg.connect(database_url.rsplit("/", 1)[0] + f"/{name}")
        try:
            await conn.execute(
                "CREATE TABLE oprunner_schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for number, file, sql in migration_files():
                if number < 5:
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO oprunner_schema_migrations VALUES ($1, $2)", number, file)
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
                "k/1": run_key("t1", "alice", "k/1"),
                "k:2": run_key(None, "bob", "k:2"),
                "k3": run_key(None, None, "k3"),
            }
        finally:
            await conn.close()
    finally:
        await admin.execute(f"DROP DATABASE {name}")
        await admin.close()
