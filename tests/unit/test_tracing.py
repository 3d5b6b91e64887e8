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
