"""Platform events: building envelopes, naming topics, and carrying trace context.

Pure functions over the `events.v1.EventEnvelope` contract; the outbox, producer and consumer
build on them.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from google.protobuf.message import Message
from opentelemetry import context as otel_context
from opentelemetry import propagate

from services.api.events.v1 import envelope_pb2
from services.kit.protos import timestamp

EventEnvelope = envelope_pb2.EventEnvelope
SCHEMA_VERSION = 1
CONTENT_TYPE = "application/x-protobuf"
TRACE_HEADERS = ("traceparent", "tracestate", "baggage")

KafkaHeaders = Sequence[tuple[str, bytes]]


def topic_for(producer: str) -> str:
    """One topic per producing service (see events/v1/envelope.proto)."""
    return f"{producer}.events.v1"


def dead_letter_topic(consumer_group: str) -> str:
    """Where a consumer group parks events it cannot process."""
    return f"{consumer_group}.dead-letter.v1"


def new_envelope(
    *,
    event_type: str,
    payload: Message,
    producer: str,
    partition_key: str,
    subject_ids: Mapping[str, str],
    actor_user_id: str = "",
    occurred_at: datetime | None = None,
    event_id: str | None = None,
) -> envelope_pb2.EventEnvelope:
    """An envelope for `payload`, stamped with the current trace context."""
    occurred = timestamp(occurred_at or datetime.now(UTC))
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return envelope_pb2.EventEnvelope(
        event_id=event_id or str(uuid.uuid4()),
        event_type=event_type,
        schema_version=SCHEMA_VERSION,
        occurred_at=occurred,
        producer=producer,
        actor_user_id=actor_user_id,
        subject_ids=dict(subject_ids),
        trace=envelope_pb2.TraceContext(
            traceparent=carrier.get("traceparent", ""),
            tracestate=carrier.get("tracestate", ""),
            baggage=carrier.get("baggage", ""),
        ),
        partition_key=partition_key,
        payload=payload.SerializeToString(),
    )


def envelope_trace_carrier(envelope: envelope_pb2.EventEnvelope) -> dict[str, str]:
    trace = envelope.trace
    carrier = {"traceparent": trace.traceparent, "tracestate": trace.tracestate, "baggage": trace.baggage}
    return {key: value for key, value in carrier.items() if value}


def context_of_envelope(envelope: envelope_pb2.EventEnvelope) -> otel_context.Context:
    """The trace context the event was created in (the request that caused it)."""
    return propagate.extract(envelope_trace_carrier(envelope))


def record_headers(envelope: envelope_pb2.EventEnvelope, trace_carrier: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """Kafka headers for an envelope; `trace_carrier` is the publishing span's context."""
    headers = [
        ("event_id", envelope.event_id.encode()),
        ("event_type", envelope.event_type.encode()),
        ("content-type", CONTENT_TYPE.encode()),
    ]
    headers += [(key, trace_carrier[key].encode()) for key in TRACE_HEADERS if trace_carrier.get(key)]
    return headers


def context_of_headers(headers: KafkaHeaders | None) -> otel_context.Context:
    """The trace context a Kafka record carries in its headers."""
    carrier = {key: value.decode(errors="replace") for key, value in headers or () if key in TRACE_HEADERS}
    return propagate.extract(carrier)


def header_value(headers: KafkaHeaders | None, name: str) -> str:
    for key, value in headers or ():
        if key == name:
            return value.decode(errors="replace")
    return ""
