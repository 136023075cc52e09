"""Publishing events to Kafka, traced.

Every publish is a PRODUCER span, a child of the context the event was created in (the
request that wrote it to the outbox), and the span's own context travels in the record
headers so the consumer's span continues the same trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.kit.events import EventEnvelope, context_of_envelope, record_headers

_tracer = trace.get_tracer("services.kit.kafka")


def messaging_attributes(topic: str, operation: str, key: str = "", event_id: str = "") -> dict[str, str]:
    """OpenTelemetry messaging semantic-convention attributes for Kafka."""
    attributes = {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.type": operation,
    }
    if key:
        attributes["messaging.kafka.message.key"] = key
    if event_id:
        attributes["messaging.message.id"] = event_id
    return attributes


def new_producer(bootstrap: str, client_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        request_timeout_ms=10_000,
    )


class EventProducer:
    """Sends envelopes (and raw records, for dead letters) to Kafka and waits for the ack."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer

    async def publish(self, topic: str, envelope: EventEnvelope) -> None:
        await self.publish_many(topic, [envelope])

    async def publish_many(self, topic: str, envelopes: Sequence[EventEnvelope]) -> None:
        """Publish in order; returns once every record is acknowledged by the broker.

        Each record's span lasts from send to acknowledgement."""
        in_flight: list[tuple[Span, asyncio.Future[RecordMetadata]]] = []
        try:
            for envelope in envelopes:
                origin = context_of_envelope(envelope)
                span = _tracer.start_span(
                    f"publish {topic}",
                    context=origin,
                    kind=SpanKind.PRODUCER,
                    attributes={
                        **messaging_attributes(topic, "publish", envelope.partition_key, envelope.event_id),
                        "event.type": envelope.event_type,
                    },
                )
                carrier: dict[str, str] = {}
                propagate.inject(carrier, context=trace.set_span_in_context(span, origin))
                delivery = await self.producer.send(
                    topic,
                    value=envelope.SerializeToString(),
                    key=envelope.partition_key.encode(),
                    headers=record_headers(envelope, carrier),
                )
                in_flight.append((span, delivery))
            for span, delivery in in_flight:
                metadata = await delivery
                span.set_attribute("messaging.destination.partition.id", str(metadata.partition))
                span.set_attribute("messaging.kafka.offset", metadata.offset)
        except Exception as error:
            for span, _ in in_flight:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, str(error)))
            raise
        finally:
            for span, _ in in_flight:
                span.end()

    async def send_raw(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        await self.producer.send_and_wait(topic, value=value, key=key, headers=list(headers))
