"""An app is one object: its operations, its tables, the clients and webhooks it needs.

``oprunner serve pkg.module:app`` runs it; a bare ``OperationRegistry`` still works (it is an
app with nothing else). The engine names no provider: the bundled billing app declares its
Stripe client and Stripe webhooks here, as any other app declares its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .registry import OperationRegistry

if TYPE_CHECKING:
    from .settings import Settings
    from .webhooks import WebhookSource

ClientFactory = Callable[["Settings"], Any]
"""Builds a client handlers reach as ``ctx.<name>`` from settings; None when not configured."""
WebhookFactory = Callable[["Settings"], "WebhookSource | None"]
"""Builds a webhook source served at ``/webhooks/<name>``; None when not configured."""
Seed = Callable[[Any], Awaitable[None]]
"""Writes the data ``oprunner dev`` starts with, given a database pool."""


@dataclass(frozen=True)
class App:
    """What an app declares; everything but the registry is optional.

    ``migrations`` names the app's own ordered SQL files (``0001_name.sql``, ...): a package
    (``"myapp.migrations"``) or a directory (``Path(__file__).parent / "migrations"``). They
    are tracked apart from the engine's under ``name``, so an app's ``0001`` never collides
    with the engine's, and applied at start (or by ``oprunner migrate``) under the same
    advisory lock.
    """

    registry: OperationRegistry
    name: str = "app"
    migrations: str | Path | None = None
    clients: Mapping[str, ClientFactory] = field(default_factory=dict)
    transient_errors: tuple[type[BaseException], ...] = ()
    """Errors of the app's clients after which the same attempt may succeed (retried)."""
    webhooks: Mapping[str, WebhookFactory] = field(default_factory=dict)
    seed: Seed | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.registry, OperationRegistry):
            raise TypeError("App(registry=...) takes an OperationRegistry")
        plain = self.name.replace("_", "").replace("-", "")
        if not plain.isalnum() or self.name == "oprunner":
            raise ValueError(f"an app name is letters, digits, '-' and '_' (not 'oprunner'): {self.name!r}")

    def build_clients(self, settings: Settings) -> dict[str, Any]:
        """The clients whose factory returned one (an unconfigured client is simply absent)."""
        built = {name: factory(settings) for name, factory in self.clients.items()}
        return {name: client for name, client in built.items() if client is not None}

    def build_webhooks(self, settings: Settings) -> dict[str, WebhookSource]:
        built = {name: factory(settings) for name, factory in self.webhooks.items()}
        return {name: source for name, source in built.items() if source is not None}


def as_app(target: App | OperationRegistry, module: Any = None) -> App:
    """An app for what ``APP`` named: an ``App``; or a registry, which is the module's ``App``
    when that app holds this very registry (``handlers:registry`` is the billing app), and
    otherwise an app of that registry alone."""
    if isinstance(target, App):
        return target
    for value in vars(module).values() if module is not None else ():
        if isinstance(value, App) and value.registry is target:
            return value
    return App(registry=target)
