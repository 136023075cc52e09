"""services.kit.events: envelopes, topic names and trace context through Kafka headers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.api.events.v1 import events_pb2
from services.kit.events import (
    CONTENT_TYPE,
    SCHEMA_VERSION,
    context_of_envelope,
    context_of_headers,
    dead_letter_topic,
    envelope_trace_carrier,
    header_value,
    new_envelope,
    record_headers,
    topic_for,
)


@pytest.fixture
def tracer() -> Iterator[trace.Tracer]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    yield provider.get_tracer("unit")
    provider.shutdown()


def payload() -> events_pb2.DocumentCreated:
    return events_pb2.DocumentCreated(space_id="s1", document_id="d1", version=1, title="Notes")


def test_topic_names() -> None:
    assert topic_for("knowledge") == "knowledge.events.v1"
    assert dead_letter_topic("vector-indexer") == "vector-indexer.dead-letter.v1"


def test_new_envelope_fills_every_field(tracer: trace.Tracer) -> None:
    occurred = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    with tracer.start_as_current_span("publish") as span:
        envelope = new_envelope(
            event_type="knowledge.document.created",
            payload=payload(),
            producer="knowledge",
            partition_key="s1",
            subject_ids={"space_id": "s1", "document_id": "d1"},
            actor_user_id="u1",
            occurred_at=occurred,
        )
        ids = span.get_span_context()
    uuid.UUID(envelope.event_id)  # a UUID
    assert envelope.event_type == "knowledge.document.created"
    assert envelope.schema_version == SCHEMA_VERSION
    assert envelope.occurred_at.ToDatetime(tzinfo=UTC) == occurred
    assert envelope.producer == "knowledge"
    assert envelope.actor_user_id == "u1"
    assert dict(envelope.subject_ids) == {"space_id": "s1", "document_id": "d1"}
    assert envelope.partition_key == "s1"
    assert events_pb2.DocumentCreated.FromString(envelope.payload) == payload()
    assert envelope.trace.traceparent == f"00-{ids.trace_id:032x}-{ids.span_id:016x}-{ids.trace_flags:02x}"
    assert ids.trace_flags.sampled
    # Every field of the contract has a non-default value.
    assert {field.name for field, _ in envelope.ListFields()} == {field.name for field in envelope.DESCRIPTOR.fields}


def test_new_envelope_defaults() -> None:
    before = datetime.now(UTC)
    first = new_envelope(event_type="t", payload=payload(), producer="p", partition_key="k", subject_ids={})
    second = new_envelope(event_type="t", payload=payload(), producer="p", partition_key="k", subject_ids={})
    assert first.event_id != second.event_id
    assert first.occurred_at.ToDatetime(tzinfo=UTC) >= before.replace(microsecond=0)
    assert first.actor_user_id == ""
    assert first.trace.traceparent == ""  # no span: nothing to carry


def test_explicit_event_id_is_kept() -> None:
    envelope = new_envelope(
        event_type="t", payload=payload(), producer="p", partition_key="k", subject_ids={}, event_id="fixed-id"
    )
    assert envelope.event_id == "fixed-id"


def test_envelope_carries_baggage(tracer: trace.Tracer) -> None:
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with tracer.start_as_current_span("publish"):
            envelope = new_envelope(event_type="t", payload=payload(), producer="p", partition_key="k", subject_ids={})
    finally:
        otel_context.detach(token)
    assert envelope.trace.baggage == "tenant=acme"
    restored = context_of_envelope(envelope)
    assert baggage.get_baggage("tenant", restored) == "acme"


def test_context_of_envelope_restores_the_span(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("publish") as span:
        envelope = new_envelope(event_type="t", payload=payload(), producer="p", partition_key="k", subject_ids={})
    parent = trace.get_current_span(context_of_envelope(envelope)).get_span_context()
    assert parent.trace_id == span.get_span_context().trace_id
    assert parent.span_id == span.get_span_context().span_id
    assert parent.is_remote
    assert envelope_trace_carrier(envelope) == {"traceparent": envelope.trace.traceparent}


def test_record_headers_and_context_round_trip(tracer: trace.Tracer) -> None:
    envelope = new_envelope(
        event_type="auth.user.signed_up", payload=payload(), producer="auth", partition_key="u", subject_ids={}
    )
    with tracer.start_as_current_span("send") as span:
        ids = span.get_span_context()
        carrier = {"traceparent": f"00-{ids.trace_id:032x}-{ids.span_id:016x}-01"}
        headers = record_headers(envelope, {**carrier, "tracestate": "", "unrelated": "x"})
    assert headers == [
        ("event_id", envelope.event_id.encode()),
        ("event_type", b"auth.user.signed_up"),
        ("content-type", CONTENT_TYPE.encode()),
        ("traceparent", carrier["traceparent"].encode()),
    ]
    restored = trace.get_current_span(context_of_headers(headers)).get_span_context()
    assert restored.trace_id == span.get_span_context().trace_id
    assert restored.span_id == span.get_span_context().span_id
    assert header_value(headers, "event_type") == "auth.user.signed_up"
    assert header_value(headers, "missing") == ""


def test_context_of_headers_without_trace_is_empty() -> None:
    for headers in (None, [], [("event_id", b"1")], [("traceparent", b"\xff\xfe garbage")]):
        assert not trace.get_current_span(context_of_headers(headers)).get_span_context().is_valid
