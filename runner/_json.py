"""One JSON codec for the whole engine (orjson: fast, strict UTF-8, bounded nesting)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=_default)
    except orjson.JSONEncodeError:
        # orjson refuses what JSON allows but a double cannot hold (ints past 64 bits) and
        # non-string keys; the stdlib encoder takes them, so no outcome fails to record.
        return json.dumps(value, default=_default, separators=(",", ":")).encode()


def loads(raw: bytes | bytearray | memoryview | str) -> Any:
    return orjson.loads(raw)


def where(exc: BaseException) -> str:
    """Where a document stopped being JSON, in this project's words (`` at line 1, column 2``,
    or nothing when the decoder does not say): the decoder's own wording changes between
    releases, and a 400's or a dead letter's reason must not."""
    line, column = getattr(exc, "lineno", None), getattr(exc, "colno", None)
    if isinstance(line, int) and isinstance(column, int):
        return f" at line {line}, column {column}"
    return ""
