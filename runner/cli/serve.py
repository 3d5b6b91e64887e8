"""The composition root: the one place where the engine meets ``infra/`` (Postgres, Kafka
admin, Stripe). ``oprunner serve`` and ``oprunner dev`` both start here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from faststream.kafka import KafkaBroker
from starlette.responses import Response
from starlette.routing import Route

from infra.console import docs_routes
from infra.http import OpsApi, build_app
from infra.kafka import CommandConsumer, KafkaPublisher, OutboxRelay, ensure_topics
from infra.kafka.deadletters import KafkaDeadLetters
from infra.kafka.publisher import OutboxCleaner, producer_options
from infra.kafka.transactions import PartitionTransactions
from infra.postgres import PostgresStore, connect_pool, migrate
from infra.postgres.inbox import PostgresInbox
from infra.postgres.migrate import status
from infra.postgres.retention import Windows, prune
from infra.runs import RunsApi

from ..app import App, as_app
from ..auth import CommandSigner, JwtAuthenticator, command_key
from ..errors import RegistryError, StartupError
from ..executor import Executor, Outcome
from ..observability import Metrics, configure_tracing
from ..registry import OperationRegistry
from ..settings import DEV_JWT_SECRET, MIN_HS256_SECRET_BYTES, Settings
from ..webhooks import WebhookIngress
from .http_server import HttpServer

_log = logging.getLogger("oprunner.serve")


def _where(dsn: str) -> str:
    parts = urlsplit(dsn)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


def check_secrets(settings: Settings, *, dev: bool = False) -> None:
    """Refuse configuration that would make tokens forgeable, with one line naming it."""
    if settings.service_token is not None:
        raise StartupError(
            "OPRUNNER_SERVICE_TOKEN is no longer used (webhook commands carry one-command tokens): unset it"
        )
    secrets = {
        "OPRUNNER_JWT_SECRET": settings.jwt_secret,
        "OPRUNNER_COMMAND_TOKEN_SECRET": settings.command_token_secret,
    }
    for name, value in secrets.items():
        if value is None:
            continue
        raw = value.get_secret_value()
        if len(raw.encode()) < MIN_HS256_SECRET_BYTES:
            raise StartupError(f"{name} must be at least {MIN_HS256_SECRET_BYTES} bytes (HS256)")
        if raw == DEV_JWT_SECRET and not dev:
            raise StartupError(f"{name} is the published development secret; set a secret of your own")


def authenticator_from(settings: Settings, *, dev: bool = False) -> JwtAuthenticator:
    check_secrets(settings, dev=dev)
    window = settings.run_retention_days * 86400
    if window and settings.command_token_ttl > window:
        # a one-command token resent after its run was pruned would run the command again
        raise StartupError("OPRUNNER_COMMAND_TOKEN_TTL must not outlast OPRUNNER_RUN_RETENTION_DAYS")
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
    if (secret is None) == (settings.jwt_public_key is None):
        raise StartupError("set exactly one of OPRUNNER_JWT_SECRET or OPRUNNER_JWT_PUBLIC_KEY")
    return JwtAuthenticator(
        secret=secret,
        public_key=settings.jwt_public_key,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        command_key=command_key_from(settings),
    )


def command_key_from(settings: Settings) -> bytes | None:
    own = settings.command_token_secret
    return command_key(
        settings.jwt_secret.get_secret_value() if settings.jwt_secret else None,
        own.get_secret_value() if own else None,
    )


async def open_pool(settings: Settings, size: int, *, min_size: int = 1) -> Any:
    """A pool on the configured database, or ``StartupError`` naming what failed."""
    if settings.database_url is None:
        raise StartupError("OPRUNNER_DATABASE_URL is not set")
    dsn = settings.database_url.get_secret_value()
    try:
        return await connect_pool(dsn, min_size=min_size, max_size=size)
    except (OSError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        raise StartupError(f"cannot reach the database at {_where(dsn)}: {reason}") from exc
    except Exception as exc:
        raise StartupError(f"database at {_where(dsn)}: {type(exc).__name__}: {exc}") from exc


def _app_migrations(app: App | None) -> tuple[str, str] | None:
    return (app.name, str(app.migrations)) if app is not None and app.migrations else None


async def migration_status(settings: Settings, app: App | None = None) -> list[Any]:
    """What ``oprunner migrate --status`` lists: every engine and app migration, applied or not."""
    pool = await open_pool(settings, 1)
    try:
        async with pool.acquire() as conn:
            return await status(conn, _app_migrations(app))
    finally:
        await pool.close()


async def open_database(settings: Settings, app: App | None = None) -> tuple[Any, list[str]]:
    """Connect and migrate, or raise ``StartupError`` naming what failed.

    Returns the pool and the migrations applied (for the caller to log once all is up)."""
    pool = await open_pool(settings, max(4, min(settings.max_in_flight // 4, 64)), min_size=2)
    try:
        async with pool.acquire() as conn:
            applied = await migrate(conn, _app_migrations(app))
            await conn.execute("SELECT oprunner_audit_partitions()")  # this month's and the next
    except Exception as exc:
        await pool.close()
        where = _where(settings.database_url.get_secret_value()) if settings.database_url else "?"
        if isinstance(exc, OSError | TimeoutError):
            raise StartupError(
                f"cannot reach the database at {where}: {str(exc) or type(exc).__name__}"
            ) from exc
        raise StartupError(f"database at {where}: {type(exc).__name__}: {exc}") from exc
    return pool, applied


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """aiokafka logs its own ERROR for a refused connection; the startup error says it once."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


async def check_broker(settings: Settings) -> None:
    """Reach the broker and create missing topics, or raise ``StartupError``."""

    topics = {
        settings.commands_topic: settings.topic_partitions,
        settings.results_topic: settings.topic_partitions,
        settings.audit_topic: settings.topic_partitions,
        settings.dlq_topic: 1,
    }
    replication = settings.topic_replication_factor
    config = {"min.insync.replicas": str(min(settings.topic_min_insync_replicas, replication))}
    try:
        with _quiet("aiokafka"):
            await asyncio.wait_for(
                ensure_topics(settings.kafka_bootstrap, topics, replication=replication, config=config), 20
            )
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise StartupError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {reason}") from exc


async def open_broker(settings: Settings) -> tuple[KafkaBroker, Callable[..., Any]]:
    """FastStream's broker (webhooks publish through it) and its consumer builder; call
    ``check_broker`` first."""
    broker = KafkaBroker(settings.kafka_bootstrap, **producer_options(settings), logger=None)
    try:
        builder = await asyncio.wait_for(broker.connect(), 20)
    except Exception as exc:
        raise StartupError(
            f"cannot connect a producer to Kafka at {settings.kafka_bootstrap}: {exc}"
        ) from exc
    return broker, builder


async def open_publisher(settings: Settings) -> KafkaPublisher:
    """The outbox publisher on its own producer, with the broker's settings; started."""
    publisher = KafkaPublisher.connecting_to(settings.kafka_bootstrap, **producer_options(settings))
    try:
        await asyncio.wait_for(publisher.start(), 20)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await publisher.stop()
        raise StartupError(
            f"cannot connect a producer to Kafka at {settings.kafka_bootstrap}: {exc}"
        ) from exc
    return publisher


def retention_windows(settings: Settings) -> Any:

    day = 86400.0
    return Windows(
        runs=settings.run_retention_days * day,
        inbox=settings.inbox_retention_days * day,
        parked_outbox=settings.parked_outbox_retention_days * day,
    )


async def maintain(settings: Settings, pool: Any, stop: asyncio.Event) -> None:
    """Prune what is past its window, now and every ``prune_interval`` seconds."""

    if settings.prune_interval <= 0:
        return
    while not stop.is_set():
        try:
            pruned = await prune(pool, retention_windows(settings))
            if any(pruned.values()):
                _log.info("pruned %s", pruned)
        except Exception:
            _log.warning("pruning failed; trying again in %ss", settings.prune_interval, exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.prune_interval)


def new_executor(
    settings: Settings, app: App, store: Any, authenticator: Any, clients: Any, metrics: Metrics | None
) -> Executor:
    """The executor of ``app`` on ``store``: one for each pool a process runs commands on."""
    key = command_key_from(settings)  # None with a public-key setup and no command secret
    return Executor(
        app.registry,
        store,
        authenticator,
        results_topic=settings.results_topic,
        audit_topic=settings.audit_topic,
        source=settings.source,
        clients=clients,
        transient_errors=app.transient_errors,
        metrics=metrics,
        commands_topic=settings.commands_topic,
        command_signer=CommandSigner(key, subject="oprunner-followups", ttl=settings.command_token_ttl)
        if key is not None
        else None,
        max_message_bytes=settings.max_message_bytes,
    )


def open_transactions(settings: Settings, publisher: KafkaPublisher) -> PartitionTransactions | None:
    """Exactly-once mode's producers (one per assigned partition, opened as each is), or None."""
    if not settings.kafka_exactly_once:
        return None
    return PartitionTransactions.connecting_to(
        publisher, settings.kafka_bootstrap, group_id=settings.group_id, **producer_options(settings)
    )


def group_instance_id(settings: Settings) -> str | None:
    """The static member id, one per worker of ``serve --workers``."""
    worker = os.environ.get("OPRUNNER_WORKER")
    if settings.kafka_group_instance_id is None or worker is None:
        return settings.kafka_group_instance_id
    return f"{settings.kafka_group_instance_id}-{worker}"


def delivering(publisher: KafkaPublisher, cleaner: OutboxCleaner) -> Callable[[Outcome], Awaitable[None]]:
    """Publish an outcome's events at once, and have its outbox rows removed once they are
    out; a failure is only logged: the rows stay, and the outbox relay publishes them."""

    async def deliver(outcome: Outcome) -> None:
        try:
            await publisher.publish(outcome.publications)
            cleaner.add(outcome.outbox_ids)
        except Exception:
            _log.warning("publish failed; the outbox relay will publish", exc_info=True)

    return deliver


def build_clients(settings: Settings, app: App) -> Any:
    try:
        return app.build_clients(settings)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise StartupError(f"app {app.name}: a client could not be built: {reason}") from exc


def build_http_app(
    settings: Settings,
    pool: Any,
    broker: KafkaBroker,
    ops: Any = None,
    extra: list[tuple[str, Any]] | None = None,
    metrics: Metrics | None = None,
    app: App | None = None,
    runs: RunsApi | None = None,
) -> Any:
    """The app's webhooks (those configured), the operations API, health and readiness."""

    sources = app.build_webhooks(settings) if app is not None else {}

    key = command_key_from(settings)
    if sources and key is None:
        raise StartupError("webhooks with a public-key JWT setup need OPRUNNER_COMMAND_TOKEN_SECRET")
    signer = CommandSigner(key or b"", subject="oprunner-webhooks", ttl=settings.command_token_ttl)

    async def publish(topic: str, key: bytes | None, value: bytes, headers: dict[str, str]) -> None:
        await asyncio.wait_for(broker.publish(value, topic, key=key, headers=headers), 10)

    ingress = WebhookIngress(
        sources=sources,
        inbox=PostgresInbox(pool),
        publish=publish,
        commands_topic=settings.commands_topic,
        sign=signer.token_for,
        metrics=metrics,
    )

    async def database() -> bool:
        return bool(await asyncio.wait_for(pool.fetchval("SELECT 1"), 2) == 1)

    async def kafka() -> bool:
        return bool(await broker.ping(2))

    def docs(document: dict[str, Any]) -> list[Route]:  # the served app's pages, linked from the console
        assert app is not None
        return docs_routes(app.registry, settings, document)

    return build_app(
        webhooks=ingress if sources else None,
        checks={"database": database, "kafka": kafka},
        ops=ops,
        runs=runs,
        body_timeout=settings.http_body_timeout,
        extra_routes=[Route(path, endpoint, methods=["GET"]) for path, endpoint in extra or []],
        docs=docs if app is not None and runs is not None else None,
    )


@dataclass
class Running:
    """What ``serve`` started, for tests and ``dev`` to look at."""

    executor: Executor
    consumer: CommandConsumer
    relay: OutboxRelay
    store: Any


@dataclass
class Runtime:
    """What ``build_runtime`` wired for an app, the one diagram of the running process:
    two pools (Kafka path, HTTP), the broker and the outbox publisher's own producer, the store
    and the executors on each pool, the consumer and relay on Kafka, the operations API and
    the HTTP server."""

    settings: Settings
    app: App
    pool: Any
    http_pool: Any
    broker: KafkaBroker
    publisher: KafkaPublisher
    store: Any
    executor: Executor
    consumer: CommandConsumer
    relay: OutboxRelay
    ops: OpsApi
    http: HttpServer
    metrics: Metrics
    resources: contextlib.AsyncExitStack
    runs: RunsApi


async def build_runtime(
    settings: Settings,
    target: App | OperationRegistry,
    *,
    dev: bool = False,
    http_socket: socket.socket | None = None,
) -> Runtime:
    """Check the app and the configuration, reach the database (migrated) and the broker,
    and wire every part; raise ``StartupError`` naming what failed, having closed what it
    opened. ``dev`` admits the published development secret, nothing else; ``http_socket``
    is a listening socket to serve HTTP on instead of binding one (a worker's)."""
    app = as_app(target)
    try:
        app.registry.check()
    except RegistryError as exc:
        raise StartupError(str(exc)) from exc
    authenticator = authenticator_from(settings, dev=dev)
    if settings.database_url is None:
        raise StartupError("OPRUNNER_DATABASE_URL is not set")
    async with contextlib.AsyncExitStack() as opened:
        pool, applied = await open_database(settings, app)
        opened.push_async_callback(pool.close)
        await check_broker(settings)
        broker, builder = await open_broker(settings)
        opened.push_async_callback(broker.stop)
        publisher = await open_publisher(settings)
        opened.push_async_callback(publisher.stop)
        if applied:
            _log.info("applied migrations %s", applied)
        http_pool = await open_pool(settings, settings.http_db_pool_size)
        opened.push_async_callback(http_pool.close)
        clients = build_clients(settings, app)
        metrics = Metrics()
        configure_tracing()

        def executor_on(store: Any) -> Executor:
            return new_executor(settings, app, store, authenticator, clients, metrics)

        store = PostgresStore(pool)
        executor = executor_on(store)
        consumer = CommandConsumer(
            executor,
            publisher,
            builder,
            topic=settings.commands_topic,
            group_id=settings.group_id,
            dlq_topic=settings.dlq_topic,
            max_in_flight=settings.max_in_flight,
            batch_size=settings.batch_size,
            max_batches=settings.max_batches,
            max_message_bytes=settings.max_message_bytes,
            session_timeout_ms=settings.session_timeout_ms,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            fetch_min_interval_ms=settings.fetch_min_interval_ms,
            drain_timeout=settings.shutdown_timeout,
            park_after_attempts=settings.park_after_attempts,
            park_after_seconds=settings.park_after_seconds,
            metrics=metrics,
            transactions=open_transactions(settings, publisher),
            group_instance_id=group_instance_id(settings),
        )

        deliver = delivering(publisher, consumer.cleaner)
        ops = OpsApi(
            executor_on(PostgresStore(http_pool)),  # HTTP's own connections
            deliver,
            max_bytes=settings.max_message_bytes,
            body_timeout=settings.http_body_timeout,
            max_background=settings.http_max_concurrency,
        )

        async def scrape(request: Any) -> Any:
            metrics.in_flight.set(consumer.in_flight)
            with contextlib.suppress(Exception):  # a database outage must not break the scrape
                metrics.outbox_backlog.set(await asyncio.wait_for(store.backlog(), 2))
            return Response(metrics.render(), media_type=metrics.content_type)

        dlq = KafkaDeadLetters(
            settings.kafka_bootstrap, settings.dlq_topic, settings.commands_topic, publisher.publish
        )
        runs = RunsApi(ops.executor, dlq=dlq)
        asgi = build_http_app(
            settings,
            http_pool,
            broker,
            ops,
            extra=[("/metrics", scrape)],
            metrics=metrics,
            app=app,
            runs=runs,
        )
        http = HttpServer.configured(asgi, settings, settings.http_port, http_socket)
        resources = opened.pop_all()
    return Runtime(
        settings,
        app,
        pool,
        http_pool,
        broker,
        publisher,
        store,
        executor,
        consumer,
        OutboxRelay(store, publisher),
        ops,
        http,
        metrics,
        resources,
        runs,
    )


async def run(
    runtime: Runtime,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Running], Awaitable[None] | None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``): HTTP first to stop taking commands, then the
    consumer drains; close everything ``build_runtime`` opened."""
    rt, settings = runtime, runtime.settings
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[None]] = []
    try:
        await rt.http.start()
        await rt.consumer.start()
        tasks += [
            asyncio.create_task(rt.relay.run(), name="oprunner-relay"),
            asyncio.create_task(rt.ops.sweep(stop), name="oprunner-accepted-sweep"),
            asyncio.create_task(maintain(settings, rt.pool, stop), name="oprunner-prune"),
        ]
        if on_ready is not None:
            maybe = on_ready(Running(rt.executor, rt.consumer, rt.relay, rt.store))
            if maybe is not None:
                await maybe
        _log.info("serving %d operations from %s", len(rt.app.registry), settings.commands_topic)

        async def stop_http_first() -> None:
            await stop.wait()  # stop taking HTTP commands, finish those in flight, then drain Kafka
            rt.runs.close()  # live streams end, so they do not hold the HTTP drain
            await rt.http.stop()
            await rt.ops.drain(settings.shutdown_timeout)

        http_stopper = asyncio.create_task(stop_http_first())
        await rt.consumer.run(stop)
        await http_stopper
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        for task in tasks:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        rt.runs.close()
        await rt.http.stop()
        await rt.resources.aclose()
    _log.info("stopped: %d commands, %d dead-lettered", rt.consumer.processed, rt.consumer.dead_lettered)


async def serve(
    settings: Settings,
    target: App | OperationRegistry,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Running], Awaitable[None] | None] | None = None,
    dev: bool = False,
    http_socket: socket.socket | None = None,
) -> None:
    """Run ``target`` (an ``App``, or a registry alone): ``build_runtime``, then ``run``."""
    runtime = await build_runtime(settings, target, dev=dev, http_socket=http_socket)
    await run(runtime, stop=stop, on_ready=on_ready)
