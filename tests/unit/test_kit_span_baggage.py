"""A load run's baggage becomes span attributes in every service and goes on with every call and
event the request makes (so a run's traces can be selected end to end), and only the load keys
become attributes: a caller cannot add attributes at will."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import propagate
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.kit.events import context_of_headers
from services.kit.server import CallScope, server_span
from services.kit.telemetry import TelemetrySettings, baggage_only, continuing, tracer_provider

LOAD_BAGGAGE = "synthetic_request=true,load.run=run-7,load.scenario=search,user.email=ada%40example.com"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class CallContext:
    """What the kit's server boundary reads of a gRPC call: its metadata and peer."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("traceparent", TRACEPARENT), ("baggage", LOAD_BAGGAGE))

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5555"


@pytest.fixture
def recorded() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    provider = tracer_provider(TelemetrySettings("knowledge", "1", "test", "127.0.0.1:1", enabled=False))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def assert_load_attributes(attributes: dict[str, object]) -> None:
    assert attributes["load.run"] == "run-7"
    assert attributes["load.scenario"] == "search"
    assert attributes["synthetic_request"] == "true"
    assert "user.email" not in attributes


def test_a_calls_baggage_marks_its_server_span_its_children_and_its_outgoing_calls(
    recorded: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = recorded
    tracer = provider.get_tracer("test")
    call = CallContext()
    scope = CallScope(call, server_span(tracer, call, "knowledge.v1.KnowledgeService", "GetDocument"))  # type: ignore[arg-type]
    try:
        with tracer.start_as_current_span("SELECT"):
            outgoing: dict[str, str] = {}
            propagate.inject(outgoing)
    finally:
        scope.close()

    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"SELECT", "knowledge.v1.KnowledgeService/GetDocument"}
    for span in spans.values():
        assert_load_attributes(dict(span.attributes or {}))
    assert "load.run=run-7" in outgoing["baggage"], "the baggage must go on with the calls and events the request makes"


def test_an_events_baggage_marks_the_consumers_spans(recorded: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = recorded
    tracer = provider.get_tracer("test")
    headers = [("traceparent", TRACEPARENT.encode()), ("baggage", LOAD_BAGGAGE.encode())]
    with (
        continuing(context_of_headers(headers)),
        tracer.start_as_current_span("process knowledge.events.v1"),
        tracer.start_as_current_span("embed"),
    ):
        pass
    for span in exporter.get_finished_spans():
        assert_load_attributes(dict(span.attributes or {}))


def test_spans_without_load_baggage_get_no_load_attributes(
    recorded: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = recorded
    headers = [("traceparent", TRACEPARENT.encode()), ("baggage", b"tenant=acme")]
    with continuing(context_of_headers(headers)), provider.get_tracer("test").start_as_current_span("ListSpaces"):
        pass
    [span] = exporter.get_finished_spans()
    assert not set(span.attributes or {}) & {"load.run", "load.scenario", "synthetic_request", "tenant"}


def test_a_sessions_messages_start_traces_of_their_own_with_the_upgrades_baggage(
    recorded: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = recorded
    tracer = provider.get_tracer("test")
    upgrade = context_of_headers([("traceparent", TRACEPARENT.encode()), ("baggage", LOAD_BAGGAGE.encode())])
    with continuing(baggage_only(upgrade)), tracer.start_as_current_span("canvas move_node"):
        pass
    [span] = exporter.get_finished_spans()
    assert span.parent is None, "a message's span is the root of its own trace"
    assert_load_attributes(dict(span.attributes or {}))
