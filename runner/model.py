"""The base class of every operation's input and output: camelCase on the wire, strict shape."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

SENSITIVE = "sensitive"
REDACTED = "[REDACTED]"


class Model(BaseModel):
    """Wire names are camelCase (``invoiceId``), attributes snake_case; unknown fields are an error.

    Rejecting unknown fields matters here: a producer that misspells a field, or smuggles an
    actor into the payload (``userId``), gets a ``rejected`` answer instead of a silent drop.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        ser_json_inf_nan="strings",
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict with wire (camelCase) names."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _is_sensitive(extra: Any) -> bool:
    return isinstance(extra, dict) and bool(extra.get(SENSITIVE))


def _model_of(annotation: Any) -> type[Model] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, Model) else None


@functools.cache
def _plan(model: type[BaseModel]) -> tuple[frozenset[str], tuple[tuple[frozenset[str], type[Model]], ...]]:
    """Per model, once: the names (wire and attribute) to redact, and the nested models."""
    hidden: set[str] = set()
    nested = []
    for name, field in model.model_fields.items():
        keys = frozenset({name, field.alias or name})
        if _is_sensitive(field.json_schema_extra):
            hidden |= keys
        elif (inner := _model_of(field.annotation)) is not None:
            nested.append((keys, inner))
    return frozenset(hidden), tuple(nested)


def redact(model: type[BaseModel], data: Any) -> Any:
    """Replace the values of fields marked ``json_schema_extra={"sensitive": True}``.

    Works on raw wire data too (a rejected command is audited before it validates), so it keys
    on both the wire name and the attribute name, and recurses into nested models.
    """
    if not isinstance(data, dict):
        return data
    hidden, nested = _plan(model)
    out = {k: (REDACTED if k in hidden else v) for k, v in data.items()}
    for keys, inner in nested:
        for key in keys & out.keys():
            out[key] = redact(inner, out[key])
    return out
