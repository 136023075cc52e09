"""Exact counts through a crash, on a stack of its own (profile activity-faults: auth,
knowledge and activity, with their stores).

A backlog of platform events waits in Kafka while the activity service is down; it comes back,
and is killed with SIGKILL as soon as its first batch is in ClickHouse — mid-backlog, offsets
of what it wrote possibly uncommitted. Its consumer group is then rewound to the start of every
topic, so the service, restarted, is handed again every event it ever recorded. In the end
each event is recorded once: as many rows as events, every count as after one delivery.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from clients.transports import NativeGrpc
from fixtures.accounts import sign_up
from fixtures.activity import stats_when
from fixtures.knowledge import create_space
from observability.clickhouse import connect
from services.activity.app import CONSUMER_GROUP
from services.api.events.v1 import envelope_pb2, events_pb2
from services.kit.events import new_envelope, record_headers
from simulations.launcher import Launcher, isolated_launcher
from simulations.profiles import profile

BACKLOG = 60_000
DOCUMENTS = 100
TOPIC = "knowledge.events.v1"


@pytest.fixture(scope="module")
async def launcher() -> AsyncIterator[Launcher]:
    async with isolated_launcher(profile("activity-faults")) as running:
        yield running


def endpoint(launcher: Launcher, component: str, role: str) -> str:
    return launcher.running[component].component.endpoints()[role]


def document_updated(space_id: str, document_id: str, version: int, actor_id: str) -> envelope_pb2.EventEnvelope:
    return new_envelope(
        event_type="knowledge.document.updated",
        payload=events_pb2.DocumentUpdated(space_id=space_id, document_id=document_id, version=version),
        producer="knowledge",
        partition_key=space_id,
        subject_ids={"space_id": space_id, "document_id": document_id},
        actor_user_id=actor_id,
    )


async def partitions_of(bootstrap: str, topic: str) -> list[TopicPartition]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        return [TopicPartition(topic, partition) for partition in sorted(await producer.partitions_for(topic))]
    finally:
        await producer.stop()


async def rewind_group(bootstrap: str, partitions: list[TopicPartition], timeout_s: float = 60.0) -> None:
    """Commit offset 0 for the activity group on these partitions. Kafka takes the commit once
    the killed member's session has expired (until then the group is not empty)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=CONSUMER_GROUP, enable_auto_commit=False)
    await consumer.start()
    consumer.assign(partitions)  # manual assignment: commits without joining the group
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await consumer.commit(dict.fromkeys(partitions, 0))
                return
            except KafkaError:
                assert time.monotonic() < deadline, "the group's offsets could not be rewound"
                await asyncio.sleep(1)
    finally:
        await consumer.stop()


async def wait_until_group_consumed(bootstrap: str, partitions: list[TopicPartition], timeout_s: float = 120.0) -> None:
    """Until the activity group's committed offsets reach the end of these partitions: every
    record was handed to the service again and written (offsets follow durability)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=CONSUMER_GROUP, enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            ends = await consumer.end_offsets(partitions)
            committed = {partition: await consumer.committed(partition) or 0 for partition in partitions}
            if all(committed[partition] >= ends[partition] for partition in partitions):
                return
            assert time.monotonic() < deadline, f"the group is behind after {timeout_s:.0f} s: {committed} of {ends}"
            await asyncio.sleep(0.5)
    finally:
        await consumer.stop()


@pytest.mark.xdist_group("lifecycle")
async def test_a_backlog_replayed_after_a_kill_minus_9_is_counted_once(launcher: Launcher) -> None:
    auth = NativeGrpc(endpoint(launcher, "auth", "grpc"))
    knowledge = NativeGrpc(endpoint(launcher, "knowledge", "grpc"))
    activity = NativeGrpc(endpoint(launcher, "activity", "grpc"))
    clickhouse = connect(endpoint(launcher, "clickhouse", "http"))
    bootstrap = endpoint(launcher, "kafka", "bootstrap")
    try:
        account = await sign_up(auth)
        space = await create_space(knowledge, account, "Crash")
        documents = [str(uuid.uuid4()) for _ in range(DOCUMENTS)]
        backlog = [
            document_updated(space.space_id, documents[index % DOCUMENTS], 2 + index // DOCUMENTS, account.user_id)
            for index in range(BACKLOG)
        ]

        def recorded() -> tuple[int, int]:
            rows = clickhouse.query(
                "SELECT count(), uniqExact(event_id) FROM activity.events "
                "WHERE actor_id = {actor:UUID} AND source = 'knowledge.document.updated'",
                parameters={"actor": account.user_id},
            ).result_rows
            return int(rows[0][0]), int(rows[0][1])

        await launcher.stop_component("activity")
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
        await producer.start()
        try:
            sends = [
                await producer.send(
                    TOPIC,
                    envelope.SerializeToString(),
                    key=space.space_id.encode(),
                    headers=record_headers(envelope, {}),
                )
                for envelope in backlog
            ]
            await asyncio.gather(*sends)
        finally:
            await producer.stop()

        await launcher.restart_component("activity")
        deadline = time.monotonic() + 60
        while (written := recorded()[0]) == 0:
            assert time.monotonic() < deadline, "the restarted service recorded nothing within 60 s"
            await asyncio.sleep(0.02)
        process = launcher.running["activity"].process
        process.kill()  # SIGKILL: no drain, no final commit
        process.wait(timeout=10)
        await launcher.stop_component("activity")
        at_kill = recorded()
        assert 0 < at_kill[0] < BACKLOG, f"the kill came mid-backlog ({at_kill[0]} of {BACKLOG} recorded)"
        assert at_kill[0] == at_kill[1] >= written

        partitions = await partitions_of(bootstrap, TOPIC)
        await rewind_group(bootstrap, partitions)
        await launcher.restart_component("activity")
        await wait_until_group_consumed(bootstrap, partitions)
        for document_id in documents[:5]:
            stats = await stats_when(
                activity, account, space.space_id, document_id, lambda stats: stats.edits >= BACKLOG // DOCUMENTS
            )
            assert stats.edits == BACKLOG // DOCUMENTS
        assert recorded() == (BACKLOG, BACKLOG), "every event once, none twice"
    finally:
        clickhouse.close()
        for transport in (auth, knowledge, activity):
            await transport.aclose()
