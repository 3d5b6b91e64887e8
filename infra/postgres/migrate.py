"""Schema as code: ordered SQL files applied once each, under an advisory lock.

The engine's files come first, then the served app's own (``App.migrations``), each tracked
under its owner's name in ``oprunner_schema_migrations``, so an app's ``0001`` never collides
with the engine's. Several ``serve`` processes may start at once; the lock makes one apply
and the others wait and find nothing left to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

MIGRATIONS_PACKAGE = "infra.postgres.migrations"
ENGINE = "oprunner"
_LOCK_KEY = 0x6F7072756E6E6572  # "oprunner"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Applied:
    """One row of ``oprunner migrate --status``."""

    owner: str
    version: int
    name: str
    applied_at: Any  # None: not applied yet


def migration_files(source: str = MIGRATIONS_PACKAGE) -> list[tuple[int, str, str]]:
    """``(number, name, sql)`` for each migration in ``source`` (a package, or a directory),
    in order."""
    path = Path(source)
    entries: Any = path.iterdir() if path.is_dir() else resources.files(source).iterdir()
    found = []
    for entry in entries:
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


async def _ensure_table(conn: Any) -> None:
    """The tracking table, keyed by owner and version (tables from before apps had a
    migrations folder of their own are upgraded: their rows are the engine's)."""
    await conn.execute(
        """CREATE TABLE IF NOT EXISTS oprunner_schema_migrations (
               app text NOT NULL DEFAULT 'oprunner',
               version integer NOT NULL,
               name text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now(),
               PRIMARY KEY (app, version))"""
    )
    await conn.execute(
        "ALTER TABLE oprunner_schema_migrations ADD COLUMN IF NOT EXISTS app text NOT NULL DEFAULT 'oprunner'"
    )
    keyed_by_version_only = await conn.fetchval(
        """SELECT array_length(indkey::int2[], 1) = 1 FROM pg_index
           WHERE indrelid = 'oprunner_schema_migrations'::regclass AND indisprimary"""
    )
    if keyed_by_version_only:
        await conn.execute(
            """ALTER TABLE oprunner_schema_migrations DROP CONSTRAINT oprunner_schema_migrations_pkey,
                   ADD PRIMARY KEY (app, version)"""
        )


def _sources(app: tuple[str, str] | None) -> list[tuple[str, str]]:
    return [(ENGINE, MIGRATIONS_PACKAGE), *([app] if app is not None else [])]


async def migrate(conn: Any, app: tuple[str, str] | None = None) -> list[str]:
    """Apply what is missing on ``conn`` (an asyncpg connection): the engine's migrations,
    then ``app`` = ``(name, source)``'s. Returns the names applied (an app's prefixed
    ``name/``)."""
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await _ensure_table(conn)
        applied = []
        for owner, source in _sources(app):
            rows = await conn.fetch("SELECT version FROM oprunner_schema_migrations WHERE app = $1", owner)
            done = {row["version"] for row in rows}
            for number, name, sql in migration_files(source):
                if number in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO oprunner_schema_migrations (app, version, name) VALUES ($1, $2, $3)",
                        owner,
                        number,
                        name,
                    )
                applied.append(name if owner == ENGINE else f"{owner}/{name}")
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def status(conn: Any, app: tuple[str, str] | None = None) -> list[Applied]:
    """Every migration of the engine and ``app``, with when it was applied (None: not yet)."""
    exists = await conn.fetchval("SELECT to_regclass('oprunner_schema_migrations') IS NOT NULL")
    rows = []
    if exists:
        rows = await conn.fetch(
            "SELECT * FROM oprunner_schema_migrations WHERE app = ANY($1::text[])",
            [owner for owner, _ in _sources(app)],
        )
    when = {(r.get("app", ENGINE), r["version"]): r["applied_at"] for r in rows}
    return [
        Applied(owner, number, name, when.get((owner, number)))
        for owner, source in _sources(app)
        for number, name, _ in migration_files(source)
    ]
