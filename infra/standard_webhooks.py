"""Standard Webhooks (https://www.standardwebhooks.com) as a ``WebhookSource``.

Any provider that signs as the specification says (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``) is ingested by one
line in an app::

    App(..., webhooks={"acme": standard_webhook("acme", acme_event)})

``acme_event`` maps a ``VerifiedEvent`` (id: the ``webhook-id``, the spec's idempotency id;
type: the body's ``type``; payload: the body, ``{"type", "timestamp", "data"}`` as the spec
recommends) to a ``MappedCommand`` or None. The secret is ``OPRUNNER_ACME_WEBHOOK_SECRET``
(``whsec_<base64>``, as providers issue it), from the environment or the ``.env`` file;
unset, the source is absent and ``/webhooks/acme`` answers 404, as Stripe's does. Everything
else (the inbox, dedup by ``(acme, webhook-id)``, the idempotency key ``acme:<webhook-id>``,
the one-command token, 400/413/503) is ``runner.webhooks.WebhookIngress``'s, shared with Stripe.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from standardwebhooks.webhooks import Webhook

from runner.errors import StartupError
from runner.webhooks import MappedCommand, VerifiedEvent, WebhookRejected

if TYPE_CHECKING:
    from runner.app import WebhookFactory
    from runner.settings import Settings

TOLERANCE = 300
"""Seconds a ``webhook-timestamp`` may be off, either way: the spec's (and the package's
fixed) five minutes. A smaller window can be asked for; a larger one cannot."""
MAX_ID_HEADER = 255
MAX_TIMESTAMP_HEADER = 20
MAX_SIGNATURE_HEADER = 8192
"""Room for a few dozen signatures (key rotation); the package compares each one."""
MAX_TYPE_LENGTH = 255
MIN_SECRET_BYTES = 24
"""The spec: secrets SHOULD be 24 to 64 bytes."""
SECRET_PREFIX = "whsec_"

EventMapping = Callable[[VerifiedEvent], MappedCommand | None]
"""What an app declares: the command an event becomes, or None for one only recorded."""

_log = logging.getLogger("oprunner.webhooks")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_TIMESTAMP = re.compile(r"[0-9]{1,20}")
_SIGNATURE = re.compile(r"[A-Za-z0-9]{1,8},([A-Za-z0-9+/]+={0,2})")  # one "version,base64"
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")

MALFORMED_SIGNATURE = "webhook-signature is not a list of 'v1,<base64>' signatures"
NO_MATCHING_SIGNATURE = "signature verification failed: no signature matches"
"""The two answers a signature header can get, in this project's words: releases of the
package differ in how they treat a malformed entry (1.1 raised on bad padding, 1.3 reports no
match), so the shape, the timestamp and the comparison are this module's, and the package
only computes the ``v1`` signature (``Webhook.sign``) that one entry must equal."""


class StandardWebhookSource:
    """Verifies with the ``standardwebhooks`` package; maps with the app's ``map_event``.

    ``verify`` raises nothing but ``WebhookRejected``, whatever the body and headers (the
    package itself would let ``ValueError``, ``UnicodeDecodeError`` and ``RecursionError``
    out on malformed input: headers are checked and bounded before it sees them, and the body
    is parsed here, by orjson, strict and depth-bounded).
    """

    def __init__(
        self, name: str, secret: str, map_event: EventMapping, *, tolerance: int = TOLERANCE
    ) -> None:
        check_name(name)
        if not 0 < tolerance <= TOLERANCE:
            raise ValueError(f"tolerance must be 1..{TOLERANCE} seconds (the package checks {TOLERANCE})")
        self.name = name
        self.tolerance = tolerance
        self.map_event = map_event
        self._webhook = Webhook(decode_secret(secret))
        # the command's id is "<name>:<webhook-id>", and a CloudEvents id holds 255 characters
        self.max_id = min(MAX_ID_HEADER, 255 - len(name) - 1)

    def verify(self, body: bytes, headers: Mapping[str, str]) -> VerifiedEvent:
        event_id = self._header(headers, "webhook-id", self.max_id)
        stamp = self._header(headers, "webhook-timestamp", MAX_TIMESTAMP_HEADER)
        signature = self._header(headers, "webhook-signature", MAX_SIGNATURE_HEADER)
        if not event_id.isprintable():  # NUL and other control characters: not storable
            raise WebhookRejected("webhook-id has control characters")
        if not _TIMESTAMP.fullmatch(stamp):
            raise WebhookRejected("webhook-timestamp is not an integer number of seconds")
        skew = int(stamp) - time.time()
        if skew < -self.tolerance:
            raise WebhookRejected(f"webhook-timestamp is more than {self.tolerance} s old")
        if skew > self.tolerance:
            raise WebhookRejected(f"webhook-timestamp is more than {self.tolerance} s in the future")
        signatures = signature.split()
        if not all(well_formed_signature(entry) for entry in signatures):
            raise WebhookRejected(MALFORMED_SIGNATURE)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise WebhookRejected("body is not UTF-8 JSON") from None
        try:  # the package signs; which entry matches, and when, is decided here
            expected = self._webhook.sign(event_id, datetime.fromtimestamp(int(stamp), tz=UTC), text)
        except Exception:
            raise WebhookRejected(NO_MATCHING_SIGNATURE) from None
        if not any(hmac.compare_digest(expected, entry) for entry in signatures):
            raise WebhookRejected(NO_MATCHING_SIGNATURE)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise WebhookRejected("body is not JSON") from None
        if not isinstance(payload, dict):
            raise WebhookRejected("body is not a JSON object")
        event_type = payload.get("type")
        if not isinstance(event_type, str) or not event_type:
            raise WebhookRejected("event has no type (a non-empty string)")
        if "\x00" in event_type or len(event_type) > MAX_TYPE_LENGTH:
            raise WebhookRejected("event type is not storable")  # a 5xx would be retried for days
        return VerifiedEvent(event_id, event_type, payload)

    def map(self, event: VerifiedEvent) -> MappedCommand | None:
        """The app's mapping; None (the event is recorded, answered 200, nothing runs) when it
        raises or returns something that cannot be published.

        Not a 5xx, on purpose: the event is authentic and is already in the inbox, and a
        mapping is plain code over the event, so it would fail the same way on every retry.
        A 5xx would have the provider retry it for days, and some providers then disable the
        endpoint, losing every other event too. Instead it is logged at ERROR with the event's
        id and type, counted as ``ignored``, and its body stays in ``oprunner_webhook_inbox``
        to be replayed once the mapping is fixed.
        """
        try:
            command = self.map_event(event)
        except Exception:
            _log.error(
                "the %s webhook mapping failed on event %s (%s): recorded, not run",
                self.name,
                event.id,
                event.type,
                exc_info=True,
            )
            return None
        if command is None:
            return None
        problem = unpublishable(command)
        if problem:
            _log.error(
                "the %s webhook mapping made an unpublishable command from event %s (%s): %s; "
                "recorded, not run",
                self.name,
                event.id,
                event.type,
                problem,
            )
            return None
        return command

    @staticmethod
    def _header(headers: Mapping[str, str], name: str, limit: int) -> str:
        value = headers.get(name)
        if value is None:
            value = next((v for k, v in headers.items() if k.lower() == name), None)
        if not isinstance(value, str) or not value.strip():
            raise WebhookRejected(f"missing {name} header")
        if len(value) > limit:
            raise WebhookRejected(f"{name} header longer than {limit} characters")
        return value.strip()


def standard_webhook(
    name: str, map_event: EventMapping, *, secret_env: str | None = None, tolerance: int = TOLERANCE
) -> WebhookFactory:
    """An ``App.webhooks`` factory for a Standard Webhooks source served at ``/webhooks/<name>``
    (declare it under the same name). The secret is read from ``secret_env``, by default
    ``OPRUNNER_<NAME>_WEBHOOK_SECRET`` (``-`` as ``_``), in the environment or the ``.env``
    file the settings read; unset or empty, the factory returns None (the endpoint answers
    404). A secret that is not ``whsec_<base64>`` of at least 24 bytes stops ``serve``."""
    check_name(name)
    env = secret_env or f"OPRUNNER_{name.upper().replace('-', '_')}_WEBHOOK_SECRET"

    def factory(settings: Settings) -> StandardWebhookSource | None:
        secret = read_secret(env, settings)
        if secret is None:
            return None
        try:
            return StandardWebhookSource(name, secret, map_event, tolerance=tolerance)
        except ValueError as exc:
            raise StartupError(f"{env}: {exc}") from None

    return factory


def well_formed_signature(entry: str) -> bool:
    """One ``<version>,<base64>`` entry, its base64 canonical (padded, no stray bits), so that
    every release of the package, decoding or comparing text, sees the same signature."""
    match = _SIGNATURE.fullmatch(entry)
    if match is None:
        return False
    try:  # an unpadded length is an Error here too
        return base64.b64encode(base64.b64decode(match[1], validate=True)).decode() == match[1]
    except binascii.Error:
        return False


def check_name(name: str) -> None:
    """A provider name is a path segment, an inbox key and an idempotency key prefix."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"a webhook source name is 1-32 of a-z, 0-9, '-', '_': {name!r}")


def decode_secret(secret: str) -> bytes:
    """The key of a ``whsec_<base64>`` (or bare base64) secret, as the package decodes it;
    ``ValueError`` (never naming the secret) when it is not one or is too short."""
    encoded = secret.strip().removeprefix(SECRET_PREFIX)
    if not _BASE64.fullmatch(encoded):
        raise ValueError(f"not a Standard Webhooks secret ({SECRET_PREFIX}<base64>)")
    try:
        key = base64.b64decode(encoded + "==")  # the package's own decoding: padding optional
    except binascii.Error:
        raise ValueError(f"not a Standard Webhooks secret ({SECRET_PREFIX}<base64>)") from None
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the secret is {len(key)} bytes; the specification asks for {MIN_SECRET_BYTES} or more"
        )
    return key


def read_secret(env: str, settings: Any) -> str | None:
    """``env`` from the environment, else from the ``.env`` file ``Settings`` reads; None when
    unset or empty."""

    class _Secret(BaseSettings):
        model_config = SettingsConfigDict(env_file=settings.model_config.get("env_file"), extra="ignore")
        value: SecretStr | None = Field(default=None, validation_alias=env)

    value = _Secret().value
    secret = value.get_secret_value().strip() if value is not None else ""
    return secret or None


def unpublishable(command: Any) -> str | None:
    """Why a mapping's result cannot become a command message, or None when it can."""
    if not isinstance(command, MappedCommand):
        return f"a {type(command).__name__}, not a MappedCommand"
    if not isinstance(command.op, str) or not command.op or len(command.op) > 255 or "\x00" in command.op:
        return "its op is not an operation name"
    if not isinstance(command.data, dict):
        return "its data is not a JSON object"
    if command.key is not None and not isinstance(command.key, str):
        return "its key is not a string"
    try:
        json.dumps(command.data)
    except (TypeError, ValueError, RecursionError):
        return "its data is not JSON"
    return None
