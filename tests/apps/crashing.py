"""The ledger app in a ``serve`` that SIGKILLs itself at one gap between the steps of a Kafka
command (DESIGN.md, steps 5-9), chosen by ``OPRUNNER_TEST_CRASH_AT``:

* ``after-commit``: a batch's outcomes are committed, their events not yet published;
* ``after-publish``: its events are acknowledged by the broker, its offsets not committed;
* ``in-transaction`` (``OPRUNNER_KAFKA_EXACTLY_ONCE``): a partition's events are written in
  its open transaction, which neither commits their offset nor itself;
* ``in-handler``: not a gap but the crash budget: ``ledger.credit`` of amount 66 kills the
  process every time it runs, however often it is redelivered;
* ``hold``: not a crash but a claim held open: ``ledger.credit`` of amount 77 touches the
  file ``OPRUNNER_TEST_HOLD_FILE`` and sleeps 3 s inside its batch's transaction (the test
  kills a process meanwhile).

The gaps are taken once, after ``OPRUNNER_TEST_CRASH_AFTER`` batches (default 2) went
through whole. Patched from here, in the test's serve process only: the engine has no hook."""

from __future__ import annotations

import asyncio
import os
import signal
from decimal import Decimal
from pathlib import Path
from typing import Any

from infra.kafka.consumer import CommandConsumer
from infra.kafka.publisher import KafkaPublisher
from runner import OperationContext, OperationRegistry, install_op
from tests.apps.ledger import Credit, CreditInput, CreditOutput, credit, load_account

AT = os.environ.get("OPRUNNER_TEST_CRASH_AT", "")
AFTER = int(os.environ.get("OPRUNNER_TEST_CRASH_AFTER", "2"))
_through = [0]


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


_published = CommandConsumer._published


async def _published_then_maybe_die(self: CommandConsumer, unacked: Any) -> bool:
    due = bool(unacked) and _through[0] >= AFTER
    if due and AT == "after-commit":
        _die()
    acked = await _published(self, unacked)
    if due and acked and AT == "after-publish":
        _die()
    _through[0] += bool(unacked)
    return acked


CommandConsumer._published = _published_then_maybe_die  # type: ignore[method-assign]

_send_batched = KafkaPublisher.send_batched


async def _sent_then_maybe_die(self: KafkaPublisher, producer: Any, publications: Any) -> Any:
    futures = await _send_batched(self, producer, publications)
    transactional = getattr(getattr(producer, "_txn_manager", None), "transactional_id", None)
    if AT == "in-transaction" and transactional and publications:
        if _through[0] >= AFTER:
            await asyncio.gather(*futures)  # the broker holds them, in the open transaction
            _die()
        _through[0] += 1
    return futures


KafkaPublisher.send_batched = _sent_then_maybe_die  # type: ignore[method-assign]


async def credit_or_die(value: CreditInput, ctx: OperationContext) -> CreditOutput:
    if AT == "in-handler" and value.amount == Decimal(66):
        _die()
    if AT == "hold" and value.amount == Decimal(77):
        Path(os.environ["OPRUNNER_TEST_HOLD_FILE"]).touch()  # noqa: ASYNC240 (a test's marker)
        await asyncio.sleep(3)
    return await credit(value, ctx)


registry = OperationRegistry()
install_op(registry, Credit, credit_or_die)
registry.add_resource("account", load_account)
