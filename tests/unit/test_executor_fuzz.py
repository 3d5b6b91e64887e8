"""Arbitrary JSON at the executor: every command ends in a documented outcome, nothing escapes."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner import command
from runner.envelope import nul_paths

from .conftest import GOOD, App, _no_sleep  # noqa: F401

# Strings lean on what stores refuse or mangle: U+0000, other control characters, non-BMP.
texts = st.text(max_size=20) | st.text(
    alphabet=st.sampled_from(["\x00", "\x01", "a", "é", "\U0001f600"]), max_size=6
)
json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.integers() | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=4),
    max_leaves=15,
)
payloads = json_values | st.fixed_dictionaries(
    {},
    optional={
        "docId": json_values | st.sampled_from(["d1", "d2", "zz", "d1\x00"]),
        "amount": json_values,
        "card": json_values,
    },
)
STATUSES = {"succeeded", "failed", "rejected", "denied"}


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    op=st.sampled_from(["docs.pay", "docs.view", "docs.missing"]),
    data=payloads,
    token=st.sampled_from(["alice", "bob", None, "garbage"]),
    key=st.sampled_from([None, "k1", "k2"]),
)
async def test_any_json_gets_a_documented_outcome(
    app: App, op: str, data: Any, token: str | None, key: str | None
) -> None:
    out = await app.executor.execute(
        command(op, data, idempotency_key=key),
        token=app.token(token) if token in ("alice", "bob") else token,
    )
    assert out.status in STATUSES
    assert out.result["data"]["status"] == out.status
    assert out.audit["data"]["status"] == out.status
    assert len(out.outbox_ids) == 2
    if out.status in ("rejected", "denied", "failed"):
        assert out.error_code
    assert not nul_paths(out.result) and not nul_paths(out.audit)  # what the store was given
