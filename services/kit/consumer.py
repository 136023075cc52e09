"""Consuming platform events: a consumer group, idempotent by event id, offsets committed only
after the work is durable, and a dead-letter topic for what cannot be processed.

For each record: decode the envelope (undecodable → dead letter); skip event types nobody
handles; run the handler at most once per event id (`IdempotencyGuard`); retry failures a few
times, then dead-letter. `PermanentEventError` (a payload the handler can never accept) goes
to the dead-letter topic at once. Offsets of handled records are committed at most once a
second (and when the consumer stops), so a crash re-delivers at most that second's records,
which the guard turns into no-ops.

Records are handled one at a time, in partition order, unless the consumer is given a
`concurrency` above 1: then records of a fetch with different keys are handled up to that many
at once, while those with the same key (one space's events) still go one after another, in
order — the only order Kafka promises across partitions anyway, and what an event id's guard
needs (a redelivery never races its original). Either way the consumer holds at most
`max_batch` records in memory; a backlog waits in Kafka, durable, not in the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from google.protobuf.message import DecodeError
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.kit.db import SessionFactory
from services.kit.events import EventEnvelope, context_of_headers, dead_letter_topic
from services.kit.kafka import EventProducer, messaging_attributes
from services.kit.outbox import processed_events
from services.kit.telemetry import continuing

log = logging.getLogger("services.kit.consumer")
_tracer = trace.get_tracer("services.kit.consumer")

EventHandler = Callable[[EventEnvelope], Awaitable[None]]

# The transaction a PostgresIdempotency-guarded handler writes in.
current_session: contextvars.ContextVar[AsyncSession] = contextvars.ContextVar("current_session")


class PermanentEventError(Exception):
    """The event can never be processed (bad payload, impossible state): dead-letter it now."""


class IdempotencyGuard(Protocol):
    async def run_once(self, consumer_group: str, event_id: str, work: Callable[[], Awaitable[None]]) -> bool:
        """Run `work` unless this event was already processed; True when it ran."""
        ...


class PostgresIdempotency:
    """Marks the event processed in the same transaction as the handler's own writes.

    The handler receives that transaction through `current_session` (see `run_once`)."""

    def __init__(self, sessions: SessionFactory) -> None:
        self.sessions = sessions

    async def run_once(self, consumer_group: str, event_id: str, work: Callable[[], Awaitable[None]]) -> bool:
        async with self.sessions() as session, session.begin():
            inserted = await session.execute(
                insert(processed_events)
                .values(consumer_group=consumer_group, event_id=event_id)
                .on_conflict_do_nothing()
                .returning(processed_events.c.event_id)
            )
            if inserted.first() is None:
                return False
            token = current_session.set(session)
            try:
                await work()
            finally:
                current_session.reset(token)
        return True


class RedisIdempotency:
    """For services whose state is not in PostgreSQL (an index, ClickHouse): the event id is
    remembered in Redis after the work is done. A crash between the work and the mark runs
    the work again, so the work itself must be idempotent (an upsert of the same version);
    the mark keeps the common redelivery from doing it twice."""

    def __init__(self, redis: aioredis.Redis, retention_s: int = 7 * 24 * 3600) -> None:
        self.redis = redis
        self.retention_s = retention_s

    async def run_once(self, consumer_group: str, event_id: str, work: Callable[[], Awaitable[None]]) -> bool:
        key = f"processed:{consumer_group}:{event_id}"
        if await self.redis.exists(key):
            return False
        await work()
        await self.redis.set(key, "1", ex=self.retention_s)
        return True


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    first_delay_s: float = 0.2
    multiplier: float = 4.0

    def delays(self) -> list[float]:
        return [self.first_delay_s * self.multiplier**n for n in range(self.attempts - 1)]


@dataclass
class ConsumerStats:
    processed: int = 0
    duplicates: int = 0
    ignored: int = 0
    dead_lettered: int = 0


class EventConsumer:
    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        topics: Sequence[str],
        handlers: Mapping[str, EventHandler],
        guard: IdempotencyGuard,
        producer: EventProducer,
        retry: RetryPolicy | None = None,
        max_batch: int = 100,
        concurrency: int = 1,
        commit_interval_s: float = 1.0,
        start_from: Literal["earliest", "latest"] = "earliest",
    ) -> None:
        self.group_id = group_id
        self.topics = list(topics)
        self.handlers = dict(handlers)
        self.guard = guard
        self.producer = producer
        self.retry = retry or RetryPolicy()
        self.max_batch = max_batch
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.concurrency = concurrency
        self.commit_interval_s = commit_interval_s
        self.stats = ConsumerStats()
        self.consumer = group_consumer(bootstrap, group_id, start_from)
        self.consumer.subscribe(topics=self.topics)

    async def start(self) -> None:
        await self.consumer.start()

    async def wait_assigned(self, timeout_s: float = 15.0) -> None:
        await wait_assigned(self.consumer, timeout_s)

    async def stop(self) -> None:
        await self.consumer.stop()

    async def run(self) -> None:
        """Consume until cancelled.

        Offsets of handled records are committed at most every `commit_interval_s`, and once more
        when the loop stops: at a trickle of events every fetch holds one record, and a commit
        per fetch cost the broker about as much again as the record. A crash re-delivers what
        was handled since the last commit; the guard turns it into no-ops."""
        handled: dict[TopicPartition, int] = {}
        last_commit = 0.0
        try:
            while True:
                batches = await self.consumer.getmany(timeout_ms=500, max_records=self.max_batch)
                if self.concurrency > 1:
                    await self.handle_concurrently([record for records in batches.values() for record in records])
                    handled.update({partition: records[-1].offset + 1 for partition, records in batches.items()})
                else:
                    for partition, records in batches.items():
                        for record in records:
                            await self.handle_record(record)
                        handled[partition] = records[-1].offset + 1
                if handled and time.monotonic() - last_commit >= self.commit_interval_s:
                    await self.consumer.commit(handled)
                    handled, last_commit = {}, time.monotonic()
        finally:
            if handled:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.consumer.commit(handled), timeout=5)

    async def handle_concurrently(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Handle `records`: those with the same key (one space's events) one after another, in
        order, as Kafka delivered them; different keys up to `concurrency` at once. Returns when
        every one is done."""
        by_key: dict[bytes | None, list[ConsumerRecord[bytes, bytes]]] = {}
        for record in records:
            by_key.setdefault(record.key, []).append(record)
        slots = asyncio.Semaphore(self.concurrency)

        async def handle_in_order(same_key: list[ConsumerRecord[bytes, bytes]]) -> None:
            async with slots:
                for record in same_key:
                    await self.handle_record(record)

        async with asyncio.TaskGroup() as group:
            for same_key in by_key.values():
                group.create_task(handle_in_order(same_key))

    async def handle_record(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Process one record to a final outcome: done, duplicate, ignored or dead-lettered."""
        with (
            continuing(context_of_headers(record.headers)),
            _tracer.start_as_current_span(
                f"process {record.topic}",
                kind=SpanKind.CONSUMER,
                attributes={
                    **messaging_attributes(record.topic, "process"),
                    "messaging.consumer.group.name": self.group_id,
                    "messaging.destination.partition.id": str(record.partition),
                    "messaging.kafka.offset": record.offset,
                },
            ) as span,
        ):
            try:
                envelope = EventEnvelope.FromString(record.value or b"")
            except DecodeError as error:
                await self.dead_letter(record, f"undecodable envelope: {error}")
                return
            span.set_attribute("messaging.message.id", envelope.event_id)
            span.set_attribute("event.type", envelope.event_type)
            handler = self.handlers.get(envelope.event_type)
            if handler is None:
                self.stats.ignored += 1
                return
            await self._process(record, envelope, handler, span)

    async def _process(
        self,
        record: ConsumerRecord[bytes, bytes],
        envelope: EventEnvelope,
        handler: EventHandler,
        span: trace.Span,
    ) -> None:
        delays = [*self.retry.delays(), None]
        for delay in delays:
            try:
                ran = await self.guard.run_once(self.group_id, envelope.event_id, lambda: handler(envelope))
            except PermanentEventError as error:
                await self.dead_letter(record, f"rejected by handler: {error}")
                return
            except Exception as error:
                span.record_exception(error)
                if delay is None:
                    await self.dead_letter(record, f"failed {self.retry.attempts} times: {error!r}")
                    return
                log.warning("handling %s failed, retrying in %.1f s: %r", envelope.event_id, delay, error)
                await asyncio.sleep(delay)
                continue
            if ran:
                self.stats.processed += 1
            else:
                self.stats.duplicates += 1
                span.set_attribute("event.duplicate", True)
            return

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        span = trace.get_current_span()
        span.set_status(Status(StatusCode.ERROR, reason))
        span.set_attribute("event.dead_lettered", True)
        await dead_letter(self.producer, self.group_id, record, reason)
        self.stats.dead_lettered += 1


def group_consumer(
    bootstrap: str, group_id: str, start_from: Literal["earliest", "latest"], **options: int
) -> AIOKafkaConsumer:
    """A member of a consumer group that commits its offsets itself, after the work is durable,
    and reads only committed (transactional) records; subscribe it to topics before starting."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=group_id,
        enable_auto_commit=False,
        # A new group reads a topic from its start (nothing missed), or only what comes next.
        auto_offset_reset=start_from,
        isolation_level="read_committed",
        **options,
    )


async def wait_assigned(consumer: AIOKafkaConsumer, timeout_s: float) -> None:
    """Until the group gave this consumer its partitions and their starting offsets are known,
    so an event produced from now on is seen whatever `start_from` says."""
    async with asyncio.timeout(timeout_s):
        while not consumer.assignment():
            await asyncio.sleep(0.05)
        for partition in consumer.assignment():
            await consumer.position(partition)


async def dead_letter(
    producer: EventProducer, group_id: str, record: ConsumerRecord[bytes, bytes], reason: str
) -> None:
    """Park the record, unchanged, on the group's dead-letter topic, with where it came from and why."""
    headers = [
        *(record.headers or ()),
        ("dlq.reason", reason.encode()),
        ("dlq.original_topic", record.topic.encode()),
        ("dlq.original_partition", str(record.partition).encode()),
        ("dlq.original_offset", str(record.offset).encode()),
        ("dlq.consumer_group", group_id.encode()),
    ]
    await producer.send_raw(dead_letter_topic(group_id), record.value, record.key, headers)
    log.warning("dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason)
