"""No path returns content from a space the caller cannot read.

Documents with distinctive content are seeded in spaces A and B. Alice is a member of A only:
she must never see B's content through Search (every route: Envoy's three transports and the
vector service directly), Ask (answer text and citations), or conversation history. When she is
removed from A, A's content is gone from her searches and answers as soon as the removal
returns, however busy the vector service is (access epochs: services.kit.access).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from clients.transports import ALL_TRANSPORTS, NativeGrpc, Transport, transport_for
from fixtures.accounts import Account, sign_up
from fixtures.documents import eventually, remove_member
from fixtures.knowledge import VIEWER, add_member, create_document, create_space
from services.api.chat.v1 import chat_pb2
from services.api.vector.v1 import vector_pb2
from simulations.endpoints import StackEndpoints

V, C = "vector.v1.VectorService", "chat.v1.ChatService"


@dataclass
class World:
    owner: Account
    alice: Account  # member of A only
    space_a: str
    space_b: str
    marker_a: str  # a word only A's document contains
    marker_b: str  # a word only B's document contains


@pytest.fixture(scope="module")
async def setup(stack: StackEndpoints) -> AsyncIterator[Transport]:
    transport = transport_for("grpc", stack.envoy_http, stack.envoy_grpc)
    yield transport
    await transport.aclose()


async def search(transport: Transport, account: Account, query: str, spaces: list[str] | None = None) -> list[str]:
    """The snippets Alice's search returns (any error fails the test)."""
    request = vector_pb2.SearchRequest(query=query, top_k=50, space_ids=spaces or [])
    response = (await transport.unary(f"{V}/Search", request, token=account.access_token)).unwrap()
    assert isinstance(response, vector_pb2.SearchResponse)
    return [f"{hit.space_id} {hit.snippet}" for hit in response.hits]


@pytest.fixture(scope="module")
async def world(setup: Transport) -> World:
    owner, alice = await sign_up(setup, "owner"), await sign_up(setup, "alice")
    marker_a, marker_b = f"aurora{uuid.uuid4().hex[:8]}", f"borealis{uuid.uuid4().hex[:8]}"
    space_a = (await create_space(setup, owner, "A")).space_id
    space_b = (await create_space(setup, owner, "B")).space_id
    await add_member(setup, owner, space_a, alice.user_id, VIEWER)
    await create_document(
        setup,
        owner,
        space_a,
        "Lighthouse maintenance",
        f"The {marker_a} lighthouse lamp is cleaned every spring. Keepers log each maintenance visit.",
    )
    await create_document(
        setup,
        owner,
        space_b,
        "Volcano monitoring",
        f"The {marker_b} volcano is watched by seismometers. Eruption warnings go to the harbour office.",
    )

    async def both_indexed() -> bool | None:
        found = " ".join(await search(setup, owner, f"{marker_a} {marker_b} lighthouse volcano"))
        return (marker_a in found and marker_b in found) or None

    await eventually(both_indexed, "both documents were indexed", timeout_s=30)
    return World(owner, alice, space_a, space_b, marker_a, marker_b)


@pytest.fixture(scope="module", params=[*ALL_TRANSPORTS, "direct"])
async def route(request: pytest.FixtureRequest, stack: StackEndpoints) -> AsyncIterator[Transport]:
    if request.param == "direct":
        transport: Transport = NativeGrpc(stack.service_grpc("vector"))
    else:
        transport = transport_for(request.param, stack.envoy_http, stack.envoy_grpc)
    yield transport
    await transport.aclose()


async def test_search_never_returns_another_space_s_chunks(world: World, route: Transport) -> None:
    for query in (f"{world.marker_b} volcano", "volcano eruption warnings seismometers", "harbour office"):
        hits = await search(route, world.alice, query)
        assert all(world.space_b not in hit and world.marker_b not in hit for hit in hits), hits
    assert any(world.marker_a in hit for hit in await search(route, world.alice, "lighthouse lamp cleaning"))
    refused = await route.unary(
        f"{V}/Search",
        vector_pb2.SearchRequest(query="volcano", space_ids=[world.space_b]),
        token=world.alice.access_token,
    )
    assert refused.code == grpc.StatusCode.PERMISSION_DENIED
    assert world.space_b in refused.details


@dataclass
class Answer:
    text: str
    kind: int
    citations: list[chat_pb2.Citation]


async def ask(setup: Transport, account: Account, conversation_id: str, question: str) -> Answer:
    """Everything the stream said: the full text, its kind, and every citation."""
    reply = await setup.server_stream(
        f"{C}/Ask", chat_pb2.AskRequest(conversation_id=conversation_id, question=question), token=account.access_token
    )
    assert reply.ok, reply.details
    events = [m for m in reply.messages if isinstance(m, chat_pb2.AskResponse)]
    deltas = "".join(m.delta.text for m in events if m.WhichOneof("event") == "delta")
    citations = [m.citation for m in events if m.WhichOneof("event") == "citation"]
    [complete] = [m.complete for m in events if m.WhichOneof("event") == "complete"]
    return Answer(f"{deltas}\n{complete.text}", complete.answer_kind, citations)


async def test_answers_and_history_never_carry_another_space_s_content(world: World, setup: Transport) -> None:
    create = chat_pb2.CreateConversationRequest(title="Questions")
    conversation = (await setup.unary(f"{C}/CreateConversation", create, token=world.alice.access_token)).unwrap()
    assert isinstance(conversation, chat_pb2.CreateConversationResponse)
    conversation_id = conversation.conversation.conversation_id
    for question in (f"What is the {world.marker_b} volcano?", "Who gets eruption warnings?"):
        answer = await ask(setup, world.alice, conversation_id, question)
        assert world.marker_b not in answer.text
        assert "volcano" not in answer.text.lower()
        assert all(c.space_id != world.space_b for c in answer.citations)
    history = (
        await setup.unary(
            f"{C}/ListMessages",
            chat_pb2.ListMessagesRequest(conversation_id=conversation_id),
            token=world.alice.access_token,
        )
    ).unwrap()
    assert isinstance(history, chat_pb2.ListMessagesResponse)
    for message in history.messages:
        if message.role == chat_pb2.MESSAGE_ROLE_ASSISTANT:
            assert world.marker_b not in message.text
            assert all(c.space_id != world.space_b for c in message.citations)
    scoped = chat_pb2.CreateConversationRequest(title="B only", space_ids=[world.space_b])
    refused = await setup.unary(f"{C}/CreateConversation", scoped, token=world.alice.access_token)
    assert refused.code == grpc.StatusCode.PERMISSION_DENIED


async def test_another_user_s_conversation_stays_theirs(world: World, setup: Transport) -> None:
    create = chat_pb2.CreateConversationRequest(title="Volcano questions")
    owned = (await setup.unary(f"{C}/CreateConversation", create, token=world.owner.access_token)).unwrap()
    assert isinstance(owned, chat_pb2.CreateConversationResponse)
    conversation_id = owned.conversation.conversation_id
    await ask(setup, world.owner, conversation_id, f"Tell me about the {world.marker_b} volcano")
    for method, request in (
        ("GetConversation", chat_pb2.GetConversationRequest(conversation_id=conversation_id)),
        ("ListMessages", chat_pb2.ListMessagesRequest(conversation_id=conversation_id)),
    ):
        reply = await setup.unary(f"{C}/{method}", request, token=world.alice.access_token)
        assert reply.code == grpc.StatusCode.NOT_FOUND, f"{method}: {reply.code.name}"
    stolen = await setup.server_stream(
        f"{C}/Ask",
        chat_pb2.AskRequest(conversation_id=conversation_id, question="volcano?"),
        token=world.alice.access_token,
    )
    assert stolen.code == grpc.StatusCode.NOT_FOUND


async def test_a_removed_member_loses_the_space_s_content_when_the_removal_returns(setup: Transport) -> None:
    """No wait at all: the search right after RemoveMember returns, and again after each of
    three more removals made while the vector service is busy indexing a burst of documents
    (its event consumer far behind; before access epochs, a removed member kept finding the
    space's chunks for ~30 s under such load). Adding the member back is as immediate."""
    owner, bob = await sign_up(setup, "owner"), await sign_up(setup, "bob")
    marker = f"cumulus{uuid.uuid4().hex[:8]}"
    space = (await create_space(setup, owner, "Weather")).space_id
    await add_member(setup, owner, space, bob.user_id, VIEWER)
    await create_document(setup, owner, space, "Cloud atlas", f"The {marker} cloud brings afternoon showers in summer.")

    async def bob_finds_it() -> bool:
        return any(marker in hit for hit in await search(setup, bob, f"{marker} cloud showers"))

    async def bob_found_it() -> bool | None:
        return await bob_finds_it() or None

    await eventually(bob_found_it, "bob finds the document", timeout_s=30)
    await remove_member(setup, owner, space, bob.user_id)
    assert not await bob_finds_it(), "found right after RemoveMember returned"

    busy = (await create_space(setup, owner, "Busy")).space_id
    burst = asyncio.create_task(write_documents(setup, owner, busy, count=60))
    try:
        for _ in range(3):
            await add_member(setup, owner, space, bob.user_id, VIEWER)
            assert await bob_finds_it(), "not found right after AddMember returned"
            await remove_member(setup, owner, space, bob.user_id)
            assert not await bob_finds_it(), "found right after RemoveMember returned, the indexer busy"
    finally:
        await burst

    create = chat_pb2.CreateConversationRequest(title="Weather")
    conversation = (await setup.unary(f"{C}/CreateConversation", create, token=bob.access_token)).unwrap()
    assert isinstance(conversation, chat_pb2.CreateConversationResponse)
    answer = await ask(setup, bob, conversation.conversation.conversation_id, f"What does the {marker} cloud bring?")
    assert marker not in answer.text
    assert answer.kind == chat_pb2.ANSWER_KIND_NOTHING_FOUND


async def write_documents(setup: Transport, owner: Account, space_id: str, count: int) -> None:
    """Load for the vector service: documents to chunk, embed and index, four writers at once."""

    async def writer(offset: int) -> None:
        for n in range(offset, count, 4):
            body = " ".join(f"Paragraph {n}.{p} about harbour logistics and tide tables." for p in range(40))
            await create_document(setup, owner, space_id, f"Load {n}", body)

    await asyncio.gather(*(writer(offset) for offset in range(4)))
