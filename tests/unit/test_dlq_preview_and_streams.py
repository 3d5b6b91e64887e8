"""What a dead-letter listing shows (a known spec's command redacted, anything else by size and
digest only) and how the live streams' limits count, without a broker or a server."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from infra.kafka.deadletters import PREVIEW_BYTES, DeadLetter, redacted_preview
from infra.runs import RunsApi, _holder
from runner.auth import Actor, Binding
from runner.model import REDACTED
from tests.apps.parked import registry
from tests.support import cloudevent

PM = "pm_card_secret_4242"
DATA = {"invoiceId": "inv_1", "amount": "25.00", "currency": "EUR", "paymentMethodId": PM}


def test_a_known_specs_command_is_shown_redacted_and_a_long_one_cut_at_a_character() -> None:
    shown = redacted_preview(cloudevent("billing.capturePayment", DATA, id="c1"), registry)
    assert shown is not None and not shown.cut
    assert orjson.loads(shown.text)["data"] == {**DATA, "paymentMethodId": REDACTED}
    # an extension is not kept (the spec says nothing of it), nor anything past PREVIEW_BYTES
    padded = {**DATA, "note": "é" * PREVIEW_BYTES}
    long = redacted_preview(cloudevent("billing.capturePayment", padded, secret=PM), registry)
    assert long is not None and long.cut and PM not in long.text
    assert len(long.text.encode()) <= PREVIEW_BYTES and long.text.startswith("{")


def test_what_cannot_be_shown_redacted_is_not_shown() -> None:
    command = cloudevent("billing.capturePayment", DATA)
    for value in (command[: len(command) // 2], b"\xff" + command, cloudevent("billing.gone", DATA), b""):
        assert redacted_preview(value, registry) is None
    letter = DeadLetter(0, 1, 0, None, b"", (), size=9, sha256="ab" * 32)
    out = letter.to_json()
    assert out["preview"] is None and out["bytes"] == 9 and out["sha256"] == "ab" * 32
    whole = DeadLetter(0, 1, 0, None, command, ())
    assert whole.to_json()["sha256"] == hashlib.sha256(command).hexdigest()  # found whole: its own


def _actor(sub: str, tenant: str | None = None, kind: Any = "user") -> Actor:
    return Actor(user_id=sub, tenant_id=tenant, kind=kind, roles=frozenset())


def test_a_subject_without_a_tenant_is_capped_as_a_tenant_is_and_operators_are_not() -> None:
    api = RunsApi(executor=None, max_streams_per_tenant=6)  # type: ignore[arg-type]
    for actor, n in ((_actor("solo"), 4), (_actor("solo", kind="service"), 2)):
        api._streams[_holder(actor)] = n
    refused = api._refusal(_holder(_actor("solo", kind="service")))
    assert refused is not None and refused.startswith("this subject (no tenant) has 6")
    assert api._refusal(_holder(_actor("other"))) is None  # another subject, its own cap
    assert api._refusal(_holder(_actor("solo", kind="admin"))) is None  # an operator: its own count
    one_command = Actor(user_id="ops", kind="admin", roles=frozenset(), bound=Binding("c1", "d"))
    assert not _holder(one_command).operator  # stands for one command: no operator's share
    assert not _holder(_actor("ops-t1", kind="admin", tenant="t1")).operator  # a tenant's member
