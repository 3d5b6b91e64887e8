"""What the crash-and-restart suites share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from infra.devservices import Postgres
from infra.postgres import connect_pool, migrate
from tests.apps.ledger import SCHEMA


@pytest.fixture
async def own_postgres() -> AsyncIterator[tuple[Postgres, asyncpg.Pool]]:
    """A Postgres of the test's own (it may stop it), migrated, with the ledger's 100
    accounts, all alice's."""
    server = Postgres().start()
    pool = await connect_pool(server.dsn, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await migrate(conn)
        await conn.execute(SCHEMA)
        await conn.executemany(
            "INSERT INTO ledger_accounts (id, owner_id, tenant_id) VALUES ($1, 'alice', 't1')",
            [(f"acc-{i}",) for i in range(100)],
        )
    yield server, pool
    await pool.close()
    server.stop()
