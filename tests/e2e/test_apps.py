"""An app written outside the repository, as a new user writes one: its own tables (its own
``0001`` migration), its own client, served with ``oprunner serve`` from its own folder, on
a database that then holds the engine's tables and the app's, and no billing table."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.e2e.test_cli_errors import oprunner
from tests.support import Topics, token

NOTES_APP = '''
from pathlib import Path

from runner import App, IO, Meta, Model, OperationRegistry, Policy, define_command, install_op


class NoteInput(Model):
    text: str


class NoteOutput(Model):
    id: int
    shouted: str


AddNote = define_command(
    meta=Meta(key="notes.add", version="1.0.0", description="Add a note"),
    io=IO(input=NoteInput, output=NoteOutput),
    policy=Policy(auth="user"),
)


class Shouter:
    """The app's own client, built from settings by its factory."""

    def shout(self, text: str) -> str:
        return text.upper() + "!"


async def add_note(value: NoteInput, ctx) -> NoteOutput:
    note_id = await ctx.db.fetchval("INSERT INTO notes (text) VALUES ($1) RETURNING id", value.text)
    return NoteOutput(id=note_id, shouted=ctx.shouter.shout(value.text))


registry = OperationRegistry()
install_op(registry, AddNote, add_note)
app = App(
    registry=registry,
    name="notes",
    migrations=Path(__file__).parent / "migrations",
    clients={"shouter": lambda settings: Shouter()},
)
'''


@pytest.fixture
def notes_app(tmp_path: Path) -> Path:
    (tmp_path / "notes.py").write_text(NOTES_APP)
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "0001_notes.sql").write_text(
        "CREATE TABLE notes (id serial PRIMARY KEY, text text NOT NULL);"
    )
    return tmp_path


@pytest.fixture
async def fresh_dsn(database_url: str) -> AsyncIterator[str]:
    admin = await asyncpg.connect(database_url)
    name = f"app_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield database_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


async def _tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


def test_an_apps_migrations_are_its_own(notes_app: Path, fresh_dsn: str) -> None:
    def migrate(*args: str) -> Any:
        return oprunner("migrate", "notes:app", *args, OPRUNNER_DATABASE_URL=fresh_dsn, cwd=str(notes_app))

    pending = migrate("--status")
    assert pending.returncode == 0, pending.stderr
    assert "notes        0001_notes.sql" in pending.stdout and "pending" in pending.stdout
    applied = migrate()
    assert applied.returncode == 0, applied.stderr
    assert "applied 0001_core.sql" in applied.stdout and "applied notes/0001_notes.sql" in applied.stdout
    again = migrate("--status")
    assert "pending" not in again.stdout and "oprunner     0001_core.sql" in again.stdout


async def test_an_app_from_its_own_folder_is_served(
    notes_app: Path, fresh_dsn: str, topics: Topics, serving: Any
) -> None:
    proc = serving(topics, fresh_dsn, app="notes:app", cwd=notes_app)
    async with httpx.AsyncClient(base_url=proc.url, timeout=20) as http:
        added = await http.post(
            "/ops/notes.add", json={"text": "hello"}, headers={"authorization": f"Bearer {token()}"}
        )
    assert added.status_code == 200, added.text
    assert added.json()["output"] == {"id": 1, "shouted": "HELLO!"}
    tables = await _tables(fresh_dsn)
    assert {"notes", "oprunner_runs", "oprunner_audit"} <= tables
    assert not any(t.startswith("billing_") for t in tables)  # billing tables only for billing


def test_a_mistyped_app_is_one_line(notes_app: Path) -> None:
    result = oprunner("specs", "list", "--app", "notes:nothing", cwd=str(notes_app))
    assert result.returncode != 0 and "is not an App or an OperationRegistry" in result.stderr
    listed = oprunner("specs", "list", "--app", "notes:app", cwd=str(notes_app))
    assert listed.returncode == 0 and "notes.add" in listed.stdout


def test_the_demo_belongs_to_the_billing_app(notes_app: Path) -> None:
    result = oprunner("dev", "--demo", "notes:app", cwd=str(notes_app))
    assert result.returncode == 1 and "has none" in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_definition_mistake_is_one_line_at_load(tmp_path: Path) -> None:
    (tmp_path / "typo.py").write_text("from runner import Policy\n\npolicy = Policy(auth='users')\n")
    result = oprunner("serve", "typo:app", cwd=str(tmp_path))
    assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr
    assert "auth is one of public, user, service, admin" in result.stderr
    assert "Traceback" not in result.stderr
