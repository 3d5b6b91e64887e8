"""CloudEvents 1.0 structured-JSON envelopes: the command parser and the result/audit builders.

``parse_command`` is the only way bytes become a command, and ``EnvelopeError`` (with a
``reason``) is its only failure: whatever it refuses goes to the dead-letter topic.
"""

from __future__ import annotations

import random
import re
import time
from datetime import UTC, datetime
from typing import Any

from . import _json
from ._records import frozen
from .errors import EnvelopeError

CONTENT_TYPE = "application/cloudevents+json"
SPECVERSION = "1.0"
AUDIT_TYPE = "oprunner.audit"
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_ID_LENGTH = 255
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_OPTIONAL = (
    "opversion",
    "idempotencykey",
    "correlationid",
    "causationid",
    "subject",
    "time",
    "datacontenttype",
)


@frozen
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
    causationid: str | None = None
    """The command whose handler sent this one (``ctx.send``); as the producer says, like
    ``correlationid``: it links, it authorizes nothing."""

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
        for name in ("opversion", "idempotencykey", "correlationid", "causationid", "time"):
            if (value := getattr(self, name)) is not None:
                out[name] = value
        return out

    def encode(self) -> bytes:
        return _json.dumps(self.to_json())


NUL = "\x00"
"""U+0000: valid JSON, refused by Postgres in ``text`` and ``jsonb``; a command carrying it
is refused at the door (DLQ or ``rejected``) so that it never fails a batch's store write."""


def nul_paths(value: Any, path: str = "", limit: int = 100) -> list[str]:
    """Where U+0000 occurs in JSON data (in keys or strings), as dotted paths; at most ``limit``."""
    found: list[str] = []

    def walk(node: Any, where: str) -> None:
        if len(found) >= limit:
            return
        if isinstance(node, str):
            if NUL in node:
                found.append(where or "data")
        elif isinstance(node, dict):
            for key, item in node.items():
                name = str(key)
                here = f"{where}.{name}" if where else name
                if NUL in name:
                    found.append(here)
                walk(item, here)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{where}.{i}" if where else str(i))

    walk(value, path)
    return [visible(p)[:200] for p in found]


def visible(text: str) -> str:
    """``text`` with U+0000 written out, so it can be stored and shown."""
    return text.replace(NUL, "\\u0000")


def without_nul(value: Any) -> Any:
    """A copy of JSON data with U+0000 written out in keys and strings (for the audit)."""
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, dict):
        return {visible(str(k)): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def valid_traceparent(value: str | bytes | None) -> str | None:
    """A W3C ``traceparent`` as sent, or None when it is not one (the spec says: ignore it)."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value if value is not None and _TRACEPARENT.match(value) else None


def check_attributes(command: CommandEnvelope) -> None:
    """Refuse a command whose attributes no store can hold (U+0000 anywhere in them)."""
    for name in ("id", "source", "type", *_OPTIONAL, "traceparent"):
        value = getattr(command, name, None)
        if isinstance(value, str) and NUL in value:
            raise EnvelopeError(f"attribute {name!r} contains U+0000, which cannot be stored")


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
    except (UnicodeError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise EnvelopeError(f"not JSON{_json.where(exc)}") from None
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
        raise EnvelopeError(f"datacontenttype {str(content_type)[:60]!r} is not JSON")
    if "data" not in doc:
        raise EnvelopeError("missing 'data'")
    for name, value in doc.items():  # extensions too: none may hide what the store refuses
        if name != "data" and isinstance(value, str) and NUL in value:
            raise EnvelopeError(f"attribute {name!r} contains U+0000, which cannot be stored")
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
        causationid=fields["causationid"],
    )


_last_stamp: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """The time now in UTC, to the millisecond (``2026-12-01T17:38:26.123Z``); formatted once
    per millisecond: a batch's events share their stamp, and formatting is on every command's
    path."""
    global _last_stamp
    now = time.time_ns() // 1_000_000
    if now != _last_stamp[0]:
        when = datetime.fromtimestamp(now // 1000, UTC).replace(microsecond=now % 1000 * 1000)
        _last_stamp = (now, when.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    return _last_stamp[1]


_V4 = (0xFFFFFFFF_FFFF_0FFF_3FFF_FFFFFFFFFFFF, 0x00000000_0000_4000_8000_000000000000)


def new_id() -> str:
    """A random (version 4) UUID; from ``random`` rather than ``os.urandom``: ids must be
    unique, not secret, and this is on every command's path (written out directly: the
    ``uuid.UUID`` object costs 3x as much)."""
    n = random.getrandbits(128) & _V4[0] | _V4[1]
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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
    traceparent: str | None = None,
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
        traceparent=traceparent,
    )
