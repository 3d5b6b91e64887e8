"""The ``oprunner`` command line. Also the composition root: the only place that wires
``infra/`` (Postgres, Kafka, Stripe) into the engine."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import sys
from typing import Annotated, NoReturn

import typer

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

DEFAULT_APP = "handlers:registry"
AppOption = Annotated[str, typer.Option("--app", help="The registry to use, as module:attribute.")]


def fail(message: str, code: int = 1) -> NoReturn:
    """One clear line on stderr and a non-zero exit: no tracebacks for the user's mistakes."""
    typer.echo(f"oprunner: {message}", err=True)
    raise typer.Exit(code)


def load_registry(target: str) -> OperationRegistry:
    """Import ``module:attribute`` and check it is a registry."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        fail(f"APP must look like module:attribute, got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        fail(f"cannot import {module_name!r}: {exc}")
    registry = getattr(module, attr, None)
    if not isinstance(registry, OperationRegistry):
        fail(f"{target} is not an OperationRegistry")
    return registry


@specs_app.command("list")
def specs_list(app_: AppOption = DEFAULT_APP) -> None:
    """One line per spec: key, version, kind, stability, description."""
    for spec in load_registry(app_):
        meta = spec.meta
        typer.echo(f"{spec.key:36} {spec.version:9} {spec.kind:8} {meta.stability:12} {meta.description}")


@specs_app.command("show")
def specs_show(
    key: str,
    version: Annotated[str | None, typer.Option(help="A version; the latest when omitted.")] = None,
    app_: AppOption = DEFAULT_APP,
) -> None:
    """Meta, policy and JSON Schemas of one spec, as JSON."""
    from ..errors import UnknownOperation

    try:
        spec = load_registry(app_).get(key, version).spec
    except UnknownOperation as exc:
        fail(str(exc))
    typer.echo(json.dumps(spec.describe(), indent=2))


@app.command()
def token(
    sub: Annotated[str, typer.Option(help="The user id (claim 'sub').")] = "demo-user",
    tenant: Annotated[str | None, typer.Option(help="The tenant id.")] = None,
    kind: Annotated[str, typer.Option(help="user, service or admin.")] = "user",
    role: Annotated[list[str] | None, typer.Option(help="A role; repeat for more.")] = None,
    ttl: Annotated[int, typer.Option(help="Seconds until it expires.")] = 3600,
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
        )
    )


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


@app.command()
def serve(
    target: Annotated[
        str, typer.Argument(metavar="APP", help="The registry, as module:attribute.")
    ] = DEFAULT_APP,
) -> None:
    """Consume commands, run them exactly once, publish results and audit events.

    Configured by OPRUNNER_* variables (see the README). Stops on SIGTERM/SIGINT after
    finishing in-flight commands and committing their offsets.
    """
    from .serve import StartupError
    from .serve import serve as run_serve

    settings = _settings()
    _configure_logging(settings.log_level)
    registry = load_registry(target)
    try:
        asyncio.run(run_serve(settings, registry))
    except StartupError as exc:
        fail(str(exc))


@app.command()
def migrate() -> None:
    """Apply the database migrations (serve also does this at start)."""
    from .serve import StartupError, open_database

    settings = _settings()
    _configure_logging("WARNING")

    async def run() -> None:
        pool, applied = await open_database(settings)
        await pool.close()
        for name in applied:
            typer.echo(f"applied {name}")

    try:
        asyncio.run(run())
    except StartupError as exc:
        fail(str(exc))
    typer.echo("database is up to date")


def _settings() -> Settings:
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"bad setting OPRUNNER_{str(first['loc'][0]).upper()}: {first['msg']}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
