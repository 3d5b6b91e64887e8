"""What an operator sees: Prometheus metrics, OpenTelemetry spans, JSON logs.

Metrics live in their own registry (one per process; ``/metrics`` serves it). Spans use the
OpenTelemetry API: each command's span continues the ``traceparent`` that arrived with it,
and the result and audit events carry the span's own ``traceparent`` on (as a header and as
the CloudEvents tracing extension), so a trace runs from producer to subscriber. Without an
SDK configured the API creates no spans but still passes the incoming context on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import sys
import traceback
from collections.abc import Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import _json

tracer = trace.get_tracer("oprunner")


def _across_workers() -> bool:
    """Whether metrics live in files shared by a supervisor's workers (``serve --workers``)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    """The runner's Prometheus metrics, in a registry of their own. Gauges say how workers'
    values combine (``multiprocess_mode``), which only ``serve --workers`` uses."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.commands = Counter(
            "oprunner_commands", "Commands by operation and outcome", ["op", "status"], registry=self.registry
        )
        self.handler_seconds = Histogram(
            "oprunner_handler_seconds",
            "Handler run time",
            ["op"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.retries = Counter(
            "oprunner_retries", "Attempts retried after a transient error", ["op"], registry=self.registry
        )
        self.dead_letters = Counter(
            "oprunner_dead_letters", "Messages sent to the dead-letter topic", registry=self.registry
        )
        self.in_flight = Gauge(
            "oprunner_in_flight",
            "Commands fetched and not yet finished",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.outbox_backlog = Gauge(
            "oprunner_outbox_backlog",
            "Outbox rows not yet published",
            registry=self.registry,
            multiprocess_mode="livemax",  # every worker counts the same table
        )
        self.batches = Counter("oprunner_batches", "Batches run in one transaction", registry=self.registry)
        self.parked = Counter(
            "oprunner_parked",
            "Commands dead-lettered after failing past their retry budget",
            registry=self.registry,
        )
        self.consumer_lag = Gauge(
            "oprunner_consumer_lag",
            "Messages in a partition past what this process has committed",
            ["topic", "partition"],
            registry=self.registry,
            multiprocess_mode="livesum",  # a partition is one worker's at a time
        )
        self.webhook_deliveries = Counter(
            "oprunner_webhook_deliveries",
            "Webhook deliveries by provider and outcome (accepted, duplicate, ignored, rejected, "
            "unavailable)",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.oldest_unfinished = Gauge(
            "oprunner_oldest_unfinished_seconds",
            "Age of the oldest fetched command whose outcome is not yet durable",
            registry=self.registry,
            multiprocess_mode="livemax",
        )

        self.stage_seconds = Histogram(
            "oprunner_stage_seconds",
            "Time a batch of commands spends in each stage, from produced to published",
            ["stage"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self._stages: dict[str, Any] = {}

    def forget_partition(self, topic: str, partition: int) -> None:
        """A partition this process no longer owns: its lag series goes. Under ``serve
        --workers`` a series cannot be removed (prometheus_client keeps it in the worker's
        file), so it reads 0 there, or the new owner's lag would be added to a stale one."""
        if _across_workers():
            self.consumer_lag.labels(topic, str(partition)).set(0)
            return
        with contextlib.suppress(KeyError):
            self.consumer_lag.remove(topic, str(partition))

    def stage(self, name: str, seconds: float) -> None:
        """One batch's time in stage ``name`` (STAGES lists them, in pipeline order)."""
        child = self._stages.get(name)
        if child is None:
            child = self._stages[name] = self.stage_seconds.labels(name)
        child.observe(seconds)

    def render(self) -> bytes:
        """This process's metrics; under ``serve --workers`` (``PROMETHEUS_MULTIPROC_DIR`` set
        by the supervisor) every live worker's, summed, whichever worker the scrape reached."""
        if _across_workers():
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(merged))
        return bytes(generate_latest(self.registry))


STAGES = ("queued", "parse", "admit", "claim", "run", "commit", "publish_wait", "publish", "transaction")
"""A batch's way through the runner: ``queued`` from its oldest command's produce time (the
producer's timestamp) to its batch starting, which holds the broker's hop and any wait for a
batch slot; ``parse``; ``admit`` (validate, authenticate, authorize); ``claim``; ``run`` (the
handlers); ``commit`` (outcomes written, transaction committed); ``publish_wait`` (queued
behind other publishes); ``publish`` (sent and acknowledged); in exactly-once mode, instead
of the last two, ``transaction``: from the batch's end until a transaction round committed
its events and offset (the watermark's wait included), counted once per partition the
batch held."""


_drop_unsampled = False
"""True once ``configure_tracing`` installed its own sampler (record a span only when the
trace it continues was sampled): ``start_span`` then builds the non-recording span of an
unsampled command itself, as the SDK would, without the SDK's sampler and span machinery
(~12 µs of a command's CPU)."""

_PARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def _unrecorded(traceparent: str | None) -> Span | None:
    """The span the SDK would make for a command its sampler drops: the parent's trace (or a
    new one), a new span id, not sampled. None when the parent was sampled (record it)."""
    parent = _PARENT.fullmatch(traceparent) if traceparent else None
    trace_id = int(parent.group(1), 16) if parent else 0
    if parent and trace_id and int(parent.group(2), 16):
        if int(parent.group(3), 16) & 1:
            return None
    else:  # no usable parent: a new trace, which the parent-based sampler does not record
        trace_id = 0
    while not trace_id:
        trace_id = random.getrandbits(128)
    span_id = 0
    while not span_id:
        span_id = random.getrandbits(64)
    return NonRecordingSpan(SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(0)))


def start_span(op: str, command_id: str, correlation_id: str, traceparent: str | None) -> Span:
    """A span for one command, child of the producer's span when it sent a ``traceparent``."""
    if _drop_unsampled and (span := _unrecorded(traceparent)) is not None:
        return span
    parent = propagate.extract({"traceparent": traceparent}) if traceparent else None
    return tracer.start_span(
        f"oprunner {op}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation": "process",
            "messaging.message.id": command_id,
            "oprunner.operation": op,
            "oprunner.correlation_id": correlation_id,
        },
    )


def traceparent_of(span: Span) -> str | None:
    """The ``traceparent`` to put on what this span produces (W3C Trace Context, written out
    directly: the propagator API does the same for 4x the cost)."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def end_span(span: Span, status: str, error_code: str | None) -> None:
    span.set_attribute("oprunner.status", status)
    if error_code:
        span.set_attribute("oprunner.error_code", error_code)
    if status == "failed":
        span.set_status(Status(StatusCode.ERROR, error_code or "failed"))
    span.end()


def configure_tracing() -> None:
    """Install the OpenTelemetry SDK's tracer provider (real span ids) when none is set.
    Exporters are the deployment's choice: add one to ``trace.get_tracer_provider()``.

    Sampling follows ``OTEL_TRACES_SAMPLER`` when it is set. Otherwise a command's span is
    recorded when its producer sampled the trace it continues (``traceparent`` flag ``01``)
    and not when it starts a trace: recording a span costs ~15 µs, 3% of a command, wasted
    on traces nobody collects. Unrecorded spans still get their own span id and pass the
    trace on."""
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
    except ImportError:
        return
    global _drop_unsampled
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        own = not os.environ.get("OTEL_TRACES_SAMPLER")
        trace.set_tracer_provider(TracerProvider(sampler=ParentBased(ALWAYS_OFF) if own else None))
        _drop_unsampled = own


# Characters that never reach a log line or a terminal as they are: C0 controls (CR, LF,
# ESC, BEL...), DEL, C1 controls (NEL, CSI...), the Unicode line and paragraph separators, the
# bidi embeddings, overrides and isolates (which reorder what is shown), and lone surrogates
# (which no encoder writes). Any of them lets a value end a line, forge the next one, drive
# the terminal or hide what it says.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible_char(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape_controls(text: str) -> str:
    """``text`` with every control character (see ``_CONTROL``) written out as a visible
    escape (``\\n``, ``\\x1b``, ``\\u2028``), so it shows as one inert line; other text,
    accents, CJK and emoji included, is left as it is."""
    return _CONTROL.sub(_visible_char, text)


def _json_escape_char(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


# Attributes a LogRecord has of its own; anything else on it came from ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
# What every line says first; ``extra=`` cannot replace them.
_CORE = {"time", "level", "logger", "message", "error", "stack", "stack_info"}
_STACK_CHARS = 4000


def _kind(error: type[BaseException] | BaseException) -> str:
    cls = error if isinstance(error, type) else type(error)
    return str(getattr(cls, "__name__", "Exception"))


class _Redacted:
    """What a log line shows of an exception passed as an argument: its type, never its
    message (which may quote input)."""

    __slots__ = ("text",)

    def __init__(self, error: BaseException) -> None:
        self.text = _kind(error)

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(self.text, spec)


def _redact(value: Any, depth: int = 0) -> Any:
    """``value`` with the exceptions in it (also inside lists, tuples, sets and dicts, a few
    levels down) replaced by their type."""
    if isinstance(value, BaseException):
        return _Redacted(value)
    if depth >= 4:
        return value
    if type(value) in (list, tuple, set, frozenset):
        return type(value)(_redact(v, depth + 1) for v in value)
    if type(value) is dict:
        return {k: _redact(v, depth + 1) for k, v in value.items()}
    return value


def _message(record: logging.LogRecord) -> str:
    """``record.getMessage()`` with exceptions among the arguments (or as the message)
    written as their type. Arguments that do not fit the format leave the format alone
    (logging would otherwise print them raw to stderr)."""
    msg = _redact(record.msg)
    try:
        template = str(msg)
    except Exception:
        return f"(unprintable {type(record.msg).__name__} message)"
    args = record.args
    if not args:
        return template
    redacted = {k: _redact(v) for k, v in args.items()} if isinstance(args, Mapping) else _redact(tuple(args))
    try:
        return template % redacted
    except Exception:
        return f"{template} (log arguments did not fit the format)"


def _value(value: Any) -> str | int | float | bool | None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        value = str(value) if value.bit_length() < 10_000 else f"({value.bit_length()}-bit int)"
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    try:
        return str(_redact(value))
    except Exception:
        return f"(unprintable {type(value).__name__})"


def _scrubbed(record: logging.LogRecord) -> dict[str, Any]:
    """What may be logged of ``record``, the one place both formatters take it from: the
    message (exceptions among its arguments written as their type), the ``extra=`` fields,
    and for an exception its type and traceback frames, never its message (which may quote
    input values), nor the messages of the exceptions it was raised from. Values are not yet
    escaped: each formatter escapes them for its own output."""
    fields: dict[str, Any] = {"message": _message(record)}
    for key, value in record.__dict__.items():
        if key not in _STANDARD and key not in _CORE and not key.startswith("_"):
            fields[key] = _value(value)
    exc_info = record.exc_info
    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if isinstance(exc_info, tuple) and len(exc_info) == 3 and exc_info[0] is not None:
        kind, _, tb = exc_info
        fields["error"] = _kind(kind)
        # the frames (file, line, function, source line) without the exception's message
        fields["stack"] = "".join(traceback.format_tb(tb))[-_STACK_CHARS:]
    if record.stack_info:
        fields["stack_info"] = str(record.stack_info)[-_STACK_CHARS:]
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the ``extra=`` fields (among
    them the command's ids, ``command_id``, ``correlation_id`` and ``op``, when the record
    carries them), ``error`` and ``stack`` for an exception, ``stack_info`` when asked for.
    Control characters are JSON escapes (``\\u2028``), so the line is one line to every
    reader."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            **_scrubbed(record),
        }
        # JSON encoders escape C0 controls only; the rest of the set gets \\uXXXX too (raw
        # they can only be inside strings, so the escape means the same character)
        return _CONTROL.sub(_json_escape_char, _json.dumps(entry).decode())


def _text_field(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if text == "" or '"' in text or "=" in text or any(c.isspace() for c in text):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return escape_controls(text)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value...``: what the JSON formatter writes, as one
    line of text. Control characters in any field are visible escapes (``\\n``, ``\\x1b``),
    so a record is always exactly one line; values with spaces, quotes or ``=`` are quoted."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _scrubbed(record)
        head = f"{self.formatTime(record)} {record.levelname} {record.name}: {fields.pop('message')}"
        parts = [escape_controls(head)]
        parts.extend(f"{escape_controls(key)}={_text_field(value)}" for key, value in fields.items())
        return " ".join(parts)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    def handleError(self, record: logging.LogRecord) -> None:
        """Report a record that could not be written by its logger and the error's type, not
        (as logging does) with its message and arguments raw on stderr."""
        try:
            kind = _kind(sys.exc_info()[1] or Exception())
            sys.stderr.write(
                f"oprunner: could not write a log record of {escape_controls(record.name)}: {kind}\n"
            )
        except Exception:
            pass


def configure_logging(level: str, fmt: str = "json", *, commands: bool = False) -> None:
    """Logs to stderr at ``level``; ``commands``: one line per command outcome at INFO
    (``oprunner.commands``: operation, status, error code, duration, command id)."""
    handler = _Handler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("oprunner.commands").setLevel(logging.INFO if commands else logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
