"""Retention on real Postgres: what ``prune`` forgets and keeps, and the audit log's monthly
partitions (migration 0007) over a database that already holds audit rows."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from infra.postgres import migrate
from infra.postgres.migrate import migration_files
from infra.postgres.retention import Windows, prune
from tests.e2e.test_cli_errors import oprunner

DAY = 86400.0


async def test_prune_forgets_only_what_is_past_its_window(clean_db: asyncpg.Pool) -> None:
    runs = [  # (key, status, completed days ago)
        ("old-done", "completed", 40),
        ("new-done", "completed", 1),
        ("old-running", "running", None),
    ]
    for key, status, age in runs:
        await clean_db.execute(
            """INSERT INTO oprunner_runs (run_key, idempotency_key, op, version, input_hash, command_id,
                                         status, completed_at, created_at)
               VALUES ($1, $1, 'op', '1', 'h', $1, $2,
                       CASE WHEN $3::float8 IS NULL THEN NULL ELSE now() - make_interval(days => $3::int) END,
                       now() - interval '50 days')""",
            key,
            status,
            age,
        )
    inbox = [("evt_old", 40, True), ("evt_new", 1, True), ("evt_pending", 40, False)]
    for event_id, age, published in inbox:
        await clean_db.execute(
            """INSERT INTO oprunner_webhook_inbox (provider, event_id, payload, verified, received_at,
                                                  published_at)
               VALUES ('stripe', $1, '\\x00', true, now() - make_interval(days => $2),
                       CASE WHEN $3 THEN now() - make_interval(days => $2) END)""",
            event_id,
            age,
            published,
        )
    await clean_db.execute(
        """INSERT INTO oprunner_outbox (topic, value, failed_at, error)
           VALUES ('t', 'v', now() - interval '40 days', 'too large'), ('t', 'v', NULL, NULL)"""
    )
    windows = Windows(runs=30 * DAY, inbox=30 * DAY, parked_outbox=30 * DAY)
    counted = await prune(clean_db, windows, dry_run=True)
    assert (counted["runs"], counted["inbox"], counted["parked_outbox"]) == (1, 1, 1)
    assert await clean_db.fetchval("SELECT count(*) FROM oprunner_runs") == 3  # nothing gone yet
    pruned = await prune(clean_db, windows, batch=1)  # one row per batch: the loop ends
    assert (pruned["runs"], pruned["inbox"], pruned["parked_outbox"]) == (1, 1, 1)
    assert {r["run_key"] for r in await clean_db.fetch("SELECT run_key FROM oprunner_runs")} == {
        "new-done",
        "old-running",  # unfinished work is never forgotten
    }
    assert {r["event_id"] for r in await clean_db.fetch("SELECT event_id FROM oprunner_webhook_inbox")} == {
        "evt_new",
        "evt_pending",  # not yet published: still owed to Kafka
    }
    assert await clean_db.fetchval("SELECT count(*) FROM oprunner_outbox") == 1
    # a window of 0 keeps everything
    kept = await prune(clean_db, Windows(runs=0, inbox=0, parked_outbox=0))
    assert (kept["runs"], kept["inbox"], kept["parked_outbox"]) == (0, 0, 0)


def test_prune_from_the_command_line(clean_db: asyncpg.Pool, database_url: str) -> None:
    result = oprunner("prune", "--dry-run", OPRUNNER_DATABASE_URL=database_url)
    assert result.returncode == 0, result.stderr
    assert "would delete 0 runs row(s)" in result.stdout and "inbox" in result.stdout


@pytest.fixture
async def fresh_database(database_url: str) -> object:
    admin = await asyncpg.connect(database_url)
    name = f"audit_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {name}")
    conn = await asyncpg.connect(database_url.rsplit("/", 1)[0] + f"/{name}")
    try:
        yield conn
    finally:
        await conn.close()
        await admin.execute(f"DROP DATABASE {name}")
        await admin.close()


async def test_audit_rows_from_before_partitioning_stay_and_months_are_detachable(
    fresh_database: asyncpg.Connection,
) -> None:
    conn = fresh_database
    await conn.execute(
        "CREATE TABLE oprunner_schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for number, file, sql in migration_files():
        if number < 7:
            await conn.execute(sql)
            await conn.execute("INSERT INTO oprunner_schema_migrations VALUES ($1, $2)", number, file)

    async def insert(command_id: str, recorded_at: str) -> None:
        await conn.execute(
            "INSERT INTO oprunner_audit (command_id, op, status, data, recorded_at)"
            f" VALUES ($1, 'op', 'succeeded', '{{}}', {recorded_at})",
            command_id,
        )

    await insert("old", "'2020-01-15T00:00:00Z'")
    await insert("recent", "now()")
    await conn.execute("SET TimeZone = 'America/New_York'")  # months must still be UTC months
    assert (await migrate(conn))[0] == "0007_audit_partitions.sql"
    bound = "(regexp_match(pg_get_expr(c.relpartbound, c.oid), '{} \\(''([^'']+)''\\)'))[1]::timestamptz"
    months = await conn.fetch(
        f"""SELECT c.relname AS name, {bound.format("FROM")} AT TIME ZONE 'UTC' AS low,
                   {bound.format("TO")} AT TIME ZONE 'UTC' AS high
            FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid
            WHERE i.inhparent = 'oprunner_audit'::regclass
              AND c.relname ~ '^oprunner_audit_[0-9]{{4}}_[0-9]{{2}}$'"""
    )
    assert len(months) == 2
    for month in months:
        assert month["name"] == f"oprunner_audit_{month['low']:%Y_%m}"
        assert (month["low"].day, month["low"].hour, month["high"].day, month["high"].hour) == (1, 0, 1, 0)
    ids = [r["command_id"] for r in await conn.fetch("SELECT command_id FROM oprunner_audit ORDER BY id")]
    assert ids == ["old", "recent"]
    # new rows: numbered after the old ones, this month in the pre-0007 partition, a later
    # month in its own, far-off dates in the default partition: an insert never fails
    await insert("now", "now()")
    await insert("later", "now() + interval '40 days'")
    await insert("far", "'2100-01-01T00:00:00Z'")
    where = {
        r["command_id"]: r["part"]
        for r in await conn.fetch("SELECT command_id, tableoid::regclass::text AS part FROM oprunner_audit")
    }
    assert where["old"] == where["recent"] == "oprunner_audit_before_0007"
    assert where["now"] != "oprunner_audit_default"  # the old partition, or a new month's
    assert where["later"].startswith("oprunner_audit_20") and where["far"] == "oprunner_audit_default"
    assert await conn.fetchval("SELECT max(id) FROM oprunner_audit") == 5
    for statement in ("DELETE FROM oprunner_audit", "UPDATE oprunner_audit SET op = 'x'"):
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute(statement)
    # the job is idempotent, and an operator archives a month by detaching it
    assert await conn.fetch("SELECT oprunner_audit_partitions()") == []
    await conn.execute("ALTER TABLE oprunner_audit DETACH PARTITION oprunner_audit_before_0007")
    assert await conn.fetchval("SELECT count(*) FROM oprunner_audit_before_0007") == 3
    assert await conn.fetchval("SELECT count(*) FROM oprunner_audit") == 2
