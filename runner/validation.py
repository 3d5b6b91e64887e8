"""What a caller is told about invalid input, in this project's words.

pydantic decides *whether* input is valid and *which* rule failed (its error ``type``, a
documented, stable identifier: ``missing``, ``greater_than``, ...). The ``message`` beside it
is written here from the type and its context, never pydantic's own ``msg``: that text
changes between pydantic releases, and the ``rejected`` result, the audit and the CLI's
``invalid input:`` line are this project's contract. A type without a sentence here gets
"is not valid (<type>)"; a spec's own validator (``ValueError`` in a ``field_validator``,
or a ``PydanticCustomError`` of a type of its own) speaks for itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, get_args

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from pydantic_core.core_schema import ErrorType

MAX_FIELD_ERRORS = 100
"""So a hostile input cannot make a huge result."""
MAX_MESSAGE = 500
MAX_FIELD = 200
MAX_SHOWN_PATTERN = 60
"""A longer pattern (the ISO 4217 list is one) is not shown: it would be the whole message."""

Sentence = Callable[[Mapping[str, Any]], str]


def _fixed(text: str) -> Sentence:
    return lambda ctx: text


def _pattern(ctx: Mapping[str, Any]) -> str:
    pattern = str(ctx.get("pattern", ""))
    if pattern and len(pattern) <= MAX_SHOWN_PATTERN:
        return f"must match {pattern}"
    return "is not in the expected form"


def _own(ctx: Mapping[str, Any]) -> str:
    """A validator's own exception: its text is the spec author's, not pydantic's."""
    error = ctx.get("error")
    text = str(error) if error is not None else ""
    return text or "is not valid"


_SENTENCES: dict[str, Sentence] = {
    "missing": _fixed("required"),
    "extra_forbidden": _fixed("not a field of this input"),
    "string_type": _fixed("must be a string"),
    "string_unicode": _fixed("must be a string"),
    "string_too_short": lambda c: f"must be at least {c.get('min_length')} characters",
    "string_too_long": lambda c: f"must be at most {c.get('max_length')} characters",
    "string_pattern_mismatch": _pattern,
    "int_type": _fixed("must be a whole number"),
    "int_parsing": _fixed("must be a whole number"),
    "int_from_float": _fixed("must be a whole number"),
    "int_parsing_size": _fixed("is too large a number"),
    "float_type": _fixed("must be a number"),
    "float_parsing": _fixed("must be a number"),
    "finite_number": _fixed("must be a finite number"),
    "bool_type": _fixed("must be true or false"),
    "bool_parsing": _fixed("must be true or false"),
    "decimal_type": _fixed("must be a decimal number"),
    "decimal_parsing": _fixed("must be a decimal number"),
    "decimal_max_digits": lambda c: f"must have at most {c.get('max_digits')} digits",
    "decimal_max_places": lambda c: f"must have at most {c.get('decimal_places')} digits after the point",
    "decimal_whole_digits": lambda c: f"must have at most {c.get('whole_digits')} digits before the point",
    "greater_than": lambda c: f"must be greater than {c.get('gt')}",
    "greater_than_equal": lambda c: f"must be at least {c.get('ge')}",
    "less_than": lambda c: f"must be less than {c.get('lt')}",
    "less_than_equal": lambda c: f"must be at most {c.get('le')}",
    "multiple_of": lambda c: f"must be a multiple of {c.get('multiple_of')}",
    "too_short": lambda c: f"must have at least {c.get('min_length')} items",
    "too_long": lambda c: f"must have at most {c.get('max_length')} items",
    "list_type": _fixed("must be a list"),
    "tuple_type": _fixed("must be a list"),
    "set_type": _fixed("must be a list"),
    "frozen_set_type": _fixed("must be a list"),
    "dict_type": _fixed("must be an object"),
    "model_type": _fixed("must be an object"),
    "model_attributes_type": _fixed("must be an object"),
    "literal_error": lambda c: f"must be {c.get('expected')}",
    "enum": lambda c: f"must be {c.get('expected')}",
    "uuid_type": _fixed("must be a UUID"),
    "uuid_parsing": _fixed("must be a UUID"),
    "datetime_type": _fixed("must be a date and time (ISO 8601)"),
    "datetime_parsing": _fixed("must be a date and time (ISO 8601)"),
    "datetime_from_date_parsing": _fixed("must be a date and time (ISO 8601)"),
    "timezone_aware": _fixed("must be a date and time with a time zone"),
    "date_type": _fixed("must be a date (ISO 8601)"),
    "date_parsing": _fixed("must be a date (ISO 8601)"),
    "date_from_datetime_parsing": _fixed("must be a date (ISO 8601)"),
    "time_type": _fixed("must be a time (ISO 8601)"),
    "time_parsing": _fixed("must be a time (ISO 8601)"),
    "url_type": _fixed("must be a URL"),
    "url_parsing": _fixed("must be a URL"),
    "url_scheme": lambda c: f"must be a URL with scheme {c.get('expected_schemes')}",
    "json_invalid": _fixed("must be JSON"),
    "json_type": _fixed("must be JSON"),
    "none_required": _fixed("must be null"),
    "union_tag_invalid": lambda c: f"names no variant (expected {c.get('expected_tags')})",  # not the input
    "union_tag_not_found": lambda c: f"needs {c.get('discriminator')} to tell its variant",
    "value_error": _own,
    "assertion_error": _own,
}


_PYDANTIC_TYPES = frozenset(get_args(ErrorType))


def message(error_type: str, ctx: Mapping[str, Any] | None, own: str | None = None) -> str:
    """This project's sentence for one failed rule; ``own`` is the message of a spec author's
    ``PydanticCustomError`` (a type pydantic does not have), which is theirs to word."""
    sentence = _SENTENCES.get(error_type)
    if sentence is not None:
        text = sentence(ctx or {})
    elif own and error_type not in _PYDANTIC_TYPES:
        text = own
    else:
        text = f"is not valid ({error_type})"
    return text[:MAX_MESSAGE]


def describe(err: ErrorDetails) -> str:
    """``message`` for one of ``ValidationError.errors()``."""
    return message(err["type"], err.get("ctx"), err["msg"])


def field_name(loc: tuple[int | str, ...]) -> str:
    """The wire path of a field (``invoiceId``, ``meta.tags.1``), ``data`` for the input itself."""
    return ".".join(str(p) for p in loc)[:MAX_FIELD] or "data"


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """``{field, message, type}`` per failed rule, with wire names, at most ``MAX_FIELD_ERRORS``."""
    return [
        {
            "field": field_name(err["loc"]),
            "message": describe(err),
            "type": err["type"],
        }
        for err in exc.errors(include_url=False, include_input=False)[:MAX_FIELD_ERRORS]
    ]


def summary(exc: ValidationError) -> str:
    """One line for a person: ``invoiceId: required; amount: must be greater than 0``."""
    errors = exc.errors(include_url=False, include_input=False)[:MAX_FIELD_ERRORS]
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {describe(e)}" for e in errors)
