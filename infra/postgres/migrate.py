"""Schema as code: ordered SQL files applied once each, under an advisory lock.

Several ``serve`` processes may start at once; the lock makes one apply and the others wait
and find nothing left to do.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

MIGRATIONS_PACKAGE = "infra.postgres.migrations"
_LOCK_KEY = 0x6F7072756E6E6572  # "oprunner"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migration_files() -> list[tuple[int, str, str]]:
    """``(number, name, sql)`` for each bundled migration, in order."""
    found = []
    for entry in resources.files(MIGRATIONS_PACKAGE).iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


async def migrate(conn: Any) -> list[str]:
    """Apply what is missing on ``conn`` (an asyncpg connection); return the names applied."""
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS oprunner_schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM oprunner_schema_migrations")}
        applied = []
        for number, name, sql in migration_files():
            if number in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO oprunner_schema_migrations (version, name) VALUES ($1, $2)", number, name
                )
            applied.append(name)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
