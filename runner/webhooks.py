"""Provider webhooks: verify, record in the inbox once, map to a command, publish it.

A provider plugs in as a ``WebhookSource`` (verify the delivery, map its event to a
command); the inbox is a ``WebhookInbox``. The outcome of every delivery is an HTTP status
the provider understands: 200 (taken, or seen before), 400 (forged or malformed: counted, logged
sampled, nothing stored, nothing published), 413 (too large), 503 (could not publish: retry).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .envelope import CommandEnvelope, now_iso
from .observability import Metrics

MAX_WEBHOOK_BYTES = 1024 * 1024
_log = logging.getLogger("oprunner.webhooks")


class WebhookRejected(Exception):
    """The delivery is not authentic or not well-formed; ``reason`` is safe to return."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerifiedEvent:
    id: str
    type: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class MappedCommand:
    op: str
    data: dict[str, Any]
    key: str | None = None  # the Kafka key: the spec's partition key value


class WebhookSource(Protocol):
    name: str

    def verify(self, body: bytes, headers: Mapping[str, str]) -> VerifiedEvent:
        """Return the event, or raise ``WebhookRejected``."""
        ...

    def map(self, event: VerifiedEvent) -> MappedCommand | None:
        """The command the event becomes, or None for an event type we only record."""
        ...


InboxState = Literal["new", "pending", "done"]


class WebhookInbox(Protocol):
    async def accept(self, provider: str, event: VerifiedEvent, body: bytes) -> InboxState:
        """Record a verified delivery once: ``new``; seen but not yet published: ``pending``;
        seen and published: ``done``."""
        ...

    async def mark_published(self, provider: str, event_id: str) -> None: ...


Publish = Callable[[str, bytes | None, bytes, dict[str, str]], Awaitable[None]]
Sign = Callable[[CommandEnvelope], str]
"""A credential for that one command only (``runner.auth.CommandSigner.token_for``)."""


@dataclass
class WebhookIngress:
    sources: Mapping[str, WebhookSource]
    inbox: WebhookInbox
    publish: Publish
    commands_topic: str
    sign: Sign
    max_bytes: int = MAX_WEBHOOK_BYTES
    metrics: Metrics | None = None
    log_every: float = 10.0
    """Rejected deliveries are counted, and logged at most once per this many seconds: an
    unauthenticated sender can neither fill the database nor flood the log."""
    _last_log: float = field(default=-1e9, repr=False)
    _rejected: int = field(default=0, repr=False)  # for the sampled log line; metrics count all

    async def handle(
        self, provider: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, Any]]:
        source = self.sources.get(provider)
        if source is None:
            return 404, {"error": f"no webhook source {provider!r} is configured"}
        if len(body) > self.max_bytes:
            return 413, {"error": f"body larger than {self.max_bytes} bytes"}
        try:
            event = source.verify(body, headers)
        except WebhookRejected as exc:
            self._count(provider, "rejected")
            self._log_rejected(provider, exc.reason, len(body))
            return 400, {"error": exc.reason}
        state = await self.inbox.accept(provider, event, body)
        if state == "done":
            self._count(provider, "duplicate")
            return 200, {"received": event.id, "duplicate": True}
        command = source.map(event)
        if command is not None:
            command_id = f"{provider}:{event.id}"
            envelope = CommandEnvelope(
                id=command_id,
                source=f"oprunner.webhooks.{provider}",
                type=command.op,
                data=command.data,
                idempotencykey=f"{provider}:{event.id}",
                time=now_iso(),
            )
            headers_out = {
                # bound to this command's id, operation and data: lifting it gains nothing
                "authorization": f"Bearer {self.sign(envelope)}",
                "content-type": "application/cloudevents+json",
            }
            try:
                await self.publish(
                    self.commands_topic,
                    command.key.encode() if command.key else None,
                    envelope.encode(),
                    headers_out,
                )
            except Exception as exc:  # the provider retries; the inbox row stays pending
                _log.warning("could not publish %s event %s: %s", provider, event.id, type(exc).__name__)
                self._count(provider, "unavailable")
                return 503, {"error": "could not queue the event; retry later"}
        await self.inbox.mark_published(provider, event.id)
        self._count(provider, "accepted" if command else "ignored")
        return 200, {"received": event.id, "command": command.op if command else None}

    def _log_rejected(self, provider: str, reason: str, size: int) -> None:
        now = time.monotonic()
        if now - self._last_log < self.log_every:
            return
        self._last_log = now
        total = self._rejected
        _log.warning(
            "rejected a %s delivery (%d bytes): %s [%d rejected so far]", provider, size, reason, total
        )

    def _count(self, provider: str, what: str) -> None:
        self._rejected += what == "rejected"
        if self.metrics is not None:
            self.metrics.webhook_deliveries.labels(provider, what).inc()
