"""``oprunner dev [--demo]``: everything on loopback, started from pip-installed packages.

Without ``--demo`` it serves until interrupted and prints how to talk to it. With ``--demo``
it sends a scripted set of commands and a signed Stripe webhook, prints one table of what
each became, stops everything it started and exits 0 when each did what it should.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import shlex
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import typer

from ..app import App
from ..auth import mint_token
from ..client import Result
from ..errors import StartupError
from ..settings import DEV_JWT_SECRET, Settings
from . import DEFAULT_APP
from .serve import Running, serve

DEV_SECRET = DEV_JWT_SECRET
DEV_WEBHOOK_SECRET = "whsec_oprunner_dev_0123456789abcdef"
DEV_STRIPE_KEY = "sk_test_oprunner_dev"


@dataclass
class Step:
    label: str
    op: str
    expected: str
    status: str = "-"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == self.expected


def _settings(services: Any, *, secret: str = DEV_SECRET, http_port: int | None = None) -> Settings:
    from infra.devservices import free_port

    return Settings(
        kafka_bootstrap=services.broker.bootstrap,
        kafka_idempotent_producer=services.broker.idempotent,  # Tansu has none; noida has
        database_url=services.postgres.dsn,
        jwt_secret=secret,
        **(
            {
                "stripe_api_key": DEV_STRIPE_KEY,
                "stripe_api_base": services.stripe.url,
                "stripe_webhook_secret": DEV_WEBHOOK_SECRET,
            }
            if services.stripe is not None
            else {}
        ),
        http_port=http_port or free_port(),
        session_timeout_ms=6000,
        fetch_max_wait_ms=5,  # the local broker holds each fetch to its deadline
        fetch_min_interval_ms=services.broker.fetch_min_interval_ms,  # or answers it at once
        shutdown_timeout=10,
        log_level="WARNING",
        log_commands=True,  # one line per command: operation, status, error code, time
        topic_replication_factor=1,  # one local broker
        topic_min_insync_replicas=1,
    )


async def _register_webhook(settings: Settings) -> None:
    import httpx

    async with httpx.AsyncClient() as client:
        await client.post(
            f"{settings.stripe_api_base}/_config/webhooks/oprunner-dev",
            data={
                "url": f"http://127.0.0.1:{settings.http_port}/webhooks/stripe",
                "secret": DEV_WEBHOOK_SECRET,
            },
            headers={"Authorization": f"Bearer {DEV_STRIPE_KEY}"},
        )


def _signed_event(invoice_id: str, payment_intent_id: str) -> tuple[str, bytes, str]:
    event_id = f"evt_demo_{uuid.uuid4().hex[:12]}"
    body = json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": "payment_intent.succeeded",
            "data": {
                "object": {
                    "id": payment_intent_id,
                    "object": "payment_intent",
                    "amount": 3000,
                    "amount_received": 3000,
                    "currency": "usd",
                    "metadata": {"invoice_id": invoice_id},
                }
            },
        }
    ).encode()
    stamp = int(time.time())
    digest = hmac.new(DEV_WEBHOOK_SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return event_id, body, f"t={stamp},v1={digest}"


def _describe(data: dict[str, Any]) -> str:
    if data.get("error"):
        error = data["error"]
        return f"{error['code']}: {error.get('message', '')}"[:70]
    output = data.get("output") or {}
    return ", ".join(f"{k}={v}" for k, v in output.items())[:70]


async def _demo(settings: Settings, running: Running) -> list[Step]:
    import httpx

    from ..client import OperationClient

    alice = mint_token(DEV_SECRET, sub="alice", tenant="acme")
    capture = {
        "invoiceId": "inv_demo_paid",
        "amount": "25.00",
        "currency": "EUR",
        "paymentMethodId": "pm_card_visa",
    }
    script: list[tuple[Step, dict[str, Any], dict[str, Any]]] = [
        (
            Step("capture", "billing.capturePayment", "succeeded"),
            capture,
            {"idempotency_key": "demo-capture-1"},
        ),
        (
            Step("same capture again", "billing.capturePayment", "succeeded"),
            capture,
            {"idempotency_key": "demo-capture-1"},
        ),
        (Step("invalid amount", "billing.capturePayment", "rejected"), {**capture, "amount": "-5"}, {}),
        (
            Step("someone else's invoice", "billing.capturePayment", "denied"),
            {**capture, "invoiceId": "inv_demo_bob", "amount": "10.00"},
            {},
        ),
        (
            Step("declined card", "billing.capturePayment", "failed"),
            {
                **capture,
                "invoiceId": "inv_demo_decline",
                "amount": "12.00",
                "paymentMethodId": "pm_card_chargeCustomerFail",
            },
            {},
        ),
        (
            Step("partial refund", "billing.refundPayment", "succeeded"),
            {"invoiceId": "inv_demo_paid", "amount": "5.00"},
            {},
        ),
    ]
    steps = []
    async with OperationClient(
        settings.kafka_bootstrap,
        commands_topic=settings.commands_topic,
        results_topic=settings.results_topic,
        fetch_min_interval_ms=settings.fetch_min_interval_ms,
    ) as client:
        for step, data, extra in script:
            event = await client.call(step.op, data, token=alice, timeout=60, key=data["invoiceId"], **extra)
            step.status, step.detail = event["data"]["status"], _describe(event["data"])
            steps.append(step)
        # A webhook, signed as Stripe signs it, for a payment made outside this runner (the
        # handler checks it with Stripe, so it is made in the stand-in first).
        step = Step("signed Stripe webhook", "billing.recordPayment", "succeeded")
        intent = await running.executor.clients["stripe"].v1.payment_intents.create_async(
            {
                "amount": 3000,
                "currency": "usd",
                "payment_method": "pm_card_visa",
                "confirm": True,
                "metadata": {"invoice_id": "inv_demo_webhook"},
            }
        )
        event_id, body, signature = _signed_event("inv_demo_webhook", intent.id)
        results = client.results("billing.recordPayment")
        waiter = asyncio.ensure_future(_first_for(results, f"stripe:{event_id}"))
        await asyncio.sleep(0)
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"http://127.0.0.1:{settings.http_port}/webhooks/stripe",
                content=body,
                headers={"stripe-signature": signature, "content-type": "application/json"},
            )
        if response.status_code != 200:
            step.status, step.detail = f"http {response.status_code}", response.text[:70]
        else:
            event = await asyncio.wait_for(waiter, 60)
            step.status, step.detail = event["data"]["status"], _describe(event["data"])
        waiter.cancel()
        steps.append(step)
    return steps


async def _first_for(results: Any, command_id: str) -> Result:
    async for result in results:
        if result.command_id == command_id:
            return cast(Result, result)
    raise RuntimeError("results ended")


def _table(steps: list[Step]) -> str:
    lines = [f"{'step':26} {'operation':28} {'status':10} {'expected':10} detail", "-" * 110]
    for s in steps:
        mark = "" if s.ok else "  <-- unexpected"
        lines.append(f"{s.label:26} {s.op:28} {s.status:10} {s.expected:10} {s.detail}{mark}")
    return "\n".join(lines)


def _example(schema: dict[str, Any]) -> dict[str, Any]:
    """An input to try: each required field's first example, else a value of its type."""
    placeholders = {
        "string": "example",
        "integer": 1,
        "number": 1,
        "boolean": True,
        "array": [],
        "object": {},
    }
    out: dict[str, Any] = {}
    for name in schema.get("required", []):
        field = schema.get("properties", {}).get(name, {})
        if field.get("examples"):
            out[name] = field["examples"][0]
        elif field.get("enum"):
            out[name] = field["enum"][0]
        else:
            kind = field.get("type") or next(
                (o.get("type") for o in field.get("anyOf", []) if o.get("type")), ""
            )
            out[name] = placeholders.get(kind)
    return out


def _uses_stripe(app: App) -> bool:
    """The bundled billing app's Stripe, and any app declaring a client or webhook so named,
    gets the Stripe stand-in; no other app starts one."""
    return "stripe" in app.clients or "stripe" in app.webhooks


def _secret(settings: Settings) -> str:
    return settings.jwt_secret.get_secret_value() if settings.jwt_secret else DEV_SECRET


def _token(settings: Settings) -> str:
    return mint_token(_secret(settings), sub="alice", tenant="acme", ttl=86400)


def _kept_token(values: dict[str, Any], secret: str) -> str:
    """The dev token kept in the state, while it has a day left; else a new one (a week)."""
    import jwt

    kept = values.get("token")
    if isinstance(kept, str):
        try:
            claims = jwt.decode(kept, secret, algorithms=["HS256"])
            if claims.get("exp", 0) > time.time() + 86400:
                return kept
        except jwt.PyJWTError:
            pass
    values["token"] = mint_token(secret, sub="alice", tenant="acme", ttl=7 * 86400)
    return str(values["token"])


def exports(settings: Settings, token: str | None = None) -> dict[str, str]:
    """The environment a shell needs to talk to what ``dev`` serves (``oprunner call``,
    ``tail``, ``dlq``, an app's own producer), a token for alice of tenant acme included."""
    database = settings.database_url.get_secret_value() if settings.database_url else ""
    return {
        "OPRUNNER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "OPRUNNER_KAFKA_IDEMPOTENT_PRODUCER": str(settings.kafka_idempotent_producer).lower(),
        "OPRUNNER_FETCH_MIN_INTERVAL_MS": str(settings.fetch_min_interval_ms),
        "OPRUNNER_DATABASE_URL": database,
        "OPRUNNER_JWT_SECRET": _secret(settings),
        "OPRUNNER_HTTP_PORT": str(settings.http_port),
        "OPRUNNER_TOKEN": token or _token(settings),
    }


def _banner(
    settings: Settings, app: App, target: str | None = None, state: Any = None, token: str | None = None
) -> str:
    alice = token or _token(settings)
    http = f"http://127.0.0.1:{settings.http_port}"
    specs = sorted(app.registry, key=lambda s: (s.kind != "command", s.key))
    routes = ", ".join(["POST /ops/<key>", *(f"/webhooks/{name}" for name in sorted(app.webhooks))])
    lines = [
        f"oprunner dev is serving the app {app.name!r}: {len(specs)} operations (Ctrl-C stops everything).",
        *(f"  {spec.kind:8} {spec.key} {spec.version}" for spec in specs),
        f"  Kafka        {settings.kafka_bootstrap}  (commands topic {settings.commands_topic})",
        f"  Postgres     {settings.database_url.get_secret_value() if settings.database_url else ''}",
    ]
    if settings.stripe_api_base:
        lines.append(f"  Stripe       {settings.stripe_api_base}  (webhook secret {DEV_WEBHOOK_SECRET})")
    lines += [
        f"  HTTP         {http}  ({routes})",
        f"  console      {http}/console  (sign in with the token)",
        f"  JWT secret   {_secret(settings)}",
        f"  token        {alice}  (alice, tenant acme)",
    ]
    if state is not None:
        kept = "kept from the last run" if not state.fresh else "new"
        lines.append(f"  state        {state.state}  ({kept}; oprunner dev --reset starts clean)")
        lines.append(f"In another shell:  source {state.state / 'env'}  (or paste these):")
        lines += [f"  export {name}={shlex.quote(value)}" for name, value in exports(settings, alice).items()]
    lines.append("Try:")
    if specs:
        spec = specs[0]
        example = (
            _BILLING_EXAMPLE
            if spec.key == "billing.capturePayment"
            else json.dumps(_example(spec.io.input.model_json_schema(by_alias=True)), separators=(",", ":"))
        )
        where = f" --app {target}" if target and target != DEFAULT_APP else ""
        lines.append(f"  oprunner call {spec.key} '{example}'{where}")
    lines.append("  oprunner tail results")
    return "\n".join(lines)


_BILLING_EXAMPLE = (
    '{"invoiceId":"inv_demo_paid","amount":"25.00","currency":"EUR","paymentMethodId":"pm_card_visa"}'
)
"""An invoice the billing app's seed creates: the capture then succeeds."""


DEMO_APP = "billing"
"""The scripted demo drives the bundled billing app's operations."""


def run_dev(
    app: App,
    *,
    demo: bool,
    target: str | None = None,
    state_dir: Path | None = None,
    reset: bool = False,
    reload: bool = False,
) -> int:
    """``--demo``: fresh services, the script, everything stopped and forgotten. Otherwise
    the services keep their state in ``state_dir`` (database, broker data, ports, secret),
    and ``reload`` serves in a child process started again whenever a ``.py`` or ``.sql``
    file under the current directory changes; the services stay up across reloads."""
    import faulthandler
    import signal

    from infra.devservices import (
        ServiceError,
        free_port,
        kept_services,
        local_services,
        port_open,
        write_private,
    )

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1: where is it now, on stderr

    if demo and app.name != DEMO_APP:
        typer.echo(f"oprunner: --demo runs the bundled billing app's script; {app.name!r} has none", err=True)
        return 1
    try:
        if demo:
            with local_services(stripe=_uses_stripe(app)) as services:
                return asyncio.run(_run(_settings(services), app, demo, target))
        with kept_services(state_dir or Path(".oprunner"), stripe=_uses_stripe(app), reset=reset) as kept:
            secret = kept.values.setdefault("jwt_secret", secrets.token_urlsafe(32))
            port = kept.values["ports"].get("http")
            if port is None or port_open(port):
                port = kept.values["ports"]["http"] = free_port()
            settings = _settings(kept.services, secret=secret, http_port=port)
            token = _kept_token(kept.values, secret)
            write_private(  # it holds the secret and a token
                kept.state / "env",
                "".join(f"export {k}={shlex.quote(v)}\n" for k, v in exports(settings, token).items()),
            )
            banner = _banner(settings, app, target, kept, token)
            if not reload:
                return asyncio.run(_run(settings, app, False, target, banner=banner))
            import watchfiles

            # Ctrl-C (SIGINT) stops the watcher even when this process was started with SIGINT
            # ignored (a background job of a script), as serve's own handler does for serve.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            typer.echo(banner)
            typer.echo(f"Reloading on changes to .py and .sql files under {Path.cwd()}.")
            watchfiles.run_process(
                *_watched(Path.cwd(), kept.state),
                target=_serve_reloaded,
                args=(settings, target or DEFAULT_APP),
                watch_filter=watchfiles.PythonFilter(extra_extensions=(".sql",)),
                callback=lambda changes: typer.echo(f"reloading: {len(changes)} file(s) changed"),
            )
            return 0
    except ServiceError as exc:
        typer.echo(f"oprunner: {exc}", err=True)
        return 1
    except StartupError as exc:
        typer.echo(f"oprunner: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130


def _watched(folder: Path, state: Path) -> list[Path]:
    """What ``--reload`` watches: the folder's entries but the state dir and hidden ones. The
    database's files change all the time; watched, they would hold every reload back to the
    watcher's debounce bound (it waits for a quiet moment)."""
    return sorted(p for p in folder.iterdir() if p.resolve() != state and not p.name.startswith("."))


def _serve_reloaded(settings: Settings, target: str) -> None:
    """One ``--reload`` generation: the app imported afresh, served until the next change."""
    from . import _configure_logging, load_app

    _configure_logging("WARNING", "text", commands=True)
    try:
        asyncio.run(_run(settings, load_app(target), False, target, banner=None))
    except StartupError as exc:  # e.g. a migration that fails: say so, wait for the next change
        typer.echo(f"oprunner: {exc}", err=True)
    except KeyboardInterrupt:
        pass


async def _run(
    settings: Settings, app: App, demo: bool, target: str | None, *, banner: str | None = None
) -> int:
    stop = asyncio.Event()
    ready: asyncio.Future[Running] = asyncio.get_running_loop().create_future()

    async def on_ready(running: Running) -> None:
        if app.seed is not None:
            await app.seed(running.store.pool)
        if "stripe" in app.webhooks:  # have the Stripe stand-in deliver its events here
            await _register_webhook(settings)
        ready.set_result(running)

    server: asyncio.Future[None] = asyncio.ensure_future(
        serve(settings, app, stop=stop, on_ready=on_ready, dev=True)
    )
    either: list[asyncio.Future[Any]] = [server, ready]
    done, _ = await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if server in done:
        server.result()  # raises the StartupError
        return 1
    running = ready.result()
    if not demo:
        typer.echo(banner if banner is not None else f"ready: the app {app.name!r} is served")
        await server
        return 0
    try:
        steps = await _demo(settings, running)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server, 60)
    typer.echo(_table(steps))
    failures = [s for s in steps if not s.ok]
    typer.echo(f"\n{len(steps) - len(failures)} of {len(steps)} steps as expected; local services stopped.")
    return 0 if not failures else 1
