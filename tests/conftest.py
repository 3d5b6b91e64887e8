"""Session fixtures: real services on loopback, started here unless the environment names them.

``OPRUNNER_DATABASE_URL``, ``OPRUNNER_KAFKA_BOOTSTRAP`` and ``OPRUNNER_STRIPE_API_BASE`` point
the tests at running servers; otherwise each is started on first use and stopped by PID at
the end of the session.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, settings

from infra.devservices import LocalBroker, StripeStandIn, broker_kind, new_broker
from infra.postgres import connect_pool, migrate

warnings.filterwarnings("ignore", category=DeprecationWarning, module="libcst")

# Generated-input tests: a few hundred examples in CI, 10,000 in the full profile.
settings.register_profile("ci", max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
settings.register_profile("full", max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
_full = os.environ.get("OPRUNNER_HYPOTHESIS_PROFILE") == "full" or os.environ.get("OPRUNNER_CHAOS_FULL")
settings.load_profile("full" if _full else "ci")

TABLES = "oprunner_runs, oprunner_outbox, oprunner_audit, oprunner_webhook_inbox, oprunner_accepted"

# The testing kit app authors use (README, "Testing your app"), on the bundled billing app.
pytest_plugins = ["infra.testing"]


@pytest.fixture(scope="session")
def oprunner_app() -> Any:
    from handlers import app

    return app


@pytest.fixture(scope="session")
def database_url(oprunner_database_url: str) -> str:
    """The testing kit's: ``OPRUNNER_DATABASE_URL``, or one embedded Postgres for the session."""
    return oprunner_database_url


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker | None]:
    """The broker process when the session started it (``OPRUNNER_DEV_BROKER``'s kind; chaos
    tests kill it), else None."""
    if os.environ.get("OPRUNNER_KAFKA_BOOTSTRAP"):
        yield None
        return
    server = new_broker().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(broker: LocalBroker | None) -> str:
    return os.environ.get("OPRUNNER_KAFKA_BOOTSTRAP") or (broker.bootstrap if broker else "")


@pytest.fixture(scope="session")
def stripe_url() -> Iterator[str]:
    if url := os.environ.get("OPRUNNER_STRIPE_API_BASE"):
        yield url
        return
    server = StripeStandIn().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def pg_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await connect_pool(database_url, min_size=1, max_size=20)
    from handlers import app as billing

    async with pool.acquire() as conn:  # the engine's tables, and the bundled billing app's
        await migrate(conn, (billing.name, str(billing.migrations)))
    yield pool
    await pool.close()


@pytest.fixture
async def topics(kafka_bootstrap: str) -> Any:
    """Topics and a consumer group of the test's own, created on the broker."""
    from tests.support import Topics

    names = Topics()
    await names.create(kafka_bootstrap)
    return names


@pytest.fixture
def serving(kafka_bootstrap: str) -> Iterator[Any]:
    """Start ``oprunner serve`` processes for one test: ``serving(topics, dsn, app=...,
    bootstrap=..., wait=True, workers=1, **OPRUNNER_settings)``; every one is killed by PID
    at the end (a supervisor's workers then get SIGTERM from the kernel)."""
    from tests.support import ServeProcess

    started: list[ServeProcess] = []

    def start(
        topics: Any,
        dsn: str,
        *,
        app: str = "tests.apps.ledger:registry",
        bootstrap: str | None = None,
        wait: bool = True,
        cwd: Any = None,
        workers: int = 1,
        **extra: str,
    ) -> ServeProcess:
        env = topics.env(bootstrap or kafka_bootstrap, dsn, **extra)
        args = ("--workers", str(workers)) if workers != 1 else ()
        proc = ServeProcess(env, app=app, args=args, **({"cwd": cwd} if cwd is not None else {})).start()
        started.append(proc)
        if wait:
            proc.wait_serving(count=workers, timeout=30 * workers)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
async def clean_db(pg_pool: asyncpg.Pool) -> asyncpg.Pool:
    """The session's database with every oprunner table emptied."""
    await pg_pool.execute(f"TRUNCATE {TABLES} RESTART IDENTITY")
    return pg_pool


NOIDA_KEEPS_DEAD_MEMBERS = pytest.mark.skip(
    reason="noida-db 0.2.3 never expires a SIGKILLed member's session: a consumer joining its"
    " group after one got no assignment within 200 s (Kafka removes it after session.timeout.ms)"
)


TANSU_HAS_NO_TRANSACTIONS = pytest.mark.skip(
    reason="Tansu has no transactional producer: exactly-once mode runs on noida-db or Kafka"
)


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    local = not os.environ.get("OPRUNNER_KAFKA_BOOTSTRAP")
    noida = local and broker_kind() == "noida"
    tansu = local and broker_kind() == "tansu"
    for item in items:
        if tansu and item.get_closest_marker("needs_transactions"):
            item.add_marker(TANSU_HAS_NO_TRANSACTIONS)
        if "tests/integration" in str(item.fspath) or "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
        if noida and item.get_closest_marker("sigkills_a_member"):
            item.add_marker(NOIDA_KEEPS_DEAD_MEMBERS)


def pytest_addoption(parser: Any) -> None:
    parser.addoption(
        "--chaos-full",
        action="store_true",
        default=False,
        help="run the chaos suite at full size (also OPRUNNER_CHAOS_FULL=1); CI runs a smaller profile",
    )


def pytest_configure(config: Any) -> None:
    # The session's local broker is noida-db unless OPRUNNER_DEV_BROKER says otherwise: the
    # suite takes 291 s on it against 475 s on Tansu (README, "Two local brokers").
    os.environ.setdefault("OPRUNNER_DEV_BROKER", "noida")
    if config.getoption("--chaos-full", default=False):
        settings.load_profile("full")


@pytest.fixture(scope="session")
def chaos_full(request: Any) -> bool:
    return bool(request.config.getoption("--chaos-full") or os.environ.get("OPRUNNER_CHAOS_FULL"))
