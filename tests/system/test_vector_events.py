"""The vector service's event handling, fed crafted knowledge events on the real topic:
duplicates are applied once, an older version never overwrites a newer one, poison is
dead-lettered without stopping the consumer, and a killed vector service loses no update
(offsets are committed only after the upsert)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from google.protobuf.message import Message

from clients.transports import NativeGrpc, Transport, transport_for
from fixtures.accounts import Account, sign_up
from fixtures.documents import eventually
from fixtures.events import EventLog
from fixtures.knowledge import create_space
from services.api.events.v1 import events_pb2
from services.api.knowledge.v1 import knowledge_pb2
from services.api.vector.v1 import vector_pb2
from services.kit.events import EventEnvelope, dead_letter_topic, new_envelope, topic_for
from services.kit.kafka import EventProducer
from simulations.endpoints import StackEndpoints
from simulations.launcher import Launcher, isolated_launcher
from simulations.profiles import profile

KNOWLEDGE_TOPIC = topic_for("knowledge")


def document_event(
    space_id: str, document_id: str, version: int, content: str, *, deleted: bool = False, event_id: str | None = None
) -> EventEnvelope:
    """A knowledge event as the knowledge service would write it (crafted by the test)."""
    payload: Message
    if deleted:
        event_type = "knowledge.document.deleted"
        payload = events_pb2.DocumentDeleted(space_id=space_id, document_id=document_id, version=version, title="t")
    else:
        event_type = "knowledge.document.created" if version == 1 else "knowledge.document.updated"
        kind = events_pb2.DocumentCreated if version == 1 else events_pb2.DocumentUpdated
        payload = kind(space_id=space_id, document_id=document_id, version=version, title="Note", content=content)
    return new_envelope(
        event_type=event_type,
        payload=payload,
        producer="knowledge",
        partition_key=space_id,
        subject_ids={"space_id": space_id, "document_id": document_id},
        event_id=event_id,
    )


async def searchable(vector: Transport, account: Account, space_id: str, words: str) -> set[str]:
    """The chunk texts of the space that the words find (the lexical words are unique markers)."""
    request = vector_pb2.SearchRequest(query=words, top_k=50, space_ids=[space_id])
    response = (await vector.unary("vector.v1.VectorService/Search", request, token=account.access_token)).unwrap()
    assert isinstance(response, vector_pb2.SearchResponse)
    return {hit.snippet for hit in response.hits}


async def owner_and_space(auth: Transport, knowledge: Transport) -> tuple[Account, str]:
    owner = await sign_up(auth)
    space = await create_space(knowledge, owner, "Events")
    return owner, space.space_id


@pytest.fixture(scope="module")
async def setup(stack: StackEndpoints) -> AsyncIterator[Transport]:
    transport = transport_for("grpc", stack.envoy_http, stack.envoy_grpc)
    yield transport
    await transport.aclose()


@pytest.fixture(scope="module")
async def vector(stack: StackEndpoints) -> AsyncIterator[Transport]:
    transport = NativeGrpc(stack.service_grpc("vector"))
    yield transport
    await transport.aclose()


async def test_duplicates_apply_once_and_older_versions_never_win(
    setup: Transport, vector: Transport, event_producer: EventProducer
) -> None:
    owner, space = await owner_and_space(setup, setup)
    duplicated, reordered, deleted = (str(uuid.uuid4()) for _ in range(3))
    first = document_event(space, duplicated, 1, "alphaduplicate original text")
    same_id_other_text = document_event(space, duplicated, 1, "betaduplicate replay text", event_id=first.event_id)
    await event_producer.publish_many(
        KNOWLEDGE_TOPIC,
        [
            first,
            same_id_other_text,  # a redelivery: the same event id is applied once
            document_event(space, reordered, 2, "gammanewer second version"),
            document_event(space, reordered, 1, "deltaolder first version"),  # arrives late: ignored
            document_event(space, deleted, 1, "epsilonremoved text"),
            document_event(space, deleted, 3, "", deleted=True),
            document_event(space, deleted, 2, "zetastale update after the deletion"),  # older than the deletion
            document_event(space, str(uuid.uuid4()), 1, "omegalast marker"),
        ],
    )

    async def last_one_indexed() -> bool | None:
        return any("omegalast" in text for text in await searchable(vector, owner, space, "omegalast marker")) or None

    await eventually(last_one_indexed, "the last event was indexed", timeout_s=20)
    texts = " ".join(
        await searchable(
            vector, owner, space, "alphaduplicate betaduplicate gammanewer deltaolder epsilonremoved zetastale"
        )
    )
    assert "alphaduplicate" in texts
    assert "betaduplicate" not in texts, "a duplicate event id was applied twice"
    assert "gammanewer" in texts
    assert "deltaolder" not in texts, "an older version overwrote a newer one"
    assert "epsilonremoved" not in texts
    assert "zetastale" not in texts, "an update older than the deletion brought the document back"


async def test_poison_is_dead_lettered_and_the_consumer_keeps_going(
    stack: StackEndpoints, setup: Transport, vector: Transport, event_producer: EventProducer
) -> None:
    owner, space = await owner_and_space(setup, setup)
    dead_letters = EventLog(stack.kafka_bootstrap, dead_letter_topic("vector"))
    await dead_letters.start()
    try:
        garbage = f"not an envelope {uuid.uuid4()}".encode()
        raw = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
        await raw.start()
        try:
            await raw.send_and_wait(KNOWLEDGE_TOPIC, value=garbage, key=space.encode())
        finally:
            await raw.stop()
        no_ids = document_event(space, "", 1, "thetapoison without a document id")
        after = document_event(space, str(uuid.uuid4()), 1, "iotaafter the poison")
        await event_producer.publish_many(KNOWLEDGE_TOPIC, [no_ids, after])

        parked = await dead_letters.wait_for_records(
            lambda r: r.value == garbage or r.value == no_ids.SerializeToString(), count=2, timeout_s=30
        )
        reasons = sorted(dict(r.headers)["dlq.reason"].decode() for r in parked)
        assert len(parked) == 2, "both poison records were dead-lettered"
        assert reasons[0].startswith("rejected by handler")
        assert reasons[1].startswith("undecodable envelope")

        async def next_event_indexed() -> bool | None:
            found = await searchable(vector, owner, space, "iotaafter poison")
            return any("iotaafter" in text for text in found) or None

        await eventually(next_event_indexed, "the event after the poison was indexed", timeout_s=20)
    finally:
        await dead_letters.stop()


@pytest.mark.xdist_group("lifecycle")
async def test_a_killed_vector_service_loses_no_update() -> None:
    """On its own stack: kill -9 the vector service while documents are being written, start
    it again, and every document becomes searchable (offsets were committed after upserts)."""
    async with isolated_launcher(profile("vector-restart")) as launcher:
        endpoints = {name: dict(r.component.endpoints()) for name, r in launcher.running.items()}
        auth = NativeGrpc(endpoints["auth"]["grpc"])
        knowledge = NativeGrpc(endpoints["knowledge"]["grpc"])
        try:
            owner, space = await owner_and_space(auth, knowledge)
            markers = [f"kappa{n}x{uuid.uuid4().hex[:6]}" for n in range(30)]
            writer = asyncio.create_task(write_documents(knowledge, owner, space, markers))
            await asyncio.sleep(0.5)
            kill(launcher, "vector")  # mid-burst, no clean shutdown
            await writer
            await launcher.stop_component("vector")
            await launcher.restart_component("vector")
            vector = NativeGrpc(launcher.running["vector"].component.endpoints()["grpc"])
            try:

                async def all_indexed() -> bool | None:
                    found = " ".join(await searchable(vector, owner, space, " ".join(markers)))
                    return all(marker in found for marker in markers) or None

                await eventually(all_indexed, "every document written around the kill was indexed", timeout_s=60)
            finally:
                await vector.aclose()
        finally:
            await auth.aclose()
            await knowledge.aclose()


def kill(launcher: Launcher, name: str) -> None:
    launcher.running[name].process.kill()
    launcher.running[name].process.wait(timeout=10)


async def write_documents(knowledge: Transport, owner: Account, space: str, markers: list[str]) -> None:
    for marker in markers:
        request = knowledge_pb2.CreateDocumentRequest(space_id=space, title="Burst", content=f"{marker} burst note")
        reply = await knowledge.unary("knowledge.v1.KnowledgeService/CreateDocument", request, token=owner.access_token)
        assert reply.ok, reply.details
