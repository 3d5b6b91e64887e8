"""The executor suite of tests/unit, run again on the Postgres store: same outcomes, real SQL.

The fuzz test runs here too: only a real Postgres refuses what it cannot hold (U+0000)."""

from __future__ import annotations

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
