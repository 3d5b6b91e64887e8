"""Spans: a command continues the trace it arrived with, and its events pass the trace on."""

from __future__ import annotations

from dataclasses import replace

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runner import command
from runner.observability import configure_tracing

from .conftest import GOOD, App

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    with pytest.MonkeyPatch.context() as env:
        env.delenv("OTEL_TRACES_SAMPLER", raising=False)
        configure_tracing()
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def test_a_sampled_trace_gets_the_commands_span(app: App, spans: InMemorySpanExporter) -> None:
    spans.clear()
    parent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    traced = replace(command("docs.pay", GOOD, id="traced"), traceparent=parent)
    out = await app.executor.execute(traced, token=app.token())
    [span] = spans.get_finished_spans()
    assert span.name == "oprunner docs.pay" and span.attributes is not None
    assert span.attributes["oprunner.status"] == "succeeded"
    assert span.attributes["messaging.message.id"] == "traced"
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert out.result["traceparent"] == f"00-{TRACE_ID}-{span.context.span_id:016x}-01"
    assert dict(out.publications[0].headers)["traceparent"] == out.result["traceparent"].encode()


async def test_an_unsampled_command_records_no_span_but_passes_a_trace_on(
    app: App, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    out = await app.executor.execute(command("docs.pay", GOOD, id="untraced"), token=app.token())
    assert spans.get_finished_spans() == ()
    version, trace_id, span_id, flags = out.result["traceparent"].split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16
    assert int(flags, 16) & 1 == 0  # not sampled: a subscriber need not record its part either


@pytest.mark.parametrize(
    ("traceparent", "continues"),
    [
        (None, False),
        (f"00-{TRACE_ID}-00f067aa0ba902b7-00", True),  # the producer did not sample: continue, unrecorded
        (f"00-{'0' * 32}-00f067aa0ba902b7-00", False),  # an invalid trace id: a new trace
        (f"00-{TRACE_ID}-{'0' * 16}-00", False),  # an invalid parent span id: a new trace
        ("01-not-a-traceparent", False),
    ],
)
def test_an_unsampled_span_is_what_the_sdk_would_make(
    spans: InMemorySpanExporter, traceparent: str | None, continues: bool
) -> None:
    """``start_span`` skips the SDK for spans its sampler drops; what it makes must be the same:
    not recording, not sampled, the parent's trace when there is a valid one, a new span id."""
    from opentelemetry.trace import NonRecordingSpan

    from runner import observability

    assert observability._drop_unsampled  # configure_tracing installed its own sampler
    ours = observability.start_span("docs.pay", "c1", "c1", traceparent)
    observability._drop_unsampled = False
    try:
        sdks = observability.start_span("docs.pay", "c1", "c1", traceparent)
    finally:
        observability._drop_unsampled = True
    for span in (ours, sdks):
        context = span.get_span_context()
        assert isinstance(span, NonRecordingSpan) and not span.is_recording()
        assert context.is_valid and not context.trace_flags.sampled and not context.is_remote
        assert (f"{context.trace_id:032x}" == TRACE_ID) is continues
    assert ours.get_span_context().span_id != sdks.get_span_context().span_id


def test_a_sampled_parent_still_goes_through_the_sdk(spans: InMemorySpanExporter) -> None:
    from runner import observability

    span = observability.start_span("docs.pay", "c1", "c1", f"00-{TRACE_ID}-00f067aa0ba902b7-01")
    assert span.is_recording() and span.get_span_context().trace_flags.sampled
    span.end()
