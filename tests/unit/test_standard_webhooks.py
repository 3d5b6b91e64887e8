"""The Standard Webhooks source: signed per the specification (computed here, not by the
package), verified, rejected with a reason, mapped by the app's mapping; generated input only
ever verifies or is rejected."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra.standard_webhooks import StandardWebhookSource, decode_secret, standard_webhook
from runner.errors import StartupError
from runner.settings import Settings
from runner.webhooks import MappedCommand, VerifiedEvent, WebhookIngress, WebhookRejected

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()


def mapping(event: VerifiedEvent) -> MappedCommand | None:
    if event.type != "ledger.credit.requested":
        return None
    data = event.payload.get("data")
    if not isinstance(data, dict) or not isinstance(account := data.get("accountId"), str):
        return None
    return MappedCommand("ledger.deposit", {"accountId": account, "amount": data.get("amount")}, key=account)


SOURCE = StandardWebhookSource("ledger", SECRET, mapping)


def sign(body: bytes, msg_id: str = "msg_1", at: int | None = None, key: bytes = KEY) -> dict[str, str]:
    """The headers the specification says a sender sends."""
    stamp = str(int(time.time()) if at is None else at)
    digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def event(type: Any = "ledger.credit.requested", **data: Any) -> bytes:
    return json.dumps({"type": type, "timestamp": "2024-01-01T00:00:00Z", "data": data}).encode()


def rejected(body: bytes, headers: Mapping[str, str], source: StandardWebhookSource = SOURCE) -> str:
    with pytest.raises(WebhookRejected) as info:
        source.verify(body, headers)
    return info.value.reason


def test_a_delivery_signed_per_the_specification_verifies_and_maps() -> None:
    body = event(accountId="acc-1", amount="2.50")
    verified = SOURCE.verify(body, sign(body, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"))
    assert verified == VerifiedEvent(
        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", "ledger.credit.requested", json.loads(body)
    )
    assert SOURCE.map(verified) == MappedCommand(
        "ledger.deposit", {"accountId": "acc-1", "amount": "2.50"}, key="acc-1"
    )


def test_bare_base64_secrets_rotation_and_header_case_are_accepted() -> None:
    body = event()
    bare = StandardWebhookSource("ledger", base64.b64encode(KEY).decode().rstrip("="), mapping)
    headers = sign(body)
    rotated = {**headers, "webhook-signature": "v1,AAAA v1a,Zm9v " + headers["webhook-signature"]}
    assert bare.verify(body, rotated).id == "msg_1"
    assert SOURCE.verify(body, {k.title(): v for k, v in headers.items()}).id == "msg_1"


def test_the_package_and_this_test_sign_alike() -> None:
    from datetime import UTC, datetime

    from standardwebhooks.webhooks import Webhook

    body = event()
    stamp = int(time.time())
    theirs = Webhook(SECRET).sign("msg_1", datetime.fromtimestamp(stamp, tz=UTC), body.decode())
    assert theirs == sign(body, at=stamp)["webhook-signature"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            {"webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()},
            "signature verification failed",
        ),
        ({"webhook-signature": "v2,AAAA"}, "signature verification failed"),
        ({"webhook-signature": "v1;AAAA"}, "not a list of 'v1,<base64>'"),
        ({"webhook-signature": "v1,AAA"}, "not a list of 'v1,<base64>'"),  # bad padding
        ({"webhook-signature": "v1,AAA="}, "signature verification failed"),
        ({"webhook-signature": "v1,AAB="}, "not a list of 'v1,<base64>'"),  # stray bits: not canonical
        ({"webhook-signature": "v1,AA=="}, "signature verification failed"),
        ({"webhook-signature": "v1,A==="}, "not a list of 'v1,<base64>'"),
        ({"webhook-signature": "v1,AAAA v1,AAA"}, "not a list of 'v1,<base64>'"),  # one bad entry
        ({"webhook-signature": "v1,a,b"}, "not a list of 'v1,<base64>'"),
        ({"webhook-id": "msg_other"}, "signature verification failed"),  # the id is signed
        ({"webhook-timestamp": "12.5"}, "not an integer"),
        ({"webhook-timestamp": "1e9"}, "not an integer"),
        ({"webhook-id": "msg_\x00"}, "control characters"),
        ({"webhook-id": "m" * 300}, "webhook-id header longer than 248"),
        ({"webhook-signature": "v1,AAAA " * 2000}, "webhook-signature header longer than 8192"),
        ({"webhook-timestamp": "1" * 21}, "webhook-timestamp header longer than 20"),
    ],
)
def test_bad_headers_are_rejected_with_a_reason(change: dict[str, str], reason: str) -> None:
    body = event()
    assert reason in rejected(body, {**sign(body), **change})


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_or_empty_header_is_named(name: str) -> None:
    body = event()
    headers = sign(body)
    assert rejected(body, {k: v for k, v in headers.items() if k != name}) == f"missing {name} header"
    assert rejected(body, {**headers, name: "  "}) == f"missing {name} header"


@pytest.mark.parametrize(
    "raised",
    [
        ValueError("Incorrect padding"),
        UnicodeEncodeError("ascii", "x", 0, 1, "?"),
        TypeError("Expected payload to be of type str or bytes"),
        RuntimeError("a release's new complaint"),
    ],
)
def test_whatever_the_package_raises_the_answer_is_this_projects(
    raised: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The package is asked one thing, the signature an entry must equal; its exceptions and
    their wording differ between releases (1.1 raised on bad padding, 1.3 reports no match)."""
    from standardwebhooks.webhooks import Webhook

    def refuse(*args: Any, **kwargs: Any) -> str:
        raise raised

    monkeypatch.setattr(Webhook, "sign", refuse)
    body = event()
    assert rejected(body, sign(body)) == "signature verification failed: no signature matches"


def test_a_wrong_secret_fails_the_signature() -> None:
    body = event()
    assert "signature verification failed" in rejected(body, sign(body, key=b"k" * 32))
    other = StandardWebhookSource("ledger", "whsec_" + base64.b64encode(b"o" * 32).decode(), mapping)
    assert "signature verification failed" in rejected(body, sign(body), other)


def test_a_tampered_body_fails_the_signature() -> None:
    body = event(accountId="acc-1", amount="1")
    assert "signature verification failed" in rejected(event(accountId="acc-1", amount="1000"), sign(body))


@pytest.mark.parametrize("offset", [-301, -3600, 301, 3600, -(10**12), 10**15])
def test_stale_and_future_timestamps_are_rejected(offset: int) -> None:
    body = event()
    at = max(0, int(time.time()) + offset)
    reason = rejected(body, sign(body, at=at))
    assert ("old" if offset < 0 else "future") in reason


def test_a_smaller_tolerance_is_honoured_and_a_larger_one_refused() -> None:
    body = event()
    strict = StandardWebhookSource("ledger", SECRET, mapping, tolerance=10)
    assert "more than 10 s old" in rejected(body, sign(body, at=int(time.time()) - 60), strict)
    assert SOURCE.verify(body, sign(body, at=int(time.time()) - 60)).id == "msg_1"
    with pytest.raises(ValueError, match="tolerance"):
        StandardWebhookSource("ledger", SECRET, mapping, tolerance=3600)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "body is not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "not a JSON object"),
        (b'"ledger"', "not a JSON object"),
        (b"[" * 5000 + b"]" * 5000, "body is not JSON"),  # past orjson's depth bound
        (b'{"type": "\\ud800"}', "body is not JSON"),  # a lone surrogate: not storable text
        (b"{}", "no type"),
        (b'{"type": ""}', "no type"),
        (b'{"type": 7}', "no type"),
        (b'{"type": "a\\u0000b"}', "not storable"),
        (json.dumps({"type": "t" * 256}).encode(), "not storable"),
    ],
)
def test_malformed_bodies_are_rejected_after_the_signature(body: bytes, reason: str) -> None:
    assert reason in rejected(body, sign(body))


def test_unsigned_malformed_bodies_fail_the_signature_first() -> None:
    assert "signature verification failed" in rejected(b"[1]", sign(b"{}"))


def test_an_id_that_fits_the_command_id_is_taken() -> None:
    body = event()
    assert SOURCE.verify(body, sign(body, msg_id="m" * 248)).id == "m" * 248  # "ledger:" + 248 = 255


def test_secrets_and_names_are_checked_at_construction() -> None:
    assert decode_secret(SECRET) == KEY
    for bad in ["", "whsec_", "whsec_not base64!", "whsec_" + base64.b64encode(b"short").decode()]:
        with pytest.raises(ValueError) as info:
            StandardWebhookSource("ledger", bad, mapping)
        assert bad.removeprefix("whsec_") not in str(info.value) or not bad.removeprefix("whsec_")
    for name in ["", "Ledger", "a/b", "x" * 33, "../x"]:
        with pytest.raises(ValueError, match="name"):
            StandardWebhookSource(name, SECRET, mapping)


# -- the mapping ------------------------------------------------------------------------------


def test_events_the_mapping_does_not_know_are_only_recorded() -> None:
    body = event("ledger.something.else", accountId="acc-1")
    assert SOURCE.map(SOURCE.verify(body, sign(body))) is None


def test_a_failing_mapping_records_the_event_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: VerifiedEvent) -> MappedCommand | None:
        raise KeyError("data")

    source = StandardWebhookSource("ledger", SECRET, broken)
    body = event()
    with caplog.at_level(logging.ERROR, "oprunner.webhooks"):
        assert source.map(source.verify(body, sign(body, "msg_boom"))) is None
    [record] = caplog.records
    assert "msg_boom" in record.getMessage() and record.exc_info is not None


@pytest.mark.parametrize(
    "made",
    [
        "ledger.deposit",
        MappedCommand("", {}),
        MappedCommand("ledger.deposit", ["not", "an", "object"]),  # type: ignore[arg-type]
        MappedCommand("ledger.deposit", {"when": object()}),
        MappedCommand("ledger.deposit", {}, key=7),  # type: ignore[arg-type]
    ],
)
def test_an_unpublishable_command_is_recorded_not_published(
    made: Any, caplog: pytest.LogCaptureFixture
) -> None:
    source = StandardWebhookSource("ledger", SECRET, lambda event: made)
    body = event()
    with caplog.at_level(logging.ERROR, "oprunner.webhooks"):
        assert source.map(source.verify(body, sign(body))) is None
    assert "unpublishable" in caplog.text


class MemoryInbox:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], bool] = {}

    async def accept(self, provider: str, event: VerifiedEvent, body: bytes) -> Any:
        if (provider, event.id) not in self.rows:
            self.rows[provider, event.id] = False
            return "new"
        return "done" if self.rows[provider, event.id] else "pending"

    async def mark_published(self, provider: str, event_id: str) -> None:
        self.rows[provider, event_id] = True


async def test_through_the_ingress_once_then_duplicate_and_a_broken_mapping_is_a_200() -> None:
    published: list[tuple[str, bytes | None, bytes, dict[str, str]]] = []

    async def publish(topic: str, key: bytes | None, value: bytes, headers: dict[str, str]) -> None:
        published.append((topic, key, value, headers))

    def sometimes_broken(event: VerifiedEvent) -> MappedCommand | None:
        if event.type == "ledger.boom":
            raise RuntimeError("a bug in the mapping")
        return mapping(event)

    ingress = WebhookIngress(
        sources={"ledger": StandardWebhookSource("ledger", SECRET, sometimes_broken)},
        inbox=MemoryInbox(),
        publish=publish,
        commands_topic="ops.commands",
        sign=lambda envelope: "one-command-token",
    )
    body = event(accountId="acc-1", amount="3")
    assert await ingress.handle("ledger", body, sign(body, "msg_a")) == (
        200,
        {"received": "msg_a", "command": "ledger.deposit"},
    )
    assert await ingress.handle("ledger", body, sign(body, "msg_a")) == (
        200,
        {"received": "msg_a", "duplicate": True},
    )
    [(topic, key, value, headers)] = published
    command = json.loads(value)
    assert topic == "ops.commands" and key == b"acc-1"
    assert command["id"] == command["idempotencykey"] == "ledger:msg_a"
    assert command["type"] == "ledger.deposit" and command["source"] == "oprunner.webhooks.ledger"
    assert headers["authorization"] == "Bearer one-command-token"
    boom = event("ledger.boom")
    assert await ingress.handle("ledger", boom, sign(boom, "msg_b")) == (
        200,
        {"received": "msg_b", "command": None},
    )
    status, answer = await ingress.handle("ledger", body, sign(body, "msg_c", key=b"w" * 32))
    assert status == 400 and "signature" in answer["error"]
    assert (await ingress.handle("ledger", b"x" * (1024 * 1024 + 1), sign(b"x")))[0] == 413
    assert len(published) == 1


# -- declaring one ----------------------------------------------------------------------------


def test_the_factory_reads_the_secret_setting_and_is_absent_without_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    factory = standard_webhook("ledger-eu", mapping)
    settings = Settings(_env_file=None)
    monkeypatch.delenv("OPRUNNER_LEDGER_EU_WEBHOOK_SECRET", raising=False)
    monkeypatch.chdir("/")  # no .env file here
    assert factory(settings) is None
    monkeypatch.setenv("OPRUNNER_LEDGER_EU_WEBHOOK_SECRET", "")
    assert factory(settings) is None
    monkeypatch.setenv("OPRUNNER_LEDGER_EU_WEBHOOK_SECRET", SECRET)
    source = factory(settings)
    assert isinstance(source, StandardWebhookSource) and source.name == "ledger-eu"
    monkeypatch.setenv("OPRUNNER_LEDGER_EU_WEBHOOK_SECRET", "whsec_c2hvcnQ=")
    with pytest.raises(StartupError, match="OPRUNNER_LEDGER_EU_WEBHOOK_SECRET") as info:
        factory(settings)
    assert "c2hvcnQ" not in str(info.value)
    monkeypatch.setenv("ACME_SECRET", SECRET)
    assert standard_webhook("acme", mapping, secret_env="ACME_SECRET")(settings) is not None


def test_the_factory_reads_the_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv("OPRUNNER_LEDGER_WEBHOOK_SECRET", raising=False)
    (tmp_path / ".env").write_text(f"OPRUNNER_LEDGER_WEBHOOK_SECRET={SECRET}\n")
    monkeypatch.chdir(tmp_path)
    assert standard_webhook("ledger", mapping)(Settings()) is not None


# -- generated input --------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
header_names = st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature", "Webhook-Id", "x"])


def _outcome(body: bytes, headers: Mapping[str, str]) -> Any:
    try:
        verified = SOURCE.verify(body, headers)
    except WebhookRejected as exc:
        assert exc.reason
        return exc
    assert isinstance(verified, VerifiedEvent)
    assert "\x00" not in verified.id and len(verified.id) <= 248 and verified.type
    mapped = SOURCE.map(verified)
    assert mapped is None or mapped.op == "ledger.deposit"
    return mapped


@given(st.binary(max_size=2048), st.dictionaries(header_names, st.text(max_size=300), max_size=5))
def test_arbitrary_bodies_and_headers_are_only_rejected(body: bytes, headers: dict[str, str]) -> None:
    assert isinstance(_outcome(body, headers), WebhookRejected)


@given(
    st.binary(max_size=512),
    st.text(max_size=40),
    st.text(max_size=30),
    st.text(max_size=400),
)
def test_arbitrary_header_values_next_to_a_real_signature_are_only_rejected(
    body: bytes, msg_id: str, stamp: str, extra: str
) -> None:
    good = sign(body)
    for headers in (
        {**good, "webhook-id": msg_id},
        {**good, "webhook-timestamp": stamp},
        {**good, "webhook-signature": extra},
        {**good, "webhook-signature": good["webhook-signature"] + " " + extra},
    ):
        _outcome(body, headers)  # verified or rejected, never anything else


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["ledger.credit.requested", "other"]) | json_values,
            "timestamp": json_values,
            "data": st.fixed_dictionaries({}, optional={"accountId": json_values, "amount": json_values})
            | json_values,
        },
    )
    | json_values,
    st.text(min_size=1, max_size=60),
)
def test_signed_arbitrary_events_verify_and_map_or_are_rejected(payload: Any, msg_id: str) -> None:
    body = json.dumps(payload).encode()  # the stdlib encoder: big ints and lone surrogates too
    _outcome(body, sign(body, msg_id.strip() or "m"))


@given(st.binary(max_size=256), st.integers(min_value=-(10**12), max_value=10**12))
def test_timestamps_far_from_now_are_rejected(body: bytes, offset: int) -> None:
    if abs(offset) > 302:
        assert isinstance(_outcome(body, sign(body, at=max(0, int(time.time()) + offset))), WebhookRejected)
