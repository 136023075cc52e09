"""No path returns content from a space the caller cannot read.

Documents with distinctive content are seeded in spaces A and B. Alice is a member of A only:
she must never see B's content through Search (every route: Envoy's three transports and the
vector service directly), Ask (answer text and citations), or conversation history. When she is
removed from A, A's content disappears from her searches and answers within the documented
bound (the vector service drops its cached access on the membership event: well under the 5 s
this test allows; 30 s at most, the cache's expiry).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from contracts.transports import ALL_TRANSPORTS, NativeGrpc, Transport, transport_for
from fixtures.accounts import Account, sign_up
from services.api.chat.v1 import chat_pb2
from services.api.knowledge.v1 import knowledge_pb2
from services.api.vector.v1 import vector_pb2
from simulations.endpoints import StackEndpoints

K, V, C = "knowledge.v1.KnowledgeService", "vector.v1.VectorService", "chat.v1.ChatService"
REMOVAL_BOUND_S = 5.0


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


async def create_space(setup: Transport, owner: Account, name: str) -> str:
    reply = await setup.unary(f"{K}/CreateSpace", knowledge_pb2.CreateSpaceRequest(name=name), token=owner.access_token)
    created = reply.unwrap()
    assert isinstance(created, knowledge_pb2.CreateSpaceResponse)
    return created.space.space_id


async def add_document(setup: Transport, owner: Account, space_id: str, title: str, content: str) -> None:
    request = knowledge_pb2.CreateDocumentRequest(space_id=space_id, title=title, content=content)
    assert (await setup.unary(f"{K}/CreateDocument", request, token=owner.access_token)).ok


async def search(transport: Transport, account: Account, query: str, spaces: list[str] | None = None) -> list[str]:
    """The snippets Alice's search returns (any error fails the test)."""
    request = vector_pb2.SearchRequest(query=query, top_k=50, space_ids=spaces or [])
    response = (await transport.unary(f"{V}/Search", request, token=account.access_token)).unwrap()
    assert isinstance(response, vector_pb2.SearchResponse)
    return [f"{hit.space_id} {hit.snippet}" for hit in response.hits]


async def wait_until(condition: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
async def world(setup: Transport) -> World:
    owner, alice = await sign_up(setup, "owner"), await sign_up(setup, "alice")
    marker_a, marker_b = f"aurora{uuid.uuid4().hex[:8]}", f"borealis{uuid.uuid4().hex[:8]}"
    space_a, space_b = await create_space(setup, owner, "A"), await create_space(setup, owner, "B")
    add = knowledge_pb2.AddMemberRequest(space_id=space_a, user_id=alice.user_id, role=knowledge_pb2.ROLE_VIEWER)
    assert (await setup.unary(f"{K}/AddMember", add, token=owner.access_token)).ok
    await add_document(
        setup,
        owner,
        space_a,
        "Lighthouse maintenance",
        f"The {marker_a} lighthouse lamp is cleaned every spring. Keepers log each maintenance visit.",
    )
    await add_document(
        setup,
        owner,
        space_b,
        "Volcano monitoring",
        f"The {marker_b} volcano is watched by seismometers. Eruption warnings go to the harbour office.",
    )

    async def both_indexed() -> bool:
        found = " ".join(await search(setup, owner, f"{marker_a} {marker_b} lighthouse volcano"))
        return marker_a in found and marker_b in found

    await wait_until(both_indexed)
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


async def test_a_removed_member_loses_the_space_s_content_within_the_bound(setup: Transport) -> None:
    owner, bob = await sign_up(setup, "owner"), await sign_up(setup, "bob")
    marker = f"cumulus{uuid.uuid4().hex[:8]}"
    space = await create_space(setup, owner, "Weather")
    add = knowledge_pb2.AddMemberRequest(space_id=space, user_id=bob.user_id, role=knowledge_pb2.ROLE_VIEWER)
    assert (await setup.unary(f"{K}/AddMember", add, token=owner.access_token)).ok
    await add_document(setup, owner, space, "Cloud atlas", f"The {marker} cloud brings afternoon showers in summer.")

    async def bob_finds_it() -> bool:
        return any(marker in hit for hit in await search(setup, bob, f"{marker} cloud showers"))

    await wait_until(bob_finds_it)
    remove = knowledge_pb2.RemoveMemberRequest(space_id=space, user_id=bob.user_id)
    assert (await setup.unary(f"{K}/RemoveMember", remove, token=owner.access_token)).ok
    removed_at = time.monotonic()

    async def bob_no_longer_finds_it() -> bool:
        return not await bob_finds_it()

    await wait_until(bob_no_longer_finds_it, timeout_s=REMOVAL_BOUND_S)
    print(f"access gone {time.monotonic() - removed_at:.2f} s after the removal committed")
    create = chat_pb2.CreateConversationRequest(title="Weather")
    conversation = (await setup.unary(f"{C}/CreateConversation", create, token=bob.access_token)).unwrap()
    assert isinstance(conversation, chat_pb2.CreateConversationResponse)
    answer = await ask(setup, bob, conversation.conversation.conversation_id, f"What does the {marker} cloud bring?")
    assert marker not in answer.text
    assert answer.kind == chat_pb2.ANSWER_KIND_NOTHING_FOUND
