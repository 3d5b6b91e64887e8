"""What an operator sees: Prometheus metrics, OpenTelemetry spans, JSON logs.

Metrics live in their own registry (one per process; ``/metrics`` serves it). Spans use the
OpenTelemetry API: each command's span continues the ``traceparent`` that arrived with it,
and the result and audit events carry the span's own ``traceparent`` on (as a header and as
the CloudEvents tracing extension), so a trace runs from producer to subscriber. Without an
SDK configured the API creates no spans but still passes the incoming context on.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import _json

tracer = trace.get_tracer("oprunner")


class Metrics:
    """The runner's Prometheus metrics, in a registry of their own."""

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
            "oprunner_in_flight", "Commands fetched and not yet finished", registry=self.registry
        )
        self.outbox_backlog = Gauge(
            "oprunner_outbox_backlog", "Outbox rows not yet published", registry=self.registry
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
        )
        self.oldest_unfinished = Gauge(
            "oprunner_oldest_unfinished_seconds",
            "Age of the oldest fetched command whose outcome is not yet durable",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


def start_span(op: str, command_id: str, correlation_id: str, traceparent: str | None) -> Span:
    """A span for one command, child of the producer's span when it sent a ``traceparent``."""
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
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        sampler = None if os.environ.get("OTEL_TRACES_SAMPLER") else ParentBased(ALWAYS_OFF)
        trace.set_tracer_provider(TracerProvider(sampler=sampler))


# Attributes a LogRecord has of its own; anything else on it came from ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the command's ids
    (``command_id``, ``correlation_id``, ``op``) when the record carries them."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            kind, error, _ = record.exc_info
            entry["error"] = f"{kind.__name__ if kind else 'Exception'}"
            # the traceback, without the exception's message (it may quote input values)
            entry["stack"] = "".join(traceback.format_tb(record.exc_info[2]))[-4000:]
            del error
        return _json.dumps(entry).decode()


def configure_logging(level: str, fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
