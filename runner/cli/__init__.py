"""The ``oprunner`` command line. Also the composition root: the only place that wires
``infra/`` (Postgres, Kafka, Stripe) into the engine."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from ..app import App, as_app
from ..auth import mint_token
from ..registry import OperationRegistry
from ..settings import Settings

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="oprunner: run declared operations exactly once.",
)
specs_app = typer.Typer(no_args_is_help=True, help="List and show the operation specs of an app.")
app.add_typer(specs_app, name="specs")

DEFAULT_APP = "handlers:app"
AppOption = Annotated[str, typer.Option("--app", help="The app (or registry), as module:attribute.")]


def fail(message: str, code: int = 1) -> NoReturn:
    """One clear line on stderr and a non-zero exit: no tracebacks for the user's mistakes."""
    typer.echo(f"oprunner: {message}", err=True)
    raise typer.Exit(code)


def load_app(target: str) -> App:
    """Import ``module:attribute``, an ``App`` or an ``OperationRegistry``. The current
    directory comes first on ``sys.path``, as uvicorn and faststream do, so ``oprunner dev
    myapp:app`` works from the app's own folder."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        fail(f"APP must look like module:attribute, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        fail(f"cannot import {module_name!r}: {exc}")
    except Exception as exc:  # a definition mistake (Policy(auth="users"), a sync handler)
        fail(f"{module_name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    found = getattr(module, attr, None)
    if not isinstance(found, App | OperationRegistry):
        fail(f"{target} is not an App or an OperationRegistry")
    return as_app(found, module)


def load_registry(target: str) -> OperationRegistry:
    return load_app(target).registry


@specs_app.command("list")
def specs_list(app_: AppOption = DEFAULT_APP) -> None:
    """One line per spec: key, version, kind, stability, description."""
    for spec in load_registry(app_):
        meta = spec.meta
        typer.echo(f"{spec.key:36} {spec.version:9} {spec.kind:8} {meta.stability:12} {meta.description}")


@specs_app.command("show")
def specs_show(
    key: str,
    version: Annotated[
        str | None, typer.Option(help="A version; the default (highest not deprecated) when omitted.")
    ] = None,
    app_: AppOption = DEFAULT_APP,
) -> None:
    """Meta, policy and JSON Schemas of one spec, as JSON."""
    from ..errors import UnknownOperation

    try:
        spec = load_registry(app_).get(key, version).spec
    except UnknownOperation as exc:
        fail(str(exc))
    typer.echo(json.dumps(spec.describe(), indent=2))


DEFAULT_LOCK = Path("oprunner.lock.json")


@specs_app.command("lock")
def specs_lock(
    app_: AppOption = DEFAULT_APP,
    out: Annotated[Path, typer.Option("--out", help="The lock file to write.")] = DEFAULT_LOCK,
) -> None:
    """Write the app's contract (every spec's schemas, policy, error codes) to a lock file."""
    from ..contract import count, dumps, lock

    locked = lock(load_registry(app_))
    try:
        out.write_text(dumps(locked))
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}", 2)
    typer.echo(f"wrote {out} ({count(locked)} specs)")


@specs_app.command("check")
def specs_check(
    app_: AppOption = DEFAULT_APP,
    lock_file: Annotated[Path, typer.Option("--lock", help="The lock file to compare with.")] = DEFAULT_LOCK,
) -> None:
    """Compare the app with its lock file: one line per breaking change, as `buf breaking` does.

    Exit 0: no breaking change; 1: breaking changes (listed); 2: nothing compared (the lock
    file is missing or unreadable, or the app cannot be loaded)."""
    from ..contract import LOCK_FORMAT, breaking, count, lock

    try:
        text = lock_file.read_text()
    except OSError as exc:
        fail(f"cannot read {lock_file}: {exc.strerror or exc} (write it with `oprunner specs lock`)", 2)
    try:
        old = json.loads(text)
    except ValueError as exc:
        fail(f"{lock_file} is not JSON: {exc}", 2)
    if (
        not isinstance(old, dict)
        or old.get("format") != LOCK_FORMAT
        or not isinstance(old.get("specs"), dict)
    ):
        fail(f"{lock_file} is not an oprunner lock file ({LOCK_FORMAT})", 2)
    try:
        registry = load_registry(app_)
    except typer.Exit:
        raise typer.Exit(2) from None
    new = lock(registry)
    try:
        found = breaking(old, new)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        fail(f"{lock_file} is not an oprunner lock file ({LOCK_FORMAT}): {type(exc).__name__} {exc}", 2)
    for line in found:
        typer.echo(line)
    if found:
        raise typer.Exit(1)
    typer.echo(f"no breaking changes against {lock_file} ({count(new)} specs)")


@app.command()
def token(
    sub: Annotated[str, typer.Option(help="The user id (claim 'sub').")] = "demo-user",
    tenant: Annotated[str | None, typer.Option(help="The tenant id.")] = None,
    kind: Annotated[str, typer.Option(help="user, service or admin.")] = "user",
    role: Annotated[list[str] | None, typer.Option(help="A role; repeat for more.")] = None,
    ttl: Annotated[int, typer.Option(help="Seconds until it expires.")] = 3600,
    op: Annotated[
        list[str] | None, typer.Option(help="Limit it to this operation (claim 'ops'); repeat for more.")
    ] = None,
) -> None:
    """Mint a JWT with OPRUNNER_JWT_SECRET, for development."""
    settings = _settings()
    if settings.jwt_secret is None:
        fail("OPRUNNER_JWT_SECRET is not set (tokens for a public-key setup come from your IdP)")
    if kind not in ("user", "service", "admin"):
        fail("--kind must be user, service or admin")
    typer.echo(
        mint_token(
            settings.jwt_secret.get_secret_value(),
            sub=sub,
            tenant=tenant,
            roles=role or [],
            kind=kind,  # type: ignore[arg-type]
            ttl=ttl,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            ops=op,
        )
    )


def run_async(main: Any) -> Any:
    """Run on uvloop when it is installed (about a third less event-loop and socket overhead
    per command), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _configure_logging(level: str, fmt: str = "json", commands: bool = False) -> None:
    from ..observability import configure_logging

    configure_logging(level, fmt, commands=commands)


@app.command()
def serve(
    target: Annotated[
        str, typer.Argument(metavar="APP", help="The app (or a registry), as module:attribute.")
    ] = DEFAULT_APP,
    workers: Annotated[
        str,
        typer.Option(
            "--workers",
            help="Serving processes in one consumer group behind one HTTP port ('auto': one per core).",
        ),
    ] = "1",
    http_fd: Annotated[int | None, typer.Option("--http-fd", hidden=True)] = None,
    ready_fd: Annotated[int | None, typer.Option("--ready-fd", hidden=True)] = None,
) -> None:
    """Consume commands, run them exactly once, publish results and audit events.

    Configured by OPRUNNER_* variables (see the README). Stops on SIGTERM/SIGINT after
    finishing in-flight commands and committing their offsets. With --workers N, a
    supervisor runs N of these (restarting any that dies) and passes the signal to all.
    """
    import socket

    from .. import heap
    from ..errors import StartupError
    from .serve import serve as run_serve
    from .workers import Supervisor, die_with_supervisor, worker_count

    if http_fd is not None:  # a worker of a supervisor's
        die_with_supervisor()
    settings = _settings()
    _configure_logging(settings.log_level, settings.log_format, settings.log_commands)
    try:
        count = worker_count(workers)
    except ValueError as exc:
        fail(str(exc))
    if count > 1 and http_fd is None:
        load_app(target)  # a bad target is one line here, not N workers' failures
        raise typer.Exit(Supervisor(target, count, settings).run())
    served = load_app(target)
    sock = socket.socket(fileno=http_fd) if http_fd is not None else None

    def ready(_: Any) -> None:  # tell the supervisor this worker is serving
        heap.settle()  # start-up is over: what it built lives as long as the process
        if ready_fd is not None:
            os.write(ready_fd, b"1")
            os.close(ready_fd)

    try:
        run_async(run_serve(settings, served, http_socket=sock, on_ready=ready))
    except StartupError as exc:
        fail(str(exc))


@app.command()
def migrate(
    target: Annotated[
        str, typer.Argument(metavar="APP", help="The app whose migrations follow the engine's.")
    ] = DEFAULT_APP,
    status: Annotated[bool, typer.Option("--status", help="List what is applied; change nothing.")] = False,
) -> None:
    """Apply the engine's database migrations, then the app's (serve also does this at start)."""
    from ..errors import StartupError
    from .serve import migration_status, open_database

    settings = _settings()
    _configure_logging("WARNING", "text")
    served = load_app(target)

    async def run() -> None:
        if status:
            for row in await migration_status(settings, served):
                when = f"applied {row.applied_at:%Y-%m-%d %H:%M:%S}" if row.applied_at else "pending"
                typer.echo(f"{row.owner:12} {row.name:40} {when}")
            return
        pool, applied = await open_database(settings, served)
        await pool.close()
        for name in applied:
            typer.echo(f"applied {name}")
        typer.echo("database is up to date")

    try:
        asyncio.run(run())
    except StartupError as exc:
        fail(str(exc))


@app.command()
def prune(
    dry_run: Annotated[bool, typer.Option(help="Count what would go; delete nothing.")] = False,
) -> None:
    """Forget what is past its retention window (serve also does this every hour).

    Completed runs past OPRUNNER_RUN_RETENTION_DAYS, published webhook inbox rows past
    OPRUNNER_INBOX_RETENTION_DAYS, parked outbox rows past OPRUNNER_PARKED_OUTBOX_RETENTION_DAYS.
    The audit log is never pruned: it is partitioned by month for archiving by detaching.
    """
    from infra.postgres.retention import prune as run_prune

    from ..errors import StartupError
    from .serve import open_database, retention_windows

    settings = _settings()
    _configure_logging("WARNING", "text")

    async def run() -> dict[str, int]:
        pool, _ = await open_database(settings)
        try:
            return await run_prune(pool, retention_windows(settings), dry_run=dry_run)
        finally:
            await pool.close()

    try:
        counts = asyncio.run(run())
    except StartupError as exc:
        fail(str(exc))
    verb = "would delete" if dry_run else "deleted"
    for kind in ("runs", "inbox", "parked_outbox"):
        typer.echo(f"{verb} {counts[kind]} {kind.replace('_', ' ')} row(s)")
    typer.echo(f"created {counts['audit_partitions_created']} audit partition(s)")


TokenOption = Annotated[
    str | None, typer.Option("--token", envvar="OPRUNNER_TOKEN", help="Bearer token (or OPRUNNER_TOKEN).")
]
KeyOption = Annotated[str | None, typer.Option("--idempotency-key", help="Defaults to the command id.")]
VersionOption = Annotated[
    str | None, typer.Option("--version", help="Spec version; the highest not deprecated when omitted.")
]


def _input(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        fail(f"INPUT is not JSON: {exc}")
    if not isinstance(value, dict):
        fail("INPUT must be a JSON object")
    return value


def _token(token: str | None) -> str:
    if not token:
        fail("no token: pass --token or set OPRUNNER_TOKEN (oprunner token mints one for development)")
    return token


def _client(settings: Settings, registry: OperationRegistry | None) -> Any:
    from ..client import OperationClient

    return OperationClient(
        settings.kafka_bootstrap,
        registry=registry,
        commands_topic=settings.commands_topic,
        results_topic=settings.results_topic,
        fetch_min_interval_ms=settings.fetch_min_interval_ms,
    )


def _registry_or_none(target: str) -> OperationRegistry | None:
    try:
        return load_registry(target)
    except typer.Exit:
        return None


def _known(
    registry: OperationRegistry | None, op: str, version: str | None, app_: str, data: dict[str, Any]
) -> None:
    """An operation the app does not have, or input its spec refuses, is one line before
    anything connects."""
    from pydantic import ValidationError

    from ..errors import UnknownOperation

    if registry is None:
        return
    try:
        registry.get(op, version).spec.io.input.model_validate(data)
    except UnknownOperation as exc:
        fail(f"{exc}: not in {app_} (name the app with --app module:attribute)")
    except ValidationError as exc:
        fail(f"invalid input: {_fields(exc)}")


def _fields(exc: Any) -> str:
    from ..validation import summary

    return summary(exc)


def _quiet_kafka() -> None:
    """The CLI says itself what went wrong with the broker, in one line: aiokafka's own
    connection errors and unclosed-client warnings would only repeat it, as noise."""
    import logging

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


@contextlib.contextmanager
def _broker_errors_are_one_line(settings: Settings) -> Iterator[None]:
    """An unreachable broker (an OS, timeout, aiokafka or FastStream error) is one line and
    exit 1; aiokafka's own logging of it, only noise then, is silenced (``_quiet_kafka``)."""
    _quiet_kafka()
    try:
        yield
    except Exception as exc:
        from ..client import CallTimeout

        library = type(exc).__module__.startswith(("aiokafka", "faststream"))
        if isinstance(exc, CallTimeout) or not (library or isinstance(exc, OSError | TimeoutError)):
            raise  # no result in time is not an unreachable broker: `call` says so itself
        fail(f"cannot reach Kafka at {settings.kafka_bootstrap}: {str(exc) or type(exc).__name__}")


async def _with_client(settings: Settings, registry: OperationRegistry | None, fn: Any) -> Any:
    from pydantic import ValidationError

    from ..errors import UnknownOperation

    try:
        with _broker_errors_are_one_line(settings):
            async with _client(settings, registry) as client:
                return await fn(client)
    except ValidationError as exc:
        fail(f"invalid input: {_fields(exc)}")
    except UnknownOperation as exc:
        fail(f"{exc}: not in this app (name the app with --app module:attribute)")


@app.command()
def send(
    op: Annotated[str, typer.Argument(help="Operation key, e.g. billing.capturePayment.")],
    input: Annotated[str, typer.Argument(metavar="INPUT", help="The input as a JSON object.")],
    token: TokenOption = None,
    idempotency_key: KeyOption = None,
    version: VersionOption = None,
    app_: AppOption = DEFAULT_APP,
) -> None:
    """Publish one command to the commands topic and print its id."""
    settings, data, bearer_token = _settings(), _input(input), _token(token)
    registry = _registry_or_none(app_)
    _known(registry, op, version, app_, data)

    async def run(client: Any) -> str:
        return str(
            await client.send(op, data, token=bearer_token, idempotency_key=idempotency_key, version=version)
        )

    typer.echo(asyncio.run(_with_client(settings, registry, run)))


@app.command()
def call(
    op: Annotated[str, typer.Argument(help="Operation key, e.g. billing.capturePayment.")],
    input: Annotated[str, typer.Argument(metavar="INPUT", help="The input as a JSON object.")],
    token: TokenOption = None,
    idempotency_key: KeyOption = None,
    version: VersionOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the result.")] = 30.0,
    app_: AppOption = DEFAULT_APP,
) -> None:
    """Send a command, wait for its result, print it. Exit 0 only if it succeeded."""
    from ..client import CallTimeout

    settings, data, bearer_token = _settings(), _input(input), _token(token)
    registry = _registry_or_none(app_)
    _known(registry, op, version, app_, data)

    async def run(client: Any) -> dict[str, Any]:
        result: dict[str, Any] = await client.call(
            op, data, token=bearer_token, idempotency_key=idempotency_key, version=version, timeout=timeout
        )
        return result

    try:
        event = asyncio.run(_with_client(settings, registry, run))
    except CallTimeout as exc:
        fail(str(exc))
    typer.echo(json.dumps(event["data"], indent=2))
    if event["data"]["status"] != "succeeded":
        raise typer.Exit(2)


@app.command()
def mcp(
    target: Annotated[
        str, typer.Argument(metavar="APP", help="The app (or a registry), as module:attribute.")
    ] = DEFAULT_APP,
    http: Annotated[
        bool, typer.Option("--http", help="Streamable HTTP at /mcp on OPRUNNER_MCP_PORT, not stdio.")
    ] = False,
) -> None:
    """Serve the app's operations as MCP tools (stdio, or streamable HTTP with --http).

    Each call runs as a command through the same validation, policy, idempotency and audit.
    Over stdio every call acts as OPRUNNER_MCP_TOKEN; over HTTP, as the request's bearer token.
    """
    from ..errors import StartupError
    from .mcp import serve_mcp

    settings = _settings()
    # stdout is the protocol over stdio: logs go to stderr, text, quiet
    _configure_logging(settings.log_level if http else "WARNING", settings.log_format if http else "text")
    served = load_app(target)
    try:
        run_async(serve_mcp(settings, served, http=http))
    except StartupError as exc:
        fail(str(exc))


@app.command()
def tail(
    stream: Annotated[str, typer.Argument(help="results, audit or dlq.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest message.")] = False,
    limit: Annotated[int | None, typer.Option(help="Stop after this many messages.")] = None,
) -> None:
    """Follow a topic until interrupted: a readable table, or JSON lines with --json."""
    from .tail import follow

    settings = _settings()
    topics = {"results": settings.results_topic, "audit": settings.audit_topic, "dlq": settings.dlq_topic}
    if stream not in topics:
        fail("STREAM must be results, audit or dlq")
    with _broker_errors_are_one_line(settings):
        asyncio.run(
            follow(
                settings.kafka_bootstrap,
                topics[stream],
                stream,
                as_json,
                from_beginning,
                limit,
                settings.fetch_min_interval_ms,
            )
        )


@app.command()
def docs(
    outdir: Annotated[Path, typer.Argument(help="Where to write the documents.")],
    app_: AppOption = DEFAULT_APP,
    html: Annotated[
        bool, typer.Option("--html", help="Also browsable pages (index.html), with no script and no CDN.")
    ] = False,
) -> None:
    """Write AsyncAPI, OpenAPI, a JSON Schema per spec and a Markdown catalog."""
    from ..docs import write_docs

    stylesheet = None
    if html:
        from infra.console import stylesheet as console_css

        stylesheet = console_css()
    written = write_docs(load_registry(app_), _settings(), outdir, stylesheet=stylesheet)
    typer.echo(f"wrote {len(written)} files to {outdir}")


dlq_app = typer.Typer(no_args_is_help=True, help="Work with the dead-letter topic.")
app.add_typer(dlq_app, name="dlq")


@dlq_app.command("replay")
def dlq_replay(
    limit: Annotated[int, typer.Option(help="At most this many messages.")] = 100,
    dry_run: Annotated[bool, typer.Option(help="Show what would be replayed.")] = False,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="OPRUNNER_TOKEN",
            help="Bearer token given back to the replayed commands of its own subject and tenant.",
        ),
    ] = None,
) -> None:
    """Send dead-lettered messages back to the commands topic (after fixing their cause).

    Progress is kept in the consumer group ``<group>-dlq-replay``: each message is replayed once.
    Dead letters keep no token, only who sent them: ``--token`` goes back on the commands its
    own subject and tenant sent, so their idempotency keys keep their scope; the others are
    replayed without a token.
    """
    from .tail import replay_dlq

    settings = _settings()
    with _broker_errors_are_one_line(settings):
        count = asyncio.run(replay_dlq(settings, limit=limit, dry_run=dry_run, token=token))
    typer.echo(f"{'would replay' if dry_run else 'replayed'} {count} message(s)")


@app.command()
def dev(
    demo: Annotated[
        bool, typer.Option("--demo", help="Run the scripted demo, print what happened, stop.")
    ] = False,
    target: Annotated[
        str, typer.Argument(metavar="APP", help="The app (or a registry), as module:attribute.")
    ] = DEFAULT_APP,
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Where the database, broker data, ports and secret are kept.")
    ] = Path(".oprunner"),
    reset: Annotated[bool, typer.Option("--reset", help="Forget the kept state first: start clean.")] = False,
    reload: Annotated[
        bool, typer.Option("--reload", help="Serve again whenever a .py or .sql file here changes.")
    ] = False,
) -> None:
    """Start a local broker and Postgres (and a Stripe stand-in for an app that uses Stripe),
    migrate, seed, and serve, logging one line per command.

    Nothing to configure: the services run on loopback and keep their state in --state-dir
    (the same ports, secret and data next time; --reset forgets it). --demo uses fresh
    services and forgets them.
    """
    from .dev import run_dev

    _configure_logging("WARNING", "text", commands=True)
    raise typer.Exit(
        run_dev(load_app(target), demo=demo, target=target, state_dir=state_dir, reset=reset, reload=reload)
    )


def _settings() -> Settings:
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        from ..validation import describe

        first = exc.errors()[0]
        fail(f"bad setting OPRUNNER_{str(first['loc'][0]).upper()}: {describe(first)}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
