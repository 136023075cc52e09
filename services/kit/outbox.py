"""The transactional outbox: events are rows written in the same transaction as the change,
then relayed to Kafka in commit order.

A use case calls `record_event(session, envelope)` inside its transaction; nothing reaches
Kafka unless the change commits, and nothing committed is lost if Kafka is down. The
`OutboxRelay` publishes pending rows oldest first and marks them published in one
transaction; a relay that crashes mid-batch re-sends that batch (at-least-once delivery, which
consumers absorb by event id). A transaction-scoped advisory lock keeps a second relay
(another replica) from interleaving and breaking the order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from services.kit.db import SessionFactory
from services.kit.events import EventEnvelope, topic_for
from services.kit.kafka import EventProducer
from services.kit.telemetry import untraced

log = logging.getLogger("services.kit.outbox")

RELAY_LOCK_ID = 0x6F7574626F78  # "outbox": one relay at a time per database
PUBLISHED_RETENTION = timedelta(hours=1)
# Rows kept for an hour need not be swept on every relay cycle (one per commit under load).
CLEANUP_INTERVAL_S = 60.0

kit_metadata = MetaData()

outbox = Table(
    "outbox",
    kit_metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("event_type", String(100), nullable=False),
    Column("topic", String(200), nullable=False),
    Column("partition_key", String(64), nullable=False),
    Column("envelope", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("published_at", DateTime(timezone=True), nullable=True),
    Index("outbox_pending", "id", postgresql_where=text("published_at IS NULL")),
)

processed_events = Table(
    "processed_events",
    kit_metadata,
    Column("consumer_group", String(200), primary_key=True),
    Column("event_id", String(36), primary_key=True),
    Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


def create_kit_tables(connection: Connection) -> None:
    """The outbox and processed-events tables; each service's first migration calls this."""
    kit_metadata.create_all(connection)


async def record_event(session: AsyncSession, envelope: EventEnvelope) -> None:
    """Add an event to the caller's transaction."""
    await session.execute(
        outbox.insert().values(
            event_id=envelope.event_id,
            event_type=envelope.event_type,
            topic=topic_for(envelope.producer),
            partition_key=envelope.partition_key,
            envelope=envelope.SerializeToString(),
        )
    )


class OutboxRelay:
    """Moves committed outbox rows to Kafka, in order.

    Services call `wake()` after each commit, so events leave at once; the idle poll is only the
    safety net for rows no wake announced (a crash between commit and wake, another replica's
    commit). It is slow on purpose: each poll is a transaction, and at 4 polls a second that
    alone was ~3% of a busy service's CPU."""

    def __init__(
        self,
        sessions: SessionFactory,
        producer: EventProducer,
        *,
        batch_size: int = 200,
        idle_poll_s: float = 2.0,
        busy_retry_s: float = 0.05,
        retry_delay_s: float = 1.0,
    ) -> None:
        self.sessions = sessions
        self.producer = producer
        self.batch_size = batch_size
        self.idle_poll_s = idle_poll_s
        self.busy_retry_s = busy_retry_s  # another relay holds the lock: it may idle past our rows
        self.retry_delay_s = retry_delay_s
        self._wake = asyncio.Event()
        self._last_cleanup = float("-inf")
        self.published_total = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Relay until cancelled. Kafka or database errors are retried after a pause."""
        while True:
            try:
                # Polls make no spans; each event's publish span joins the trace it was written in.
                with untraced():
                    published = await self.publish_pending()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay failed; retrying in %.1f s", self.retry_delay_s)
                await asyncio.sleep(self.retry_delay_s)
                continue
            if published is None:
                await self._idle(self.busy_retry_s)
            elif published < self.batch_size:
                await self._idle(self.idle_poll_s)

    async def _idle(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()

    async def publish_pending(self) -> int | None:
        """Publish one batch of pending rows, oldest first; returns how many were published, or
        None when another relay holds the lock."""
        async with self.sessions() as session, session.begin():
            locked = await session.scalar(select(func.pg_try_advisory_xact_lock(RELAY_LOCK_ID)))
            if not locked:
                return None
            rows = (
                await session.execute(
                    select(outbox.c.id, outbox.c.topic, outbox.c.envelope)
                    .where(outbox.c.published_at.is_(None))
                    .order_by(outbox.c.id)
                    .limit(self.batch_size)
                )
            ).all()
            if not rows:
                return 0
            for topic, batch in group_consecutive_by_topic([(row.topic, row.envelope) for row in rows]):
                await self.producer.publish_many(topic, [EventEnvelope.FromString(blob) for blob in batch])
            await session.execute(
                update(outbox).where(outbox.c.id.in_([row.id for row in rows])).values(published_at=func.now())
            )
            if time.monotonic() - self._last_cleanup >= CLEANUP_INTERVAL_S:
                await session.execute(delete(outbox).where(outbox.c.published_at < func.now() - PUBLISHED_RETENTION))
                self._last_cleanup = time.monotonic()
        self.published_total += len(rows)
        return len(rows)


def group_consecutive_by_topic(rows: Sequence[tuple[str, bytes]]) -> list[tuple[str, list[bytes]]]:
    """Runs of rows with the same topic, order kept (so per-topic order is commit order)."""
    groups: list[tuple[str, list[bytes]]] = []
    for topic, blob in rows:
        if groups and groups[-1][0] == topic:
            groups[-1][1].append(blob)
        else:
            groups.append((topic, [blob]))
    return groups
