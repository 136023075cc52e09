"""The kit's event consumer against the stack's Kafka and PostgreSQL: each event's work happens
once however often it is delivered, poison and permanently failing events go to the
dead-letter topic, transient failures are retried, and offsets are committed only after the
work is durable (a consumer stopped mid-work re-delivers, and the guard absorbs it)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import Column, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from fixtures.kafka import read_topic
from services.api.events.v1 import events_pb2
from services.kit.consumer import (
    EventConsumer,
    EventHandler,
    PermanentEventError,
    PostgresIdempotency,
    RetryPolicy,
    current_session,
)
from services.kit.db import session_factory
from services.kit.events import EventEnvelope, dead_letter_topic, new_envelope
from services.kit.kafka import EventProducer
from services.kit.outbox import kit_metadata
from simulations.endpoints import StackEndpoints

work_metadata = MetaData()
indexed = Table("indexed", work_metadata, Column("event_id", String(36), primary_key=True))


@pytest.fixture
async def engine(kit_engine: AsyncEngine) -> AsyncEngine:
    async with kit_engine.begin() as connection:
        await connection.run_sync(work_metadata.create_all)
    return kit_engine


@pytest.fixture
def producer(event_producer: EventProducer) -> EventProducer:
    return event_producer


def event(document_id: str, event_type: str = "knowledge.document.created", key: str = "one-key") -> EventEnvelope:
    payload = events_pb2.DocumentCreated(document_id=document_id, title="t", content="c")
    return new_envelope(
        event_type=event_type,
        payload=payload,
        producer="kit-test",
        partition_key=key,  # one key, one partition: delivery order is publish order
        subject_ids={"document_id": document_id},
    )


class Handler:
    """Writes one row per processed event in the guard's transaction; can be told to misbehave."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail_times: dict[str, int] = {}
        self.reject: set[str] = set()
        self.block: dict[str, asyncio.Event] = {}

    async def __call__(self, envelope: EventEnvelope) -> None:
        self.calls.append(envelope.event_id)
        if envelope.event_id in self.reject:
            raise PermanentEventError("the payload names a document that can never exist")
        if self.fail_times.get(envelope.event_id, 0) > 0:
            self.fail_times[envelope.event_id] -= 1
            raise ConnectionError("store briefly unavailable")
        await current_session.get().execute(insert(indexed).values(event_id=envelope.event_id))
        if envelope.event_id in self.block:
            await self.block[envelope.event_id].wait()


def consumer_for(
    stack: StackEndpoints,
    engine: AsyncEngine,
    producer: EventProducer,
    *,
    topic: str,
    group: str,
    handler: EventHandler,
    concurrency: int = 1,
) -> EventConsumer:
    return EventConsumer(
        bootstrap=stack.kafka_bootstrap,
        group_id=group,
        topics=[topic],
        handlers={"knowledge.document.created": handler},
        guard=PostgresIdempotency(session_factory(engine)),
        producer=producer,
        retry=RetryPolicy(attempts=3, first_delay_s=0.05, multiplier=2),
        concurrency=concurrency,
    )


async def rows(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        return list((await connection.execute(select(indexed.c.event_id).order_by(indexed.c.event_id))).scalars())


async def run_until(consumer: EventConsumer, done: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    """Run the consumer until `done()` holds (checked every 50 ms), then stop it."""
    task = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(timeout_s):
            while not await done():
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def all_committed(consumer: EventConsumer) -> bool:
    """Every assigned partition's committed offset has reached its end."""
    partitions = list(consumer.consumer.assignment())
    if not partitions:
        return False
    ends = await consumer.consumer.end_offsets(partitions)
    for partition in partitions:
        if await consumer.consumer.committed(partition) != ends[partition] and ends[partition] > 0:
            return False
    return True


async def test_each_event_is_processed_once_and_bad_ones_are_dead_lettered(
    stack: StackEndpoints, engine: AsyncEngine, producer: EventProducer
) -> None:
    topic, group = f"kit-consumer-{uuid.uuid4().hex[:8]}", f"kit-group-{uuid.uuid4().hex[:8]}"
    good, flaky, rejected, unknown_type = event("doc-1"), event("doc-2"), event("doc-3"), event("x", "other.thing")
    handler = Handler()
    handler.fail_times[flaky.event_id] = 2  # succeeds on the third attempt
    handler.reject.add(rejected.event_id)
    raw = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await raw.start()
    try:
        await producer.publish_many(topic, [good, good, flaky, rejected, unknown_type])  # `good` delivered twice
        await raw.send_and_wait(topic, value=b"\x00 not an envelope", key=b"one-key")
    finally:
        await raw.stop()

    consumer = consumer_for(stack, engine, producer, topic=topic, group=group, handler=handler)
    await consumer.start()
    try:
        await run_until(consumer, lambda: all_committed(consumer))
    finally:
        await consumer.stop()

    assert await rows(engine) == sorted([good.event_id, flaky.event_id]), "each event's work happened once"
    assert consumer.stats.processed == 2
    assert consumer.stats.duplicates == 1
    assert consumer.stats.ignored == 1
    assert consumer.stats.dead_lettered == 2
    assert handler.calls.count(flaky.event_id) == 3, "transient failures are retried"

    parked = await read_topic(stack.kafka_bootstrap, dead_letter_topic(group), expected=2, timeout_s=10)
    reasons = sorted(dict(record.headers)["dlq.reason"].decode() for record in parked)
    assert len(parked) == 2
    assert reasons[0].startswith("rejected by handler: the payload names a document")
    assert reasons[1].startswith("undecodable envelope")
    assert {dict(record.headers)["dlq.original_topic"] for record in parked} == {topic.encode()}


async def test_offsets_are_committed_only_after_the_work_is_durable(
    stack: StackEndpoints, engine: AsyncEngine, producer: EventProducer
) -> None:
    topic, group = f"kit-consumer-{uuid.uuid4().hex[:8]}", f"kit-group-{uuid.uuid4().hex[:8]}"
    first, second = event("doc-a"), event("doc-b")
    await producer.publish_many(topic, [first, second])
    handler = Handler()
    handler.block[second.event_id] = asyncio.Event()  # never set: the consumer dies mid-work

    consumer = consumer_for(stack, engine, producer, topic=topic, group=group, handler=handler)
    await consumer.start()
    try:

        async def second_started() -> bool:
            return second.event_id in handler.calls

        await run_until(consumer, second_started)
    finally:
        await consumer.stop()
    assert await rows(engine) == [first.event_id], "the interrupted event's work was rolled back"

    restarted_handler = Handler()
    restarted = consumer_for(stack, engine, producer, topic=topic, group=group, handler=restarted_handler)
    await restarted.start()
    try:
        await run_until(restarted, lambda: all_committed(restarted))
    finally:
        await restarted.stop()
    assert restarted_handler.calls == [second.event_id], "the uncommitted first event came back as a duplicate"
    assert restarted.stats.duplicates == 1
    assert await rows(engine) == sorted([first.event_id, second.event_id])
    async with engine.connect() as connection:
        marks = await connection.scalar(select(func.count()).select_from(kit_metadata.tables["processed_events"]))
    assert marks == 2


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_a_consumer_handles_keys_side_by_side_and_each_key_in_order(
    stack: StackEndpoints, engine: AsyncEngine, producer: EventProducer, concurrency: int
) -> None:
    topic, group = f"kit-consumer-{uuid.uuid4().hex[:8]}", f"kit-group-{uuid.uuid4().hex[:8]}"
    events = [event(f"doc-{n}", key=f"space-{n % 6}") for n in range(18)]
    key_of = {e.event_id: e.partition_key for e in events}
    await producer.publish_many(topic, events)
    in_flight: list[str] = []  # keys being handled
    most_at_once, same_key_overlaps = 0, 0
    handler = Handler()

    async def slow_handler(envelope: EventEnvelope) -> None:
        nonlocal most_at_once, same_key_overlaps
        same_key_overlaps += envelope.partition_key in in_flight
        in_flight.append(envelope.partition_key)
        most_at_once = max(most_at_once, len(in_flight))
        try:
            # Long enough for the others of the batch to start; the very first event is slow, so
            # a later event of its key would overtake it if keys were not kept in order.
            await asyncio.sleep(0.3 if envelope.event_id == events[0].event_id else 0.05)
            await handler(envelope)
        finally:
            in_flight.remove(envelope.partition_key)

    consumer = consumer_for(
        stack, engine, producer, topic=topic, group=group, handler=slow_handler, concurrency=concurrency
    )
    await consumer.start()
    try:
        await run_until(consumer, lambda: all_committed(consumer))
    finally:
        await consumer.stop()
    assert most_at_once == concurrency
    assert same_key_overlaps == 0, "two events of one key were handled at once"
    for key in {e.partition_key for e in events}:
        handled = [event_id for event_id in handler.calls if key_of[event_id] == key]
        assert handled == [e.event_id for e in events if e.partition_key == key], f"{key}'s events out of order"
    assert consumer.stats.processed == len(events)
    assert set(await rows(engine)) >= {e.event_id for e in events}
