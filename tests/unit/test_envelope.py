"""The envelope parser: valid CloudEvents parse; anything else is one EnvelopeError."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner import EnvelopeError, command, parse_command
from runner.envelope import check_attributes

VALID: dict[str, Any] = {
    "specversion": "1.0",
    "id": "c1",
    "source": "svc",
    "type": "docs.pay",
    "data": {"docId": "d1"},
}


def _raw(**changes: Any) -> bytes:
    doc = {**VALID, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def test_parses_a_valid_command_with_defaults() -> None:
    env = parse_command(_raw())
    assert (env.id, env.source, env.type, env.data) == ("c1", "svc", "docs.pay", {"docId": "d1"})
    assert env.idempotency_key == "c1" and env.correlation_id == "c1"


def test_extensions_are_read() -> None:
    env = parse_command(_raw(opversion="1.0.0", idempotencykey="k", correlationid="corr"))
    assert (env.opversion, env.idempotency_key, env.correlation_id) == ("1.0.0", "k", "corr")


def test_round_trips_through_encode() -> None:
    env = command("docs.pay", {"a": 1}, idempotency_key="k")
    assert parse_command(env.encode()) == env


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty message"),
        (b"\xff\xfe", "not JSON"),
        (b"{not json", "not JSON"),
        (b"[1,2]", "must be a JSON object"),
        (_raw(specversion="0.3"), "specversion"),
        (_raw(id=...), "missing required attribute 'id'"),
        (_raw(id=""), "'id' must be a non-empty string"),
        (_raw(id=5), "'id' must be a non-empty string"),
        (_raw(source=...), "'source'"),
        (_raw(type=...), "'type'"),
        (_raw(data=...), "missing 'data'"),
        (_raw(datacontenttype="text/xml"), "is not JSON"),
        (_raw(Bad_Name=1), "not a CloudEvents name"),
        (_raw(idempotencykey="k" * 300), "longer than"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b'{"n": ' + b"1" * 1_000_000 + b"}", "exceeds"),
    ],
)
def test_rejections_carry_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        parse_command(raw, max_bytes=1_000_000 if len(raw) < 1_000_000 else 1_000)
    assert reason in info.value.reason


def test_size_limit() -> None:
    with pytest.raises(EnvelopeError, match="exceeds the 100-byte limit"):
        parse_command(_raw(data={"x": "y" * 200}), max_bytes=100)


def test_million_digit_number_is_refused() -> None:
    with pytest.raises(EnvelopeError, match="not JSON"):
        parse_command(
            b'{"specversion":"1.0","id":"a","source":"s","type":"t","data":' + b"9" * 1_000_000 + b"}"
        )


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_ever_raise_envelope_error(raw: bytes) -> None:
    try:
        parse_command(raw)
    except EnvelopeError as exc:
        assert exc.reason


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(st.sampled_from([*VALID, "opversion", "idempotencykey", "x"]), json_values) | json_values
)
def test_arbitrary_json_only_ever_raises_envelope_error(doc: Any) -> None:
    try:
        env = parse_command(json.dumps(doc).encode())
    except EnvelopeError as exc:
        assert exc.reason
    else:
        assert env.id and env.source and env.type
        check_attributes(env)  # whatever parses, a store can hold


@pytest.mark.parametrize(
    "name", ["id", "source", "type", "idempotencykey", "correlationid", "opversion", "x"]
)
def test_nul_in_any_attribute_is_refused_with_the_reason(name: str) -> None:
    doc = {"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": {}, name: "a\x00b"}
    with pytest.raises(EnvelopeError, match=f"attribute '{name}' contains U\\+0000"):
        parse_command(json.dumps(doc).encode())


@pytest.mark.parametrize("raw", [b"{x", b"\xff\xfe", b'{"a":1,}', b"[" * 5000, b"1e999999"])
def test_not_json_is_said_in_the_projects_words(raw: bytes) -> None:
    """The reason (a dead letter's ``dlq-reason``) says where, never the decoder's wording."""
    with pytest.raises(EnvelopeError) as info:
        parse_command(raw)
    assert re.fullmatch(r"not JSON( at line \d+, column \d+)?", str(info.value)), str(info.value)
