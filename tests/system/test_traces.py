"""One user action is one connected trace: a request through Envoy to a service that writes an
event, which Kafka carries to a consumer — asserted on the spans in ClickHouse."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from clients.transports import Transport, transport_for
from fixtures.accounts import sign_up
from fixtures.knowledge import create_space
from observability.testing import TraceCapture, assert_connected, assert_no_errors, assert_path, assert_under
from observability.traces import span
from services.api.knowledge.v1 import knowledge_pb2
from services.kit.consumer import EventConsumer, PostgresIdempotency
from services.kit.db import session_factory
from services.kit.events import EventEnvelope, topic_for
from services.kit.kafka import EventProducer
from simulations.endpoints import StackEndpoints


@pytest.fixture(params=["grpc", "json"])
async def transport(request: pytest.FixtureRequest, stack: StackEndpoints) -> AsyncIterator[Transport]:
    chosen = transport_for(request.param, stack.envoy_http, stack.envoy_grpc)
    yield chosen
    await chosen.aclose()


async def test_a_request_that_emits_an_event_is_one_connected_trace(
    stack: StackEndpoints,
    traces: TraceCapture,
    transport: Transport,
    kit_engine: AsyncEngine,
    event_producer: EventProducer,
) -> None:
    account = await sign_up(transport)
    seen: list[EventEnvelope] = []

    async def remember(envelope: EventEnvelope) -> None:
        seen.append(envelope)

    consumer = EventConsumer(
        bootstrap=stack.kafka_bootstrap,
        group_id=f"trace-test-{uuid.uuid4().hex[:8]}",
        topics=[topic_for("knowledge")],
        handlers={"knowledge.space.created": remember},
        guard=PostgresIdempotency(session_factory(kit_engine)),
        producer=event_producer,
        start_from="latest",
    )
    await consumer.start()
    running = asyncio.create_task(consumer.run())
    try:
        await consumer.wait_assigned()
        async with traces.action("create a space") as action:
            reply = await transport.unary(
                "knowledge.v1.KnowledgeService/CreateSpace",
                knowledge_pb2.CreateSpaceRequest(name="Traced"),
                token=account.access_token,
                metadata=action.metadata(),
            )
        space = reply.unwrap()
        assert isinstance(space, knowledge_pb2.CreateSpaceResponse)
        async with asyncio.timeout(20):
            while not any(e.subject_ids.get("space_id") == space.space.space_id for e in seen):
                await asyncio.sleep(0.05)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await consumer.stop()

    edge = span("envoy", kind="Server", name="^knowledge ")  # not the JWKS fetch a first request makes
    server = span("knowledge", kind="Server", name="CreateSpace")
    producer, consumed = span("knowledge", kind="Producer"), span("tests", kind="Consumer")
    database = span("knowledge", kind="Client", name="INSERT")
    tree = await action.trace(edge, server, database, producer, consumed)

    assert_path(tree, span("tests", name="test: create a space"), edge, server, producer, consumed)
    assert_path(tree, server, database)
    assert_connected(tree)
    assert_no_errors(tree)
    assert_under(tree, server, budget_ms=2000)
    assert tree.services() >= {"tests", "envoy", "knowledge"}


async def test_a_document_create_is_one_trace_down_to_the_index_upsert(
    stack: StackEndpoints, traces: TraceCapture, transport: Transport
) -> None:
    account = await sign_up(transport)
    space = await create_space(transport, account, "Traced documents")
    async with traces.action("create a document") as action:
        reply = await transport.unary(
            "knowledge.v1.KnowledgeService/CreateDocument",
            knowledge_pb2.CreateDocumentRequest(space_id=space.space_id, title="Traced", content="Follow me."),
            token=account.access_token,
            metadata=action.metadata(),
        )
    assert reply.ok, reply.details

    edge = span("envoy", kind="Server", name="^knowledge ")
    server = span("knowledge", kind="Server", name="CreateDocument")
    producer = span("knowledge", kind="Producer", **{"event.type": "knowledge.document.created"})
    consumer = span("vector", kind="Consumer", **{"event.type": "knowledge.document.created"})
    embed, upsert = span("vector", name="embed chunks"), span("vector", name="index upsert")
    tree = await action.trace(edge, server, producer, consumer, embed, upsert, timeout_s=30)

    assert_path(tree, edge, server, producer, consumer, upsert)
    assert_path(tree, consumer, embed)
    assert_connected(tree)
    assert_no_errors(tree)
    assert tree.services() >= {"tests", "envoy", "knowledge", "vector"}
