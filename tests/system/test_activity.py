"""The activity service on the running stack: it witnesses every platform topic with the right
kind, actor, space and document; a document's life gives the right stats and rankings; counts
stay exact when the same events come twice through Kafka or from a client; and its work joins
the traces of the requests and events it records."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer

from clients.transports import NATIVE_GRPC, MethodRef, Transport, transport_for
from fixtures.accounts import Account, sign_up
from fixtures.activity import (
    ASKED,
    CANVAS_EDITED,
    EDITED,
    LAST_DAY,
    LAST_HOUR,
    LAST_WEEK,
    SIGNED_IN,
    SPACE_CHANGED,
    Event,
    event,
    of_type,
    search_click,
    stats_when,
    timeline_when,
    top_documents,
    track,
    track_all,
    viewed,
    whole_timeline,
)
from fixtures.canvas import move_node, place_node, remove_node
from fixtures.documents import eventually
from fixtures.knowledge import (
    EDITOR,
    VIEWER,
    add_member,
    create_document,
    create_space,
    delete_document,
    update_document,
)
from observability.testing import TraceCapture, assert_connected, assert_no_errors, assert_path
from observability.traces import span
from services.api.activity.v1 import activity_pb2
from services.api.chat.v1 import chat_pb2
from services.api.events.v1 import events_pb2
from services.api.knowledge.v1 import knowledge_pb2
from services.kit.events import new_envelope, record_headers
from simulations.endpoints import StackEndpoints

UPDATE_MEMBER_ROLE = MethodRef.of("knowledge.v1.KnowledgeService/UpdateMemberRole")
REMOVE_MEMBER = MethodRef.of("knowledge.v1.KnowledgeService/RemoveMember")
CREATE_CONVERSATION = MethodRef.of("chat.v1.ChatService/CreateConversation")
ASK = MethodRef.of("chat.v1.ChatService/Ask")
REDELIVERY_TOPIC = "redelivery.events.v1"


@pytest.fixture
async def transport(stack: StackEndpoints) -> AsyncIterator[Transport]:
    chosen = transport_for(NATIVE_GRPC, stack.envoy_http, stack.envoy_grpc)
    yield chosen
    await chosen.aclose()


def top_ids(reply: activity_pb2.GetTopDocumentsResponse) -> list[tuple[str, int, int]]:
    return [(doc.document_id, doc.views, doc.unique_viewers) for doc in reply.documents]


async def top(transport: Transport, account: Account, space_id: str, window: int) -> list[tuple[str, int, int]]:
    response = (await top_documents(transport, account, space_id, window)).unwrap()
    assert isinstance(response, activity_pb2.GetTopDocumentsResponse)
    return top_ids(response)


# ------------------------------------------------------------ every topic


async def test_events_of_every_existing_topic_are_recorded_with_kind_actor_space_and_document(
    transport: Transport,
) -> None:
    owner = await sign_up(transport, "owner")
    member = await sign_up(transport, "member")
    space = await create_space(transport, owner, "Witnessed")
    await add_member(transport, owner, space.space_id, member.user_id, VIEWER)
    await transport.unary(
        UPDATE_MEMBER_ROLE,
        knowledge_pb2.UpdateMemberRoleRequest(space_id=space.space_id, user_id=member.user_id, role=EDITOR),
        token=owner.access_token,
    )
    document = await create_document(transport, owner, space.space_id, "Witness", "Everything is recorded.")
    document = await update_document(transport, owner, document, content="Everything is recorded, once.")
    await delete_document(transport, owner, document)
    placed = (await place_node(transport, owner, space.space_id, "Card")).node
    moved = (await move_node(transport, owner, placed, 10, 20)).node
    await remove_node(transport, owner, moved)
    conversation = (
        await transport.unary(
            CREATE_CONVERSATION,
            chat_pb2.CreateConversationRequest(title="Questions", space_ids=[space.space_id]),
            token=owner.access_token,
        )
    ).unwrap()
    assert isinstance(conversation, chat_pb2.CreateConversationResponse)
    answer = await transport.server_stream(
        ASK,
        chat_pb2.AskRequest(conversation_id=conversation.conversation.conversation_id, question="What is recorded?"),
        token=owner.access_token,
        timeout=30,
    )
    assert answer.ok, answer.details
    await transport.unary(
        REMOVE_MEMBER,
        knowledge_pb2.RemoveMemberRequest(space_id=space.space_id, user_id=member.user_id),
        token=owner.access_token,
    )

    # (event type, kind, space, document) of what the owner did, each exactly once.
    expected = [
        ("auth.user.signed_up", SIGNED_IN, "", ""),
        ("knowledge.space.created", SPACE_CHANGED, space.space_id, ""),
        ("knowledge.member.role_changed", SPACE_CHANGED, space.space_id, ""),
        ("knowledge.member.removed", SPACE_CHANGED, space.space_id, ""),
        ("knowledge.document.created", EDITED, space.space_id, document.document_id),
        ("knowledge.document.updated", EDITED, space.space_id, document.document_id),
        ("knowledge.document.deleted", EDITED, space.space_id, document.document_id),
        ("canvas.node.placed", CANVAS_EDITED, space.space_id, ""),
        ("canvas.node.moved", CANVAS_EDITED, space.space_id, ""),
        ("canvas.node.removed", CANVAS_EDITED, space.space_id, ""),
        ("chat.question.asked", ASKED, "", ""),
    ]
    recorded = await timeline_when(
        transport, owner, lambda events: all(of_type(events, event_type) for event_type, *_ in expected)
    )
    for event_type, kind, space_id, document_id in expected:
        [found] = of_type(recorded, event_type)
        assert (found.kind, found.space_id, found.document_id) == (kind, space_id, document_id), event_type
        assert found.attributes["producer"] == event_type.split(".")[0]
    # The owner's own membership of the new space, and the member they added.
    added = of_type(recorded, "knowledge.member.added")
    assert sorted(found.attributes["user_id"] for found in added) == sorted([owner.user_id, member.user_id])
    assert of_type(recorded, "canvas.node.placed")[0].attributes["node_id"] == placed.node_id
    assert of_type(recorded, "chat.question.asked")[0].attributes["conversation_id"] == (
        conversation.conversation.conversation_id
    )
    # The member's timeline holds their sign-up; what was done to them is in the owner's.
    member_events = await timeline_when(transport, member, lambda events: bool(of_type(events, "auth.user.signed_up")))
    assert [found.attributes["event_type"] for found in member_events] == ["auth.user.signed_up"]


# -------------------------------------------------------- a document's life


async def test_a_documents_life_gives_the_right_stats_and_ranking_over_windows(transport: Transport) -> None:
    owner = await sign_up(transport, "owner")
    reader = await sign_up(transport, "reader")
    space = await create_space(transport, owner, "Life")
    await add_member(transport, owner, space.space_id, reader.user_id, VIEWER)
    now = datetime.now(UTC)
    life = await create_document(transport, owner, space.space_id, "Lifecycle", "Born.")
    # Three views by two users, an update, a click on a search hit.
    await track(transport, owner, viewed(space.space_id, life.document_id))
    await track(transport, reader, viewed(space.space_id, life.document_id))
    await track(transport, reader, viewed(space.space_id, life.document_id))
    life = await update_document(transport, owner, life, content="Grown.")
    await track(transport, reader, search_click(space.space_id, life.document_id, "lifecycle"))
    # Two other documents: one viewed more but earlier, one viewed once long ago.
    earlier, long_ago = sorted(str(uuid.uuid4()) for _ in range(2))
    await track_all(
        transport,
        reader,
        [viewed(space.space_id, earlier, at=now - timedelta(hours=2)) for _ in range(6)]
        + [viewed(space.space_id, long_ago, at=now - timedelta(days=3)) for _ in range(9)],
    )

    stats = await stats_when(transport, owner, space.space_id, life.document_id, lambda s: s.edits == 2)
    assert (stats.views, stats.unique_viewers, stats.edits) == (4, 2, 2)
    assert await top(transport, owner, space.space_id, LAST_HOUR) == [(life.document_id, 4, 2)]
    assert await top(transport, owner, space.space_id, LAST_DAY) == [(earlier, 6, 1), (life.document_id, 4, 2)]
    assert await top(transport, owner, space.space_id, LAST_WEEK) == [
        (long_ago, 9, 1),
        (earlier, 6, 1),
        (life.document_id, 4, 2),
    ]

    await delete_document(transport, owner, life)
    stats = await stats_when(transport, owner, space.space_id, life.document_id, lambda s: s.edits == 3)
    assert (stats.views, stats.unique_viewers, stats.edits) == (4, 2, 3), "a deletion is the third edit"

    async def ranking_without_it() -> list[tuple[str, int, int]] | None:
        ranked = await top(transport, owner, space.space_id, LAST_WEEK)
        return ranked if life.document_id not in [document_id for document_id, *_ in ranked] else None

    assert await eventually(ranking_without_it, "the deleted document left out", 30) == [
        (long_ago, 9, 1),
        (earlier, 6, 1),
    ]


# ------------------------------------------------------------ exactness


async def test_a_client_resubmitting_a_batch_at_once_and_later_changes_no_count(transport: Transport) -> None:
    account = await sign_up(transport)
    space = await create_space(transport, account, "Resubmitted")
    document_id = str(uuid.uuid4())
    batch = [viewed(space.space_id, document_id) for _ in range(50)] + [event(ASKED) for _ in range(50)]
    results = await asyncio.gather(*(track_all(transport, account, batch) for _ in range(4)))
    later = await track_all(transport, account, batch)
    assert sum(result.accepted_count for result in results) == 100, "each event stored by exactly one submission"
    assert all(result.accepted_count + result.duplicate_count == 100 for result in results)
    assert (later.accepted_count, later.duplicate_count) == (0, 100)
    stats = await stats_when(transport, account, space.space_id, document_id, lambda s: s.views > 0)
    assert (stats.views, stats.unique_viewers) == (50, 1)
    tracked = [found for found in await whole_timeline(transport, account) if "event_type" not in found.attributes]
    assert sorted(found.event_id for found in tracked) == sorted(one.event_id for one in batch)


async def test_events_delivered_twice_through_kafka_are_counted_once(
    transport: Transport, stack: StackEndpoints
) -> None:
    """The same records produced twice (as a producer retry or an outbox relay re-publishing
    would), then a marker behind them on the same partition: once the marker is recorded, every
    duplicate before it has been consumed too, and the counts are those of one delivery. They go
    to a topic only the activity service reads (its pattern takes in new topics), so the other
    consumers of knowledge's topic are not handed documents that do not exist."""
    account = await sign_up(transport)
    space = await create_space(transport, account, "Redelivered")
    document_ids = [str(uuid.uuid4()) for _ in range(20)]
    envelopes = [
        new_envelope(
            event_type="knowledge.document.updated",
            payload=events_pb2.DocumentUpdated(space_id=space.space_id, document_id=document_id, version=version),
            producer="knowledge",
            partition_key=space.space_id,
            subject_ids={"space_id": space.space_id, "document_id": document_id},
            actor_user_id=account.user_id,
        )
        for document_id in document_ids
        for version in (2, 3)
    ]
    marker_document = str(uuid.uuid4())
    marker = new_envelope(
        event_type="knowledge.document.updated",
        payload=events_pb2.DocumentUpdated(space_id=space.space_id, document_id=marker_document, version=2),
        producer="knowledge",
        partition_key=space.space_id,
        subject_ids={"space_id": space.space_id, "document_id": marker_document},
        actor_user_id=account.user_id,
    )
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for delivery in range(2):
            for envelope in envelopes:
                await producer.send_and_wait(
                    REDELIVERY_TOPIC,
                    envelope.SerializeToString(),
                    key=space.space_id.encode(),
                    headers=record_headers(envelope, {}),
                )
            if delivery == 0:
                # The second delivery comes after the first was recorded: the store, not the
                # flush, must know them.
                await stats_when(transport, account, space.space_id, document_ids[-1], lambda s: s.edits == 2)
        await producer.send_and_wait(
            REDELIVERY_TOPIC,
            marker.SerializeToString(),
            key=space.space_id.encode(),
            headers=record_headers(marker, {}),
        )
    finally:
        await producer.stop()
    await stats_when(transport, account, space.space_id, marker_document, lambda s: s.edits == 1)
    for document_id in document_ids:
        stats = await stats_when(transport, account, space.space_id, document_id, lambda s: s.edits > 0)
        assert stats.edits == 2, f"{document_id}: two versions, each counted once"
    recorded = of_type(await whole_timeline(transport, account), "knowledge.document.updated")
    assert sorted(found.event_id for found in recorded) == sorted(e.event_id for e in [*envelopes, marker])


# ------------------------------------------------------------------ traces


async def test_a_tracked_event_is_one_trace_from_envoy_to_the_clickhouse_insert(
    transport: Transport, traces: TraceCapture
) -> None:
    account = await sign_up(transport)
    space = await create_space(transport, account, "Traced activity")
    tracked: Event = viewed(space.space_id, str(uuid.uuid4()))
    async with traces.action("track a view") as action:
        reply = await transport.unary(
            MethodRef.of("activity.v1.ActivityService/TrackEvent"),
            activity_pb2.TrackEventRequest(event=tracked),
            token=account.access_token,
            metadata=action.metadata(),
        )
    assert reply.ok, reply.details
    edge = span("envoy", kind="Server", name="^activity ")
    server = span("activity", kind="Server", name="TrackEvent")
    lookup = span("activity", kind="Client", name="SELECT activity.event_ids")
    insert = span("activity", kind="Client", name="INSERT activity.events")
    tree = await action.trace(edge, server, lookup, insert)
    assert_path(tree, edge, server, insert)
    assert_path(tree, server, lookup)
    assert_connected(tree)
    assert_no_errors(tree)


async def test_a_consumed_platform_event_continues_the_producers_trace(
    transport: Transport, traces: TraceCapture
) -> None:
    account = await sign_up(transport)
    space = await create_space(transport, account, "Traced events")
    async with traces.action("create a document") as action:
        reply = await transport.unary(
            MethodRef.of("knowledge.v1.KnowledgeService/CreateDocument"),
            knowledge_pb2.CreateDocumentRequest(space_id=space.space_id, title="Traced", content="Witnessed."),
            token=account.access_token,
            metadata=action.metadata(),
        )
    assert reply.ok, reply.details
    server = span("knowledge", kind="Server", name="CreateDocument")
    producer = span("knowledge", kind="Producer", **{"event.type": "knowledge.document.created"})
    consumer = span("activity", kind="Consumer", **{"event.type": "knowledge.document.created"})
    insert = span("activity", kind="Client", name="INSERT activity.events")
    tree = await action.trace(server, producer, consumer, insert, timeout_s=30)
    assert_path(tree, server, producer, consumer, insert)
    assert_connected(tree)
    assert_no_errors(tree)
