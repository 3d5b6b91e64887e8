"""Generated webhook deliveries: the Stripe source only ever verifies, rejects or maps."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra.stripe_webhooks import StripeWebhookSource
from runner.webhooks import VerifiedEvent, WebhookRejected

SECRET = "whsec_fuzz_0123456789abcdef"
SOURCE = StripeWebhookSource(SECRET)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
events = st.fixed_dictionaries(
    {
        "id": st.text(min_size=1, max_size=30) | json_values,
        "type": st.sampled_from(
            ["payment_intent.succeeded", "payment_intent.payment_failed", "charge.refunded"]
        )
        | json_values,
        "data": st.fixed_dictionaries(
            {
                "object": st.fixed_dictionaries(
                    {},
                    optional={
                        "object": st.sampled_from(["payment_intent", "charge"]) | json_values,
                        "id": json_values,
                        "amount": st.integers(-10, 10**12) | json_values,
                        "currency": st.sampled_from(["eur", "usd", "jpy", "???"]) | json_values,
                        "metadata": st.fixed_dictionaries({}, optional={"invoice_id": json_values})
                        | json_values,
                        "last_payment_error": json_values,
                    },
                )
            }
        )
        | json_values,
    }
)


def sign(body: bytes, at: int | None = None) -> str:
    stamp = int(time.time()) if at is None else at
    return (
        f"t={stamp},v1={hmac.new(SECRET.encode(), f'{stamp}.'.encode() + body, hashlib.sha256).hexdigest()}"
    )


def _outcome(body: bytes, signature: str) -> Any:
    try:
        event = SOURCE.verify(body, {"stripe-signature": signature})
    except WebhookRejected as exc:
        assert exc.reason
        return exc
    assert isinstance(event, VerifiedEvent)
    mapped = SOURCE.map(event)
    assert mapped is None or mapped.op in ("billing.recordPayment", "billing.recordPaymentFailure")
    return mapped


@given(st.binary(max_size=2048), st.text(max_size=300))
def test_arbitrary_bodies_and_signatures_are_only_rejected(body: bytes, signature: str) -> None:
    assert isinstance(_outcome(body, signature), WebhookRejected)


@given(events)
def test_signed_arbitrary_events_verify_and_map_or_are_rejected(event: dict[str, Any]) -> None:
    body = json.dumps(event).encode()  # the stdlib encoder: ints past 64 bits are JSON too
    _outcome(body, sign(body))


@given(st.binary(max_size=512), st.integers(min_value=-(10**10), max_value=10**10))
def test_timestamps_far_from_now_are_rejected(body: bytes, offset: int) -> None:
    if abs(offset) > 400:
        assert isinstance(_outcome(body, sign(body, int(time.time()) + offset)), WebhookRejected)


@pytest.mark.parametrize(
    "event",
    [{"id": "evt_\x00", "type": "x"}, {"id": "evt_1", "type": "a\x00"}, {"id": "e" * 256, "type": "x"}],
)
def test_a_signed_event_no_store_can_hold_is_a_400_not_a_retry(event: dict[str, Any]) -> None:
    """A 5xx would have the provider retry an event the inbox can never take, for days."""
    body = json.dumps({**event, "object": "event", "data": {"object": {}}}).encode()
    with pytest.raises(WebhookRejected, match="not storable"):
        SOURCE.verify(body, {"stripe-signature": sign(body)})


# -- the answers are this project's --------------------------------------------------------------

VALID = json.dumps({"id": "evt_1", "object": "event", "type": "charge.refunded", "data": {"object": {}}})


def _reason(body: bytes, signature: str) -> str:
    with pytest.raises(WebhookRejected) as info:
        SOURCE.verify(body, {"stripe-signature": signature})
    return info.value.reason


def test_the_sdk_and_this_test_sign_alike() -> None:
    import stripe

    stamp = int(time.time())
    assert stripe.WebhookSignature.verify_header(VALID, sign(VALID.encode(), stamp), SECRET)
    assert SOURCE.verify(VALID.encode(), {"stripe-signature": sign(VALID.encode(), stamp)}).id == "evt_1"


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        ("", "missing Stripe-Signature header"),
        ("   ", "missing Stripe-Signature header"),
        ("t=1" + ",v0=00" * 2000, "Stripe-Signature header too long"),
        ("v1=" + "0" * 64, "is not 't=<seconds>,v1=<hex>[,...]'"),  # no t
        ("t={now}", "is not 't=<seconds>,v1=<hex>[,...]'"),  # no v1
        ("t={now},t={now},v1=" + "0" * 64, "is not 't=<seconds>,v1=<hex>[,...]'"),
        ("t=1.5,v1=" + "0" * 64, "is not 't=<seconds>,v1=<hex>[,...]'"),
        ("t=-{now},v1=" + "0" * 64, "is not 't=<seconds>,v1=<hex>[,...]'"),
        ("t=١٢٣,v1=" + "0" * 64, "is not 't=<seconds>,v1=<hex>[,...]'"),  # digits, not ASCII ones
        ("t={now},v1=00", "is not 't=<seconds>,v1=<hex>[,...]'"),  # not an HMAC-SHA256
        ("t={now},v1=" + "0" * 63 + "G", "is not 't=<seconds>,v1=<hex>[,...]'"),
        ("t={now},v1=" + "A" * 64, "is not 't=<seconds>,v1=<hex>[,...]'"),  # upper case
        ("t={now},v1", "is not 't=<seconds>,v1=<hex>[,...]'"),
        ("t={now},,v1=" + "0" * 64, "is not 't=<seconds>,v1=<hex>[,...]'"),
        ("t={now},v1=" + "0" * 64 + "=", "is not 't=<seconds>,v1=<hex>[,...]'"),
        ("t=1,v1=" + "0" * 64, "signature timestamp is more than 300 s old"),
        ("t={future},v1=" + "0" * 64, "signature timestamp is in the future"),
        ("t={now},v1=" + "0" * 64, "signature verification failed: no v1 signature matches"),
        ("t={now},v0=" + "0" * 64 + ",v1=" + "0" * 64, "signature verification failed: no v1 signature"),
    ],
)
def test_a_bad_signature_header_gets_this_projects_reason(signature: str, reason: str) -> None:
    now = int(time.time())
    header = signature.replace("{now}", str(now)).replace("{future}", str(now + 3600))
    assert reason in _reason(VALID.encode(), header)


@pytest.mark.parametrize(
    "raised",
    [
        ValueError("thin event"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "?"),
        RuntimeError("new in a release"),
    ],
)
def test_whatever_the_sdk_raises_the_answer_is_this_projects(
    raised: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stripe

    def verify_header(*args: Any, **kwargs: Any) -> bool:
        raise raised

    monkeypatch.setattr(stripe.WebhookSignature, "verify_header", verify_header)
    assert (
        _reason(VALID.encode(), sign(VALID.encode()))
        == "signature verification failed: no v1 signature matches"
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff{}", "body is not a JSON event"),
        (b"{not json", "body is not a JSON event"),
        (b"[1, 2]", "body is not a JSON event"),
        (b"7", "body is not a JSON event"),
        (b'{"object": "event"}', "event has no id or type"),
        (b'{"id": 7, "type": "x"}', "event has no id or type"),
        (b'{"object": "v2.core.event", "id": "evt_thin", "type": "v1.billing.meter.no_meter_found"}', None),
    ],
)
def test_a_signed_body_is_judged_by_this_project(body: bytes, reason: str | None) -> None:
    """A thin (v2) event verifies and maps to nothing: recorded, answered 200, not retried."""
    if reason is None:
        verified = SOURCE.verify(body, {"stripe-signature": sign(body)})
        assert SOURCE.map(verified) is None
    else:
        assert _reason(body, sign(body)) == reason


def test_what_this_project_parses_is_what_the_sdk_is_asked() -> None:
    """Blanks around items are allowed here, and the SDK is given the header as parsed, so a
    correct signature never gets 'no match' for the SDK's stricter reading."""
    body = VALID.encode()
    t, v1 = sign(body).split(",")
    for header in (f"{t}, {v1}", f" {t} ,{v1} ", f"{t},v0={'0' * 64},{v1},v1={'1' * 64}"):
        assert SOURCE.verify(body, {"stripe-signature": header}).id == "evt_1"


def test_a_blank_secret_is_no_source_rather_than_a_forgery_on_every_delivery() -> None:
    from pydantic import SecretStr

    from infra.stripe_webhooks import source_from

    class Settings:
        stripe_webhook_secret: SecretStr | None

    settings = Settings()
    for blank in (None, SecretStr(""), SecretStr("  ")):
        settings.stripe_webhook_secret = blank
        assert source_from(settings) is None
    settings.stripe_webhook_secret = SecretStr(SECRET)
    assert source_from(settings) is not None
