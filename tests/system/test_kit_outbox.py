"""The transactional outbox against the real PostgreSQL and Kafka of the stack: only committed
events are published, each key's events arrive in commit order, and nothing is published twice
by a relay that already published it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from fixtures.kafka import read_topic
from services.api.events.v1 import events_pb2
from services.kit.db import SessionFactory, session_factory, transaction
from services.kit.events import EventEnvelope, new_envelope, topic_for
from services.kit.kafka import EventProducer
from services.kit.outbox import RELAY_LOCK_ID, OutboxRelay, outbox, record_event
from simulations.endpoints import StackEndpoints


@pytest.fixture
def engine(kit_engine: AsyncEngine) -> AsyncEngine:
    return kit_engine


@pytest.fixture
def producer(event_producer: EventProducer) -> EventProducer:
    return event_producer


def document_event(producer: str, space_id: str, version: int) -> EventEnvelope:
    payload = events_pb2.DocumentUpdated(space_id=space_id, document_id=space_id, version=version)
    return new_envelope(
        event_type="knowledge.document.updated",
        payload=payload,
        producer=producer,
        partition_key=space_id,
        subject_ids={"space_id": space_id},
    )


async def record_then_fail(sessions: SessionFactory, envelope: EventEnvelope) -> None:
    async with transaction(sessions) as session:
        await record_event(session, envelope)
        raise RuntimeError("the change failed, so its event must not exist")


async def one_committed_event(sessions: SessionFactory) -> tuple[str, EventEnvelope]:
    """An event committed to the outbox by a producer of its own (so its own topic)."""
    service = f"kit-test-{uuid.uuid4().hex[:8]}"
    envelope = document_event(service, str(uuid.uuid4()), 1)
    async with transaction(sessions) as session:
        await record_event(session, envelope)
    return service, envelope


def version_of(envelope: EventEnvelope) -> int:
    return events_pb2.DocumentUpdated.FromString(envelope.payload).version


async def test_relay_publishes_committed_events_in_commit_order(
    stack: StackEndpoints, engine: AsyncEngine, producer: EventProducer
) -> None:
    sessions = session_factory(engine)
    service = f"kit-test-{uuid.uuid4().hex[:8]}"  # its own topic, so the test shares nothing
    spaces = [str(uuid.uuid4()) for _ in range(3)]
    committed: list[EventEnvelope] = []
    for version in range(1, 11):
        for space in spaces:
            envelope = document_event(service, space, version)
            async with transaction(sessions) as session:
                await record_event(session, envelope)
            committed.append(envelope)
    with pytest.raises(RuntimeError, match="the change failed"):
        await record_then_fail(sessions, document_event(service, spaces[0], 99))

    relay = OutboxRelay(sessions, producer, batch_size=7)  # several batches, order across them
    published = 0
    while batch := await relay.publish_pending():
        published += batch
    assert published == len(committed)
    assert await relay.publish_pending() == 0, "a second pass must find nothing pending"

    records = await read_topic(stack.kafka_bootstrap, topic_for(service), expected=len(committed) + 1, timeout_s=10)
    received = [EventEnvelope.FromString(record.value or b"") for record in records]
    assert sorted(e.event_id for e in received) == sorted(e.event_id for e in committed), "exactly the commits"
    for space in spaces:
        versions = [
            events_pb2.DocumentUpdated.FromString(e.payload).version for e in received if e.partition_key == space
        ]
        assert versions == list(range(1, 11)), f"space {space}: events out of commit order: {versions}"
    headers = dict(records[0].headers)
    assert headers["event_type"] == b"knowledge.document.updated"
    assert headers["content-type"] == b"application/x-protobuf"

    async with sessions() as session:
        pending = (await session.execute(select(outbox.c.id).where(outbox.c.published_at.is_(None)))).all()
    assert pending == [], "every published row is marked published"


class FailingOnce(EventProducer):
    """Our producer, made to fail its first publish (as when the broker is briefly gone)."""

    failed = False

    async def publish_many(self, topic: str, envelopes: Sequence[EventEnvelope]) -> None:
        if not self.failed:
            self.failed = True
            raise ConnectionError("broker unreachable")
        await super().publish_many(topic, envelopes)


async def test_a_failed_publish_leaves_events_pending_for_the_next_pass(
    stack: StackEndpoints, engine: AsyncEngine, producer: EventProducer
) -> None:
    sessions = session_factory(engine)
    service, envelope = await one_committed_event(sessions)
    relay = OutboxRelay(sessions, FailingOnce(producer.producer))
    with pytest.raises(ConnectionError):
        await relay.publish_pending()
    async with sessions() as session:
        waiting = await session.scalar(text("SELECT count(*) FROM outbox WHERE published_at IS NULL"))
    assert waiting == 1, "the failed pass must not mark the event published"
    assert await relay.publish_pending() == 1
    records = await read_topic(stack.kafka_bootstrap, topic_for(service), expected=2, timeout_s=5)
    assert [EventEnvelope.FromString(r.value or b"").event_id for r in records] == [envelope.event_id]


async def test_a_relay_finding_another_at_work_says_so_and_publishes_once_it_is_done(
    stack: StackEndpoints, engine: AsyncEngine, producer: EventProducer
) -> None:
    sessions = session_factory(engine)
    service, envelope = await one_committed_event(sessions)
    relay = OutboxRelay(sessions, producer)
    async with transaction(sessions) as other_relay:
        await other_relay.execute(select(func.pg_advisory_xact_lock(RELAY_LOCK_ID)))
        assert await relay.publish_pending() is None, "busy is not 'nothing pending'"
    assert await relay.publish_pending() == 1
    records = await read_topic(stack.kafka_bootstrap, topic_for(service), expected=1, timeout_s=5)
    assert [EventEnvelope.FromString(r.value or b"").event_id for r in records] == [envelope.event_id]
