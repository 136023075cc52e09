"""Consuming platform events in bulk, for a sink that writes many events at once and
deduplicates them by event id itself (the activity service's ClickHouse).

Each fetch (up to `max_batch` records from any partitions) becomes one call of the handler.
Undecodable envelopes are dead-lettered before it; the events the handler rejects as never
processable are dead-lettered after it. When the handler fails (the store is down) the same
batch is retried with capped backoff, for as long as it takes: a store outage is not poison,
and nothing is skipped. Offsets are committed only after the handler returned, i.e. after the
batch is durable, at most once per `commit_interval_s` and when the consumer stops; a crash
re-delivers what was handled since the last commit, which the sink's deduplication absorbs.

Subscribing by pattern (`topic_pattern`) includes topics created later: the group picks them
up when its metadata refreshes (`metadata_max_age_ms`) and reads them from their start.

Tracing: a record that carries a trace context gets a "process <topic>" span in the
producer's trace, open while its batch is handled; the handler receives each event with that
span's context so its own work (the insert) joins the same trace. A record without trace
context gets no span of its own: a batch of anonymous events must not become thousands of
root traces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from aiokafka import ConsumerRecord, TopicPartition
from google.protobuf.message import DecodeError
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.kit.consumer import ConsumerStats, dead_letter, group_consumer, wait_assigned
from services.kit.events import EventEnvelope, context_of_headers
from services.kit.kafka import EventProducer, messaging_attributes

log = logging.getLogger("services.kit.batch_consumer")
_tracer = trace.get_tracer("services.kit.batch_consumer")
EMPTY_CONTEXT = Context()


@dataclass(frozen=True)
class ConsumedEvent:
    envelope: EventEnvelope
    topic: str
    # The context the handler's work for this event belongs to: its "process" span's, or the
    # producer's when the record came without one (then it is empty).
    context: Context


@dataclass(frozen=True)
class Rejected:
    """An event the handler can never process, and why: it goes to the dead-letter topic."""

    event: ConsumedEvent
    reason: str


BatchHandler = Callable[[Sequence[ConsumedEvent]], Awaitable[Sequence[Rejected]]]


class BatchEventConsumer:
    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        handler: BatchHandler,
        producer: EventProducer,
        topics: Sequence[str] = (),
        topic_pattern: str = "",
        max_batch: int = 20_000,
        pipeline_depth: int = 2,
        commit_interval_s: float = 1.0,
        max_retry_delay_s: float = 10.0,
        metadata_max_age_ms: int = 30_000,
        start_from: Literal["earliest", "latest"] = "earliest",
    ) -> None:
        if bool(topics) == bool(topic_pattern):
            raise ValueError("give either topics or a topic_pattern")
        self.group_id = group_id
        self.handler = handler
        self.producer = producer
        self.max_batch = max_batch
        self.pipeline_depth = pipeline_depth
        self.commit_interval_s = commit_interval_s
        self.max_retry_delay_s = max_retry_delay_s
        self.stats = ConsumerStats()
        self.consumer = group_consumer(
            bootstrap,
            group_id,
            start_from,
            metadata_max_age_ms=metadata_max_age_ms,
            # A whole batch may be fetched at once (the default stops at 50 MiB anyway).
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        if topic_pattern:
            self.consumer.subscribe(pattern=topic_pattern)
        else:
            self.consumer.subscribe(topics=list(topics))

    async def start(self) -> None:
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()

    async def wait_assigned(self, timeout_s: float = 15.0) -> None:
        await wait_assigned(self.consumer, timeout_s)

    async def run(self) -> None:
        """Consume until cancelled.

        Up to `pipeline_depth` batches are handled at once: the next fetch is decoded while the
        last one is being written. Their offsets are taken in fetch order, each only once its
        batch and every batch before it are done."""
        handled: dict[TopicPartition, int] = {}
        in_flight: deque[tuple[asyncio.Task[None], dict[TopicPartition, int]]] = deque()
        last_commit = 0.0
        try:
            while True:
                fetched = await self.consumer.getmany(timeout_ms=200, max_records=self.max_batch)
                records = [record for batch in fetched.values() for record in batch]
                if records:
                    offsets = {partition: batch[-1].offset + 1 for partition, batch in fetched.items()}
                    in_flight.append((asyncio.create_task(self.handle(records)), offsets))
                while in_flight and (in_flight[0][0].done() or len(in_flight) >= self.pipeline_depth):
                    task, offsets = in_flight.popleft()
                    await task
                    handled.update(offsets)
                if handled and time.monotonic() - last_commit >= self.commit_interval_s:
                    await self.consumer.commit(handled)
                    handled, last_commit = {}, time.monotonic()
        finally:
            for task, _ in in_flight:  # not durable: their records come again after a restart
                task.cancel()
            await asyncio.gather(*(task for task, _ in in_flight), return_exceptions=True)
            if handled:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.consumer.commit(handled), timeout=5)

    async def handle(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Hand the batch's decodable events to the handler until it succeeds; dead-letter the rest."""
        events: list[ConsumedEvent] = []
        spans: list[trace.Span] = []
        record_of: dict[int, ConsumerRecord[bytes, bytes]] = {}
        for record in records:
            try:
                envelope = EventEnvelope.FromString(record.value or b"")
            except DecodeError as error:
                await self.park(record, f"undecodable envelope: {error}")
                continue
            context, span = self.process_span(record, envelope)
            if span is not None:
                spans.append(span)
            event = ConsumedEvent(envelope, record.topic, context)
            record_of[id(event)] = record
            events.append(event)
        try:
            rejected = await self.handle_until_done(events)
            for refusal in rejected:
                span = trace.get_current_span(refusal.event.context)
                span.set_status(Status(StatusCode.ERROR, refusal.reason))
                span.set_attribute("event.dead_lettered", True)
                await self.park(record_of[id(refusal.event)], f"rejected by handler: {refusal.reason}")
            self.stats.processed += len(events) - len(rejected)
        finally:
            for span in spans:
                span.end()

    async def handle_until_done(self, events: Sequence[ConsumedEvent]) -> Sequence[Rejected]:
        delay = 0.2
        while True:
            try:
                return await self.handler(events)
            except Exception as error:
                log.warning(
                    "a batch of %d events failed, retrying in %.1f s (offsets stay uncommitted): %r",
                    len(events),
                    delay,
                    error,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_delay_s)

    def process_span(
        self, record: ConsumerRecord[bytes, bytes], envelope: EventEnvelope
    ) -> tuple[Context, trace.Span | None]:
        """The record's context, with a "process" span in the producer's trace when it has one."""
        if not any(key == "traceparent" for key, _ in record.headers or ()):
            return EMPTY_CONTEXT, None  # (extracting nothing costs as much as the rest of the record)
        producer_context = context_of_headers(record.headers)
        if not trace.get_current_span(producer_context).get_span_context().is_valid:
            return producer_context, None
        span = _tracer.start_span(
            f"process {record.topic}",
            context=producer_context,
            kind=SpanKind.CONSUMER,
            attributes={
                **messaging_attributes(record.topic, "process"),
                "messaging.consumer.group.name": self.group_id,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset,
                "messaging.message.id": envelope.event_id,
                "event.type": envelope.event_type,
            },
        )
        return trace.set_span_in_context(span, producer_context), span

    async def park(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        await dead_letter(self.producer, self.group_id, record, reason)
        self.stats.dead_lettered += 1
