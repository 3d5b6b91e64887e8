"""Step 7: what is recorded of an outcome, built in one place for every kind of outcome.

A result event for the caller and an audit event for the log, both as outbox rows committed
with the outcome (DESIGN.md, "Outbox"); and the dead-letter record of a message that never
became a command. What the audit keeps of the input depends on who sent it: see
``audited_input``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import _json
from ..auth import Actor
from ..envelope import AUDIT_TYPE, CONTENT_TYPE, CommandEnvelope, build_event, now_iso, visible
from ..followups import FollowUp, FollowUpWriter
from ..observability import Metrics, end_span
from ..store import OutcomeRecord, Publication, Store
from .calls import AuditDecision, Call, Outcome, Status, Verdict
from .retries import Retrier

_commands = logging.getLogger("oprunner.commands")

MAX_MESSAGE = 500
"""An error message is cut to this: it may name what a caller sent (field names, reasons),
and what any caller can make long must stay small where it is kept."""

MAX_AUDIT_REASON = 200
MAX_AUDIT_INPUT = 64 * 1024

MAX_DLQ_VALUE = 512 * 1024
"""By default a dead letter keeps at most this much of the message (the rest is counted in a
header), so it fits a Kafka message with room to spare for its headers."""


def error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """An outcome's ``error``: a code from the spec (or the runner's own) and a short message."""
    return {"code": code, "message": cut(message), **extra}


def cut(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bounded(value: Any) -> Any:
    """The audit's copy of an input, or a note of its size when it is too large to carry."""
    size = len(_json.dumps(value))
    return value if size <= MAX_AUDIT_INPUT else {"omitted": True, "bytes": size}


def withheld(data: Any, why: str) -> dict[str, Any]:
    """What the audit keeps of input it must not store: its size and digest, enough to match
    it against a copy, not enough to let an unauthenticated caller fill the audit log."""
    raw = _json.dumps(data)
    return {"omitted": True, "why": why, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def audited_input(call: Call, status: Status) -> Any:
    """The input, secrets redacted; only its size and digest when the caller was denied, or
    was turned away unauthenticated: input is recorded only for callers it was run for or
    who proved who they are."""
    if status == "denied":
        return withheld(call.command.data, "denied")
    if status == "rejected" and not call.authenticated:
        return withheld(call.command.data, "unauthenticated")
    return bounded(call.input)


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """A message that cannot become a command (or could not be run), as the broker gave it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes | None]]

    @property
    def where(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


class Recorder:
    """Builds outcome records and stores those that own no run."""

    def __init__(
        self,
        store: Store,
        retrier: Retrier,
        *,
        source: str,
        results_topic: str,
        audit_topic: str,
        metrics: Metrics | None,
        follow_ups: FollowUpWriter | None = None,
    ) -> None:
        self.follow_ups = follow_ups
        self.store = store
        self.retrier = retrier
        self.source = source
        self.results_topic = results_topic
        self.audit_topic = audit_topic
        self.metrics = metrics

    def record(
        self,
        call: Call,
        status: Status,
        decision: AuditDecision,
        data: dict[str, Any],
        attempt: int,
        *,
        replayed: bool = False,
        sent: Sequence[FollowUp] = (),
        direct: bool = False,
    ) -> OutcomeRecord:
        """The result and audit events of one outcome, as the outbox rows that carry them;
        with ``sent``, a succeeded run's follow-up commands too (``runner.followups``).
        ``direct``: the result and audit events are stored with the run instead, for the
        caller to publish (``OutcomeRecord.direct``)."""
        command, spec = call.command, call.spec
        sent = sent if status == "succeeded" else ()  # only effects that commit send anything
        version = spec.version if spec else command.opversion
        op = call.op
        stamp = now_iso()
        result = build_event(
            type=f"{op}.result", source=self.source, data=data, command=command, opversion=version, time=stamp
        )
        err = data.get("error")
        audit_data: dict[str, Any] = {
            "op": op,
            "version": version,
            "actor": call.actor.audit() if call.actor else None,
            "decision": decision,
            "status": status,
            "attempt": attempt,
            "duration_ms": round((time.monotonic() - call.started) * 1000, 3),
            "input": audited_input(call, status),
            "deprecated": bool(spec and spec.deprecated),
            "replayed": replayed,
            **({"causedBy": command.causationid} if command.causationid else {}),
            **({"followUps": [item.command.id for item in sent]} if sent else {}),  # ctx.send's
            "error": err["code"] if err else None,
            "reason": cut(err["message"], MAX_AUDIT_REASON)
            if err and status in ("denied", "rejected")
            else None,
        }
        audit = build_event(
            type=AUDIT_TYPE,
            source=self.source,
            data=audit_data,
            command=command,
            opversion=version,
            time=stamp,
        )
        key, headers = self._addressed(call)
        if call.traceparent:  # the command's span: subscribers continue the same trace
            result["traceparent"] = audit["traceparent"] = call.traceparent
        return OutcomeRecord(
            command_id=command.id,
            op=op,
            version=version,
            status=status,
            result=data,
            audit=audit_data,
            publications=(
                Publication(self.results_topic, key, _json.dumps(result), headers),
                Publication(self.audit_topic, key, _json.dumps(audit), headers),
                *self._follow_ups(call, sent),
            ),
            events=(result, audit),
            correlation_id=command.correlation_id,
            trace_id=call.traceparent.split("-")[1] if call.traceparent else None,
            direct=direct,
        )

    def _addressed(self, call: Call) -> tuple[bytes, tuple[tuple[str, bytes], ...]]:
        """The Kafka key and headers of a command's result and audit events."""
        key = (call.partition or call.command.idempotency_key).encode()
        headers: tuple[tuple[str, bytes], ...] = (("content-type", CONTENT_TYPE.encode()),)
        if call.traceparent:
            headers += (("traceparent", call.traceparent.encode()),)
        return key, headers

    def republish(self, call: Call, events: tuple[bytes, bytes]) -> Outcome:
        """A command delivered again after its run completed and stored its events: those
        events, to publish as they were (their ids and times), with nothing recorded anew."""
        result_event, audit_event = events
        key, headers = self._addressed(call)
        result, audit = _json.loads(result_event), _json.loads(audit_event)
        return Outcome(
            status=result["data"]["status"],
            result=result,
            audit=audit,
            publications=(
                Publication(self.results_topic, key, result_event, headers),
                Publication(self.audit_topic, key, audit_event, headers),
            ),
            outbox_ids=(),
            replayed=True,
            direct=True,
        )

    def _follow_ups(self, call: Call, sent: Sequence[FollowUp]) -> tuple[Publication, ...]:
        if not sent:
            return ()
        if self.follow_ups is None:  # ctx.send refuses without a signer: this is a bug
            raise RuntimeError("follow-up commands were sent, but this executor cannot sign them")
        return self.follow_ups.publications(call.op, call.actor, list(sent))

    def verdict(self, v: Verdict) -> OutcomeRecord:
        return self.record(v.call, v.status, v.decision, v.data, 0, replayed=v.replay is not None)

    async def settle(self, v: Verdict) -> Outcome:
        """Record an outcome that owns no run: a rejection, a denial or a replay."""
        record = self.verdict(v)
        ids = await self.retrier.store(lambda: self.store.record(record))
        return outcome(record, ids, replayed=v.replay is not None)

    def finish(self, call: Call, result: Outcome) -> None:
        """Close the command's span, count its outcome, and log it when ``oprunner.commands``
        logs at INFO (``dev`` does; ``OPRUNNER_LOG_COMMANDS``)."""
        if call.span is not None:
            end_span(call.span, result.status, result.error_code)
        if self.metrics is not None:
            self.metrics.commands.labels(call.spec.key if call.spec else "unknown", result.status).inc()
        if _commands.isEnabledFor(logging.INFO):
            took = (time.monotonic() - call.started) * 1000
            code = f" {result.error_code}" if result.error_code else ""
            replay = " (stored result)" if result.replayed else ""
            line = "%s %s%s %.1f ms%s [%s]"
            _commands.info(line, call.op, result.status, code, took, replay, call.command.id)

    def dead_letter(
        self,
        message: Undeliverable,
        reason: str,
        *,
        topic: str,
        code: str,
        sender: Actor | None,
        last_error: str | None = None,
        attempts: int = 0,
        max_value: int = MAX_DLQ_VALUE,
    ) -> OutcomeRecord:
        """The dead-letter message (to ``topic``, its value cut to ``max_value`` bytes) and its
        audit event, recorded through the outbox like any outcome. The token is not kept; who
        sent it is (``dlq-actor``, when it verified), so a replay can give an operator's token
        back only to that sender's commands. The sender's own ``dlq-*`` headers are dropped:
        only the runner says who sent a dead letter, and why."""
        value = message.value
        headers: tuple[tuple[str, bytes], ...] = (
            *(
                (visible(str(k)), (v or b"").replace(b"\x00", b"\\u0000"))  # storable, NUL written out
                for k, v in message.headers
                if str(k).lower() != "authorization" and not str(k).lower().startswith("dlq-")
            ),
            ("dlq-reason", reason.encode()[:1000]),
            ("dlq-code", code.encode()),
            ("dlq-topic", message.topic.encode()),
            ("dlq-partition", str(message.partition).encode()),
            ("dlq-offset", str(message.offset).encode()),
        )
        if sender is not None:
            who = {"sub": sender.user_id, "tenant": sender.tenant_id, "kind": sender.kind}
            headers += (("dlq-actor", _json.dumps(who)),)
        if last_error is not None:
            headers += (
                ("dlq-last-error", last_error.encode()[:1000]),
                ("dlq-attempts", str(attempts).encode()),
            )
        if len(value) > max_value:
            headers += (("dlq-truncated", b"true"), ("dlq-original-bytes", str(len(value)).encode()))
            value = value[:max_value]
        stub = CommandEnvelope(id=message.where, source=message.topic, type="oprunner.deadLetter", data=None)
        audit = {
            "op": None,
            "version": None,
            "actor": sender.audit() if sender is not None else None,
            "decision": "reject",
            "status": "rejected",
            "attempt": attempts,
            "duration_ms": 0,
            "input": None,
            "error": code,
            "reason": cut(reason if last_error is None else f"{reason}: {last_error}"),
            "deadLetter": message.where,
        }
        event = build_event(type=AUDIT_TYPE, source=self.source, data=audit, command=stub, opversion=None)
        return OutcomeRecord(
            command_id=message.where,
            op="",
            version=None,
            status="rejected",
            result={},
            audit=audit,
            publications=(
                Publication(topic, message.key, value, headers),
                Publication(self.audit_topic, message.key, _json.dumps(event)),
            ),
        )


def outcome(record: OutcomeRecord, ids: Any, *, replayed: bool = False) -> Outcome:
    result, audit = record.events
    return Outcome(
        status=record.status,  # type: ignore[arg-type]
        result=result,
        audit=audit,
        publications=record.publications,
        outbox_ids=tuple(ids),
        replayed=replayed,
        direct=record.direct,
    )


def exhausted(attempts: int) -> Outcome:
    """A command left unrun past the crash budget (``Outcome.exhausted``): nothing recorded,
    nothing to publish; the caller parks it."""
    message = f"{attempts - 1} attempts claimed it and never finished"
    data = {"status": "failed", "error": error("RETRIES_EXHAUSTED", message)}
    return Outcome("failed", {"data": data}, {}, (), (), exhausted=attempts)
