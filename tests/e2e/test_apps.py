"""An app written outside the repository, as a new user writes one from the README: its own
tables (its own ``0001`` migration), its own client, its own webhook source, served with
``oprunner serve`` from its own folder on a database that then holds the engine's tables and
the app's and no billing table, and tested with the testing kit's pytest plugin."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
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
import hashlib, hmac, json, os
from pathlib import Path

from runner import (
    App, IO, MappedCommand, Meta, Model, OperationRegistry, Policy, VerifiedEvent, WebhookRejected,
    define_command, install_op,
)


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


class NotesHook:
    name = "notes"

    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    def verify(self, body: bytes, headers) -> VerifiedEvent:
        expected = hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(headers.get("x-notes-signature", ""), expected):
            raise WebhookRejected("bad signature")
        event = json.loads(body)
        return VerifiedEvent(id=event["id"], type=event["type"], payload=event)

    def map(self, event: VerifiedEvent) -> MappedCommand | None:
        if event.type != "note.created":
            return None
        note = event.payload["note"]
        return MappedCommand(op="notes.add", data={"text": note["text"]}, key=note["id"])


registry = OperationRegistry()
install_op(registry, AddNote, add_note)
app = App(
    registry=registry,
    name="notes",
    migrations=Path(__file__).parent / "migrations",
    clients={"shouter": lambda settings: Shouter()},
    webhooks={"notes": lambda settings: NotesHook(os.environ["NOTES_HOOK_SECRET"].encode())},
)
'''

HOOK_SECRET = "notes-hook-secret"

NOTES_TESTS = {
    "pytest.ini": "[pytest]\nasyncio_mode = auto\n",
    "conftest.py": """
import pytest

pytest_plugins = ["infra.testing"]


@pytest.fixture(scope="session")
def oprunner_app():
    from notes import app

    return app
""",
    "test_notes.py": """
async def test_a_note_is_added_and_shouted(oprunner) -> None:
    out = await oprunner.execute("notes.add", {"text": "hi"}, sub="alice")
    assert out.status == "succeeded", out.result
    assert out.output["shouted"] == "HI!"
    assert await oprunner.db.fetchval("SELECT text FROM notes WHERE id = $1", out.output["id"]) == "hi"


async def test_no_token_is_denied(oprunner) -> None:
    out = await oprunner.execute("notes.add", {"text": "hi"})
    assert out.status == "denied" and out.error_code == "UNAUTHENTICATED"
""",
}


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
    proc = serving(topics, fresh_dsn, app="notes:app", cwd=notes_app, NOTES_HOOK_SECRET=HOOK_SECRET)
    event = {"id": "evt_1", "type": "note.created", "note": {"id": "n1", "text": "from a hook"}}
    body = json.dumps(event).encode()
    signature = hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    async with httpx.AsyncClient(base_url=proc.url, timeout=20) as http:
        added = await http.post(
            "/ops/notes.add", json={"text": "hello"}, headers={"authorization": f"Bearer {token()}"}
        )
        forged = await http.post("/webhooks/notes", content=body, headers={"x-notes-signature": "0" * 64})
        hooked = await http.post("/webhooks/notes", content=body, headers={"x-notes-signature": signature})
        again = await http.post("/webhooks/notes", content=body, headers={"x-notes-signature": signature})
    assert added.status_code == 200, added.text
    assert added.json()["output"] == {"id": 1, "shouted": "HELLO!"}
    assert forged.status_code == 400 and forged.json() == {"error": "bad signature"}
    assert hooked.status_code == 200 and hooked.json()["command"] == "notes.add"
    assert again.status_code == 200 and again.json()["duplicate"] is True
    conn = await asyncpg.connect(fresh_dsn)
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while (texts := {r["text"] for r in await conn.fetch("SELECT text FROM notes")}) != {
            "hello",
            "from a hook",
        }:
            assert asyncio.get_running_loop().time() < deadline, texts  # the hook's command ran once
            await asyncio.sleep(0.1)
        assert await conn.fetchval("SELECT count(*) FROM oprunner_webhook_inbox") == 1  # the forgery: no row
    finally:
        await conn.close()
    tables = await _tables(fresh_dsn)
    assert {"notes", "oprunner_runs", "oprunner_audit"} <= tables
    assert not any(t.startswith("billing_") for t in tables)  # billing tables only for billing


def test_an_app_is_tested_with_the_testing_kit(notes_app: Path, fresh_dsn: str) -> None:
    """The README's testing set-up, in the app's own folder, as its author runs it."""
    for name, text in NOTES_TESTS.items():
        (notes_app / name).write_text(text)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPRUNNER_", "PYTEST_"))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"],
        env={**clean, "OPRUNNER_DATABASE_URL": fresh_dsn},
        cwd=notes_app,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout


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
