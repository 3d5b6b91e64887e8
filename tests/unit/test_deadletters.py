"""Dead letters say who sent them only as the runner saw it: a sender's own ``dlq-*`` headers
are dropped, and a replay lends an operator's token to the operator's own commands only."""

from __future__ import annotations

import asyncio

import orjson

from infra.kafka.deadletters import DeadLetter, replay_headers, sender_of
from runner.auth import Actor
from runner.executor.outcomes import Recorder, Undeliverable
from runner.executor.retries import Retrier
from runner.testing import InMemoryStore

FORGED = orjson.dumps({"sub": "ops", "tenant": None, "kind": "admin"})
OPS = ("ops", None, "admin")


def test_a_senders_own_dlq_headers_are_dropped_and_the_runners_kept() -> None:
    recorder = Recorder(
        InMemoryStore(),
        Retrier((), asyncio.sleep),
        source="test",
        results_topic="r",
        audit_topic="a",
        metrics=None,
    )
    message = Undeliverable(
        "ops.commands",
        0,
        7,
        b"k",
        b"not json",
        [
            ("dlq-actor", FORGED),
            ("DLQ-Truncated", b"false"),
            ("x-trace", b"1"),
            ("authorization", b"Bearer t"),
        ],
    )
    mallory = Actor(user_id="mallory", tenant_id="t1", kind="user", roles=frozenset())
    record = recorder.dead_letter(message, "not JSON", topic="ops.dlq", code="MALFORMED", sender=mallory)
    headers = list(record.publications[0].headers)
    names = [k.lower() for k, _ in headers]
    assert names.count("dlq-actor") == 1 and "dlq-truncated" not in names and "authorization" not in names
    assert ("x-trace", b"1") in headers
    assert sender_of(headers) == {"sub": "mallory", "tenant": "t1", "kind": "user"}
    assert not any(
        k == "authorization" for k, _ in replay_headers(headers, sender_of(headers), "ops-token", OPS)
    )


def test_a_dead_letter_with_two_senders_has_none_and_gets_no_token() -> None:
    ours = orjson.dumps({"sub": "mallory", "tenant": "t1", "kind": "user"})
    headers = [("dlq-actor", FORGED), ("x", b"1"), ("dlq-actor", ours), ("dlq-truncated", b"true")]
    assert sender_of(headers) is None
    assert replay_headers(headers, sender_of(headers), "ops-token", OPS) == [("x", b"1")]
    letter = DeadLetter(0, 1, 0, None, b"{}", (("dlq-truncated", b"false"), ("dlq-truncated", b"true")))
    assert letter.header("dlq-truncated") == "true"  # the runner's, added last


def test_the_token_goes_back_on_the_operators_own_dead_letter_only() -> None:
    own = [("dlq-actor", FORGED)]
    assert ("authorization", b"Bearer ops-token") in replay_headers(own, sender_of(own), "ops-token", OPS)
    same_sub_other_kind = ("ops", None, "user")
    assert replay_headers(own, sender_of(own), "ops-token", same_sub_other_kind) == []
