"""The testing kit's pytest plugin: an app's operations against real Postgres, no broker.

What ``TestKafkaBroker`` or ``WorkflowEnvironment`` give their users: in the app's
``conftest.py``::

    pytest_plugins = ["infra.testing"]

    @pytest.fixture(scope="session")
    def oprunner_app():
        from myapp import app
        return app

then ``async def test_x(oprunner): outcome = await oprunner.execute("my.op", {...}, sub="alice")``
(with pytest-asyncio's ``asyncio_mode = "auto"``, or each test marked ``pytest.mark.asyncio``).
Postgres is ``OPRUNNER_DATABASE_URL`` when set, else an embedded PostgreSQL 18 started once
per session and stopped by PID at its end; the engine's and the app's migrations are applied
once. Each test gets its own pool and an ``Executor`` over the Postgres store, so handlers
run in real transactions (``ctx.db``) with the app's clients. Commands are run directly
(``Executor.execute``): validation, authentication, policy, the claim, the handler and the
recorded outcome are exactly as under ``serve``; only Kafka is left out.

It lives in ``infra/``, not ``runner/``: it is a composition root (Postgres, the store, the
migrations), and the engine reaches ``infra/`` from no other place than those.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from runner import App, Executor, JwtAuthenticator, Outcome, command, mint_token
from runner.app import as_app
from runner.auth import CommandSigner, command_key
from runner.settings import Settings

from .postgres import PostgresStore, connect_pool, migrate

SECRET = "oprunner-testing-kit-secret-0123456789abcdef"
"""What the kit's tokens are signed with (tests only: ``serve`` refuses nothing it does not know)."""


@dataclass
class Kit:
    """One test's view: the app, an executor on the real store, its pool, tokens."""

    app: App
    executor: Executor
    db: Any  # an asyncpg pool on the test database
    settings: Settings

    def token(self, sub: str = "alice", **claims: Any) -> str:
        """A token for ``sub`` (``tenant``, ``roles``, ``kind``, ``ops`` as claims)."""
        return mint_token(SECRET, sub=sub, **claims)

    async def execute(
        self,
        op: str,
        data: Any,
        *,
        sub: str | None = None,
        tenant: str | None = None,
        token: str | None = None,
        **envelope: Any,
    ) -> Outcome:
        """Run one command to its recorded outcome, as ``sub`` (or with ``token``; neither:
        no token). ``envelope`` takes ``id``, ``idempotency_key``, ``opversion``..."""
        if token is None and sub is not None:
            token = self.token(sub, **({"tenant": tenant} if tenant is not None else {}))
        return await self.executor.execute(command(op, data, **envelope), token=token)

    async def follow_ups(self, outcome: Outcome) -> list[Outcome]:
        """Run the follow-up commands ``outcome``'s handler sent (``ctx.send``), each with the
        one-command token it was published with, as the consumer would; their outcomes."""
        commands = self.executor.commands_topic
        sent = [p for p in outcome.publications if p.topic == commands]
        out = []
        for publication in sent:
            token = dict(publication.headers)["authorization"].decode()
            out.append(await self.executor.execute(publication.value, token=token))
        return out


@pytest.fixture(scope="session")
def oprunner_app() -> App:
    """The app under test: override it in your conftest.py."""
    raise pytest.UsageError("define an 'oprunner_app' fixture returning your App (see infra.testing)")


@pytest.fixture(scope="session")
def oprunner_database_url() -> Iterator[str]:
    """``OPRUNNER_DATABASE_URL``, or an embedded Postgres for the session."""
    if url := os.environ.get("OPRUNNER_DATABASE_URL"):
        yield url
        return
    from .devservices import Postgres

    server = Postgres().start()
    try:
        yield server.dsn
    finally:
        server.stop()


@pytest.fixture(scope="session")
def oprunner_settings(oprunner_database_url: str) -> Settings:
    """What the app's client factories are given; override to configure them."""
    return Settings(database_url=oprunner_database_url, jwt_secret=SECRET, _env_file=None)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def oprunner_migrated(oprunner_app: Any, oprunner_database_url: str) -> App:
    """The engine's and the app's migrations, applied once (in a loop of their own, so the
    kit works whatever loop scope the app's tests use)."""
    app = as_app(oprunner_app)

    async def apply() -> None:
        pool = await connect_pool(oprunner_database_url, min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                await migrate(conn, (app.name, str(app.migrations)) if app.migrations else None)
        finally:
            await pool.close()

    asyncio.run(apply())
    return app


@pytest_asyncio.fixture  # not plain pytest.fixture: it must work in pytest-asyncio's strict mode too
async def oprunner(oprunner_migrated: App, oprunner_settings: Settings) -> AsyncIterator[Kit]:
    app = oprunner_migrated
    assert oprunner_settings.database_url is not None
    pool = await connect_pool(oprunner_settings.database_url.get_secret_value(), min_size=1, max_size=8)
    try:
        key = command_key(SECRET, None)
        assert key is not None  # derived from the kit's secret
        authenticator = JwtAuthenticator(secret=SECRET, command_key=key)
        executor = Executor(
            app.registry,
            PostgresStore(pool),
            authenticator,
            clients=app.build_clients(oprunner_settings),
            transient_errors=app.transient_errors,
            command_signer=CommandSigner(key, subject="oprunner-followups", ttl=3600),
        )
        yield Kit(app, executor, pool, oprunner_settings)
    finally:
        await pool.close()
