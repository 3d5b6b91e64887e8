"""CloudEvents 1.0 structured-JSON envelopes: the command parser and the result/audit builders.

``parse_command`` is the only way bytes become a command, and ``EnvelopeError`` (with a
``reason``) is its only failure: whatever it refuses goes to the dead-letter topic.
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import _json
from .errors import EnvelopeError

CONTENT_TYPE = "application/cloudevents+json"
SPECVERSION = "1.0"
AUDIT_TYPE = "oprunner.audit"
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_ID_LENGTH = 255
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_OPTIONAL = ("opversion", "idempotencykey", "correlationid", "subject", "time", "datacontenttype")


@dataclass(frozen=True, slots=True)
class CommandEnvelope:
    """A parsed command. ``idempotency_key`` and ``correlation_id`` default to ``id``."""

    id: str
    source: str
    type: str
    data: Any
    opversion: str | None = None
    idempotencykey: str | None = None
    correlationid: str | None = None
    time: str | None = None
    traceparent: str | None = None

    @property
    def idempotency_key(self) -> str:
        return self.idempotencykey or self.id

    @property
    def correlation_id(self) -> str:
        return self.correlationid or self.id

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "specversion": SPECVERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "datacontenttype": "application/json",
            "data": self.data,
        }
        for name in ("opversion", "idempotencykey", "correlationid", "time"):
            if (value := getattr(self, name)) is not None:
                out[name] = value
        return out

    def encode(self) -> bytes:
        return _json.dumps(self.to_json())


def _text(doc: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = doc.get(name)
    if value is None:
        if required:
            raise EnvelopeError(f"missing required attribute {name!r}")
        return None
    if not isinstance(value, str) or not value.strip():
        raise EnvelopeError(f"attribute {name!r} must be a non-empty string")
    if len(value) > MAX_ID_LENGTH and name != "time":
        raise EnvelopeError(f"attribute {name!r} longer than {MAX_ID_LENGTH} characters")
    return value


def parse_command(
    raw: bytes | bytearray | memoryview | str, *, max_bytes: int = MAX_MESSAGE_BYTES
) -> CommandEnvelope:
    """Parse one structured CloudEvent; raise ``EnvelopeError`` with the reason if it is not one."""
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > max_bytes:
        raise EnvelopeError(f"message of {size} bytes exceeds the {max_bytes}-byte limit")
    if size == 0:
        raise EnvelopeError("empty message")
    try:
        doc = _json.loads(raw)
    except _json.JSONDecodeError as exc:
        raise EnvelopeError(f"not JSON: {exc}") from None
    except (UnicodeError, ValueError) as exc:
        raise EnvelopeError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise EnvelopeError(f"a CloudEvent must be a JSON object, got {type(doc).__name__}")
    if doc.get("specversion") != SPECVERSION:
        raise EnvelopeError(f"specversion must be {SPECVERSION!r}")
    if "data_base64" in doc:
        raise EnvelopeError("'data_base64' is not accepted: commands carry JSON data")
    for name in doc:
        if not _EXTENSION_NAME.match(name):
            raise EnvelopeError(f"attribute name {name[:40]!r} is not a CloudEvents name")
    content_type = doc.get("datacontenttype")
    if content_type is not None and content_type not in ("application/json", "text/json"):
        raise EnvelopeError(f"datacontenttype {content_type!r} is not JSON")
    if "data" not in doc:
        raise EnvelopeError("missing 'data'")
    fields = {name: _text(doc, name, required=False) for name in _OPTIONAL}
    return CommandEnvelope(
        id=_text(doc, "id", required=True) or "",
        source=_text(doc, "source", required=True) or "",
        type=_text(doc, "type", required=True) or "",
        data=doc["data"],
        opversion=fields["opversion"],
        idempotencykey=fields["idempotencykey"],
        correlationid=fields["correlationid"],
        time=fields["time"],
    )


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id() -> str:
    """A random (version 4) UUID; from ``random`` rather than ``os.urandom``: ids must be
    unique, not secret, and this is on every command's path."""
    return str(uuid.UUID(int=random.getrandbits(128), version=4))


def build_event(
    *,
    type: str,
    source: str,
    data: dict[str, Any],
    command: CommandEnvelope,
    opversion: str | None,
    time: str | None = None,
) -> dict[str, Any]:
    """A result or audit event: a new id, the command's keys copied, ``causationid`` = its id."""
    event: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": new_id(),
        "source": source,
        "type": type,
        "time": time or now_iso(),
        "datacontenttype": "application/json",
        "idempotencykey": command.idempotency_key,
        "correlationid": command.correlation_id,
        "causationid": command.id,
        "data": data,
    }
    if opversion is not None:
        event["opversion"] = opversion
    return event


def command(
    type: str,
    data: Any,
    *,
    source: str = "oprunner.client",
    id: str | None = None,
    opversion: str | None = None,
    idempotency_key: str | None = None,
    correlation_id: str | None = None,
) -> CommandEnvelope:
    """Build a command envelope (what a producer sends)."""
    return CommandEnvelope(
        id=id or new_id(),
        source=source,
        type=type,
        data=data,
        opversion=opversion,
        idempotencykey=idempotency_key,
        correlationid=correlation_id,
        time=now_iso(),
    )
