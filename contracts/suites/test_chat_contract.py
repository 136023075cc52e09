"""Contract of chat.v1.ChatService: every RPC through Envoy over gRPC, gRPC-Web and JSON, for
success and for each documented error, with the chat.question.asked event; and the WebSocket
way of asking (/v1/chat/ws through Envoy), which is not a proto RPC.

Answers are drawn from documents written through the knowledge service and indexed by the
vector service; each test waits until its documents are searchable before asking."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from clients.transports import MethodRef, Reply, StreamReply, Transport
from clients.websocket import JsonSocket, TokenCarrier, open_socket
from contracts.expect import (
    assert_canonical_id,
    assert_recent,
    expect_error,
    expect_invalid_field,
    expect_needs_a_valid_token,
    expect_ok,
)
from contracts.registry import contract
from contracts.values import BAD_TOKENS, MALFORMED_IDS, forged_token, moment, new_id
from fixtures.accounts import Account, sign_up
from fixtures.documents import (
    PARKING_RULES,
    PASSWORD_RESET,
    PLANT_CARE,
    REVENUE_REPORT,
    remove_member,
    snippet_is_from,
    space_with_documents,
    text_of,
    wait_until_searchable,
)
from fixtures.events import EventLog
from fixtures.knowledge import VIEWER, add_member, create_document, create_space
from services.api.chat.v1 import chat_pb2
from services.api.events.v1 import events_pb2
from services.api.knowledge.v1 import knowledge_pb2
from services.kit.events import EventEnvelope
from simulations.endpoints import StackEndpoints

CREATE_CONVERSATION = MethodRef.of("chat.v1.ChatService/CreateConversation")
GET_CONVERSATION = MethodRef.of("chat.v1.ChatService/GetConversation")
LIST_CONVERSATIONS = MethodRef.of("chat.v1.ChatService/ListConversations")
ASK = MethodRef.of("chat.v1.ChatService/Ask")
LIST_MESSAGES = MethodRef.of("chat.v1.ChatService/ListMessages")

EXTRACTIVE = chat_pb2.ANSWER_KIND_EXTRACTIVE
NOTHING_FOUND = chat_pb2.ANSWER_KIND_NOTHING_FOUND
USER, ASSISTANT = chat_pb2.MESSAGE_ROLE_USER, chat_pb2.MESSAGE_ROLE_ASSISTANT
ANSWER_HEADING = "From your documents:"
FOUND_NOTHING = "I found nothing about that in your spaces"
QUOTE = re.compile(r"^> (?P<sentence>.+) \[(?P<number>\d+)\]$")
REFERENCE = re.compile(r"\[(\d+)\]")
WS_PATH = "/v1/chat/ws"
CHAT_SUBPROTOCOL = "kp.chat.v1"
UNRELATED_QUESTION = "What is the recipe for banana bread?"


# ----------------------------------------------------------------- helpers


async def create_conversation(
    transport: Transport, account: Account, space_ids: Sequence[str] = (), title: str = "Questions"
) -> chat_pb2.Conversation:
    request = chat_pb2.CreateConversationRequest(title=title, space_ids=list(space_ids))
    reply = await transport.unary(CREATE_CONVERSATION, request, token=account.access_token)
    return expect_ok(reply, chat_pb2.CreateConversationResponse).conversation


async def get_conversation(transport: Transport, account: Account, conversation_id: str) -> Reply:
    request = chat_pb2.GetConversationRequest(conversation_id=conversation_id)
    return await transport.unary(GET_CONVERSATION, request, token=account.access_token)


async def ask(transport: Transport, account: Account | None, conversation_id: str, question: str) -> StreamReply:
    request = chat_pb2.AskRequest(conversation_id=conversation_id, question=question)
    return await transport.server_stream(ASK, request, token=account.access_token if account else None, timeout=30)


async def list_messages(
    transport: Transport, account: Account, conversation_id: str, page_size: int = 0, page_token: str = ""
) -> Reply:
    request = chat_pb2.ListMessagesRequest(conversation_id=conversation_id, page_size=page_size, page_token=page_token)
    return await transport.unary(LIST_MESSAGES, request, token=account.access_token)


async def all_messages(transport: Transport, account: Account, conversation_id: str) -> list[chat_pb2.Message]:
    page = expect_ok(await list_messages(transport, account, conversation_id, 100), chat_pb2.ListMessagesResponse)
    assert page.next_page_token == ""
    return list(page.messages)


def as_reply(stream: StreamReply) -> Reply:
    """A stream that failed before its first message, as a unary Reply (for contracts.expect)."""
    assert stream.messages == [], f"{stream.transport}: the stream failed after {len(stream.messages)} messages"
    return Reply(
        stream.transport,
        stream.method,
        None,
        stream.code,
        stream.details,
        stream.http_status,
        stream.status,
        stream.metadata,
    )


@dataclass(frozen=True)
class Answer:
    """What an Ask stream carried: its deltas, its citations and its completion."""

    deltas: list[str]
    citations: list[chat_pb2.Citation]
    complete: chat_pb2.AnswerComplete

    @property
    def quotes(self) -> list[tuple[str, int]]:
        """Each quoted sentence of an extractive answer and the number of the citation it refers to."""
        lines = self.complete.text.split("\n")
        assert lines[0] == ANSWER_HEADING, self.complete.text
        quotes = []
        for line in lines[1:]:
            match = QUOTE.match(line)
            assert match, f"not a quote: {line!r}"
            quotes.append((match["sentence"], int(match["number"])))
        return quotes


def answer_of(stream: StreamReply) -> Answer:
    """The stream's answer, once its shape is checked: deltas and citations in any interleaving,
    then exactly one `complete`, last; the deltas concatenate to its text; a citation is sent
    before any text refers to its number."""
    assert stream.ok, f"{stream.transport}: {stream.code.name}: {stream.details}"
    assert not stream.truncated
    deltas: list[str] = []
    citations: list[chat_pb2.Citation] = []
    completes: list[chat_pb2.AnswerComplete] = []
    for index, message in enumerate(stream.messages):
        assert isinstance(message, chat_pb2.AskResponse)
        kind = message.WhichOneof("event")
        assert kind is not None, f"message {index} sets no event"
        assert not completes, "nothing follows `complete`"
        if kind == "delta":
            assert 1 <= len(message.delta.text) <= 2000
            for number in REFERENCE.findall(message.delta.text):
                assert 1 <= int(number) <= len(citations), f"[{number}] before its citation was sent"
            deltas.append(message.delta.text)
        elif kind == "citation":
            citations.append(message.citation)
        else:
            completes.append(message.complete)
    assert len(completes) == 1, f"{stream.transport}: {len(completes)} completes"
    complete = completes[0]
    assert "".join(deltas) == complete.text, "the deltas concatenate to the complete text"
    assert 0 <= len(complete.text) <= 20_000
    assert_canonical_id(complete.message_id)
    assert_canonical_id(complete.question_message_id)
    assert complete.message_id != complete.question_message_id
    assert len(citations) <= 20
    return Answer(deltas, citations, complete)


def assert_extractive_from(answer: Answer, documents: Sequence[knowledge_pb2.Document], first: str) -> None:
    """An extractive answer quoting, and citing, only these documents, `first` cited first."""
    by_id = {document.document_id: document for document in documents}
    complete = answer.complete
    assert complete.answer_kind == EXTRACTIVE
    assert complete.text.startswith(ANSWER_HEADING)
    assert answer.citations, "an extractive answer cites what it quotes"
    assert answer.citations[0].document_id == first
    for citation in answer.citations:
        assert citation.document_id in by_id, f"cites {citation.document_id}, not a document of the space"
        document = by_id[citation.document_id]
        assert (citation.space_id, citation.document_version) == (document.space_id, document.version)
        assert citation.chunk_index >= 0
        assert 1 <= len(citation.snippet) <= 1000
        assert snippet_is_from(citation.snippet, text_of(document)), citation.snippet
        assert -1.0 <= citation.score <= 1.0
    quotes = answer.quotes
    assert quotes, "at least one quote"
    for sentence, number in quotes:
        assert 1 <= number <= len(answer.citations)
        cited = answer.citations[number - 1]
        quoted = sentence.strip("…").strip()
        assert quoted in text_of(by_id[cited.document_id]), f"{sentence!r} is not in the document it cites"
        assert quoted in cited.snippet, f"{sentence!r} is not in the chunk of citation [{number}]"
    assert {number for _, number in quotes} == set(range(1, len(answer.citations) + 1)), "every citation is used"


def assert_nothing_found(answer: Answer) -> None:
    assert answer.complete.answer_kind == NOTHING_FOUND
    assert answer.complete.text.startswith(FOUND_NOTHING), answer.complete.text
    assert answer.citations == []


async def question_asked(events: EventLog, answer: Answer) -> tuple[EventEnvelope, events_pb2.QuestionAsked]:
    """The chat.question.asked event of this answer, with the envelope every chat event has."""

    def about(envelope: EventEnvelope) -> bool:
        if envelope.event_type != "chat.question.asked":
            return False
        return events_pb2.QuestionAsked.FromString(envelope.payload).answer_message_id == answer.complete.message_id

    found = await events.wait_for(about)
    assert found, f"no chat.question.asked event for answer {answer.complete.message_id}"
    event = found[0]
    payload = events_pb2.QuestionAsked.FromString(event.payload)
    assert (event.producer, event.partition_key) == ("chat", payload.conversation_id)
    assert dict(event.subject_ids) == {"conversation_id": payload.conversation_id}
    assert event.schema_version == 1
    assert_canonical_id(event.event_id)
    assert_recent(event.occurred_at)
    assert len(event.trace.traceparent) == 55, "the request's trace context travels with the event"
    assert payload.question_message_id == answer.complete.question_message_id
    assert int(payload.answer_kind) == int(answer.complete.answer_kind), "the same numbers in both enums"
    cited = list(dict.fromkeys(citation.document_id for citation in answer.citations))
    assert list(payload.cited_document_ids) == cited, "distinct, in first-citation order"
    return event, payload


def expect_missing_alike(theirs: Reply, their_id: str, nowhere: Reply, missing_id: str) -> None:
    """Another user's conversation is NOT_FOUND with the same message as one that does not
    exist: conversation ids cannot be probed."""
    expect_error(theirs, grpc.StatusCode.NOT_FOUND, f"conversation {their_id} does not exist")
    expect_error(nowhere, grpc.StatusCode.NOT_FOUND, f"conversation {missing_id} does not exist")
    assert theirs.details.replace(their_id, "<id>") == nowhere.details.replace(missing_id, "<id>")


def citation_fields(citation: chat_pb2.Citation) -> tuple[Any, ...]:
    return (
        citation.document_id,
        citation.space_id,
        citation.chunk_index,
        citation.document_version,
        citation.snippet,
        citation.score,
    )


# ------------------------------------------------------ CreateConversation


@contract("chat.v1.ChatService/CreateConversation")
async def test_create_conversation_scopes_it_to_readable_spaces(
    transport: Transport, setup_transport: Transport
) -> None:
    user, other = await sign_up(setup_transport), await sign_up(setup_transport)
    own = await create_space(setup_transport, user, "Own")
    viewed = await create_space(setup_transport, other, "Viewed")
    await add_member(setup_transport, other, viewed.space_id, user.user_id, VIEWER)

    request = chat_pb2.CreateConversationRequest(
        title="  Onboarding questions \n", space_ids=[viewed.space_id, own.space_id]
    )
    reply = await transport.unary(CREATE_CONVERSATION, request, token=user.access_token)
    conversation = expect_ok(reply, chat_pb2.CreateConversationResponse).conversation
    assert_canonical_id(conversation.conversation_id)
    assert (conversation.owner_id, conversation.title) == (user.user_id, "Onboarding questions"), "title trimmed"
    assert list(conversation.space_ids) == [viewed.space_id, own.space_id], "in the order given"
    assert_recent(conversation.created_at)
    assert conversation.updated_at == conversation.created_at, "no message yet"
    fetched = expect_ok(
        await get_conversation(setup_transport, user, conversation.conversation_id), chat_pb2.GetConversationResponse
    )
    assert fetched.conversation == conversation

    everywhere = await transport.unary(
        CREATE_CONVERSATION, chat_pb2.CreateConversationRequest(title="Anything"), token=user.access_token
    )
    assert list(expect_ok(everywhere, chat_pb2.CreateConversationResponse).conversation.space_ids) == [], (
        "no scope: every space readable when asking"
    )


@contract("chat.v1.ChatService/CreateConversation")
async def test_create_conversation_accepts_its_limits_counted_in_code_points(
    transport: Transport, setup_transport: Transport
) -> None:
    user = await sign_up(setup_transport)
    space = await create_space(setup_transport, user)
    title = "🚀" * 200  # 800 bytes: characters are what counts
    request = chat_pb2.CreateConversationRequest(title=f" {title} ", space_ids=[space.space_id.upper()])
    reply = await transport.unary(CREATE_CONVERSATION, request, token=user.access_token)
    conversation = expect_ok(reply, chat_pb2.CreateConversationResponse).conversation
    assert conversation.title == title
    assert list(conversation.space_ids) == [space.space_id], "ids come back in canonical lower case"


@contract("chat.v1.ChatService/CreateConversation", "INVALID_ARGUMENT")
@pytest.mark.parametrize(
    ("field", "title", "space_ids"),
    [
        ("title", "", []),
        ("title", " \t\n ", []),
        ("title", "t" * 201, []),
        ("title", "🚀" * 201, []),
        ("title", "Nul\x00inside", []),
        ("space_ids", "Questions", [new_id() for _ in range(101)]),
        *(("space_ids[0]", "Questions", [malformed]) for malformed in MALFORMED_IDS),
        ("space_ids[1]", "Questions", ["7c1e5f0a-2b3c-4d5e-8f90-a1b2c3d4e5f6"] * 2),
    ],
)
async def test_create_conversation_rejects_a_title_or_scope_beyond_its_limit(
    transport: Transport, setup_transport: Transport, field: str, title: str, space_ids: list[str]
) -> None:
    user = await sign_up(setup_transport)
    request = chat_pb2.CreateConversationRequest(title=title, space_ids=space_ids)
    expect_invalid_field(await transport.unary(CREATE_CONVERSATION, request, token=user.access_token), field)


@contract("chat.v1.ChatService/CreateConversation", "UNAUTHENTICATED")
async def test_create_conversation_needs_a_valid_token(transport: Transport) -> None:
    request = chat_pb2.CreateConversationRequest(title="Questions")
    await expect_needs_a_valid_token(transport, CREATE_CONVERSATION, request)


@contract("chat.v1.ChatService/CreateConversation", "PERMISSION_DENIED")
async def test_create_conversation_over_a_space_the_caller_cannot_read_is_denied_naming_it(
    transport: Transport, setup_transport: Transport
) -> None:
    user, other = await sign_up(setup_transport), await sign_up(setup_transport)
    own = await create_space(setup_transport, user, "Own")
    foreign = await create_space(setup_transport, other, "Not shared")
    missing = new_id()

    async def create(space_ids: list[str]) -> Reply:
        request = chat_pb2.CreateConversationRequest(title="Questions", space_ids=space_ids)
        return await transport.unary(CREATE_CONVERSATION, request, token=user.access_token)

    there, nowhere = await create([own.space_id, foreign.space_id]), await create([missing])
    expect_error(there, grpc.StatusCode.PERMISSION_DENIED, f"space {foreign.space_id}", "or it does not exist")
    expect_error(nowhere, grpc.StatusCode.PERMISSION_DENIED, f"space {missing}")
    assert there.details.replace(foreign.space_id, "<space>") == nowhere.details.replace(missing, "<space>")
    assert own.space_id not in there.details
    listed = await setup_transport.unary(
        LIST_CONVERSATIONS, chat_pb2.ListConversationsRequest(), token=user.access_token
    )
    assert list(expect_ok(listed, chat_pb2.ListConversationsResponse).conversations) == [], "nothing was created"


# --------------------------------------------------------- GetConversation


@contract("chat.v1.ChatService/GetConversation")
async def test_get_conversation_returns_it_with_its_latest_activity(
    transport: Transport, setup_transport: Transport
) -> None:
    user = await sign_up(setup_transport)
    space = await create_space(setup_transport, user)
    created = await create_conversation(setup_transport, user, [space.space_id], "Budget")

    fetched = expect_ok(
        await get_conversation(transport, user, created.conversation_id), chat_pb2.GetConversationResponse
    )
    assert fetched.conversation == created
    answer = answer_of(await ask(setup_transport, user, created.conversation_id, UNRELATED_QUESTION))
    [_, stored] = await all_messages(setup_transport, user, created.conversation_id)
    assert stored.message_id == answer.complete.message_id
    after = expect_ok(
        await get_conversation(transport, user, created.conversation_id.upper()), chat_pb2.GetConversationResponse
    ).conversation
    assert (after.conversation_id, after.title, after.created_at) == (
        created.conversation_id,
        "Budget",
        created.created_at,
    )
    assert after.updated_at == stored.created_at, "updated_at is the time of the last message"


@contract("chat.v1.ChatService/GetConversation", "INVALID_ARGUMENT")
@pytest.mark.parametrize("conversation_id", MALFORMED_IDS)
async def test_get_conversation_needs_a_uuid(
    transport: Transport, setup_transport: Transport, conversation_id: str
) -> None:
    user = await sign_up(setup_transport)
    expect_invalid_field(await get_conversation(transport, user, conversation_id), "conversation_id")


@contract("chat.v1.ChatService/GetConversation", "UNAUTHENTICATED")
async def test_get_conversation_needs_a_valid_token(transport: Transport) -> None:
    request = chat_pb2.GetConversationRequest(conversation_id=new_id())
    await expect_needs_a_valid_token(transport, GET_CONVERSATION, request)


@contract("chat.v1.ChatService/GetConversation", "NOT_FOUND")
async def test_get_conversation_of_another_user_looks_like_a_missing_one(
    transport: Transport, setup_transport: Transport
) -> None:
    owner, other = await sign_up(setup_transport), await sign_up(setup_transport)
    conversation = await create_conversation(setup_transport, owner)
    missing = new_id()
    theirs = await get_conversation(transport, other, conversation.conversation_id)
    nowhere = await get_conversation(transport, owner, missing)
    expect_missing_alike(theirs, conversation.conversation_id, nowhere, missing)


# ------------------------------------------------------- ListConversations


@contract("chat.v1.ChatService/ListConversations")
async def test_list_conversations_pages_through_the_caller_s_most_recently_active_first(
    transport: Transport, setup_transport: Transport
) -> None:
    user, other = await sign_up(setup_transport), await sign_up(setup_transport)
    created = [await create_conversation(setup_transport, user, title=f"Thread {number}") for number in range(5)]
    await create_conversation(setup_transport, other, title="Someone else's")
    answer_of(await ask(setup_transport, user, created[1].conversation_id, UNRELATED_QUESTION))
    expected = [created[1].conversation_id, *(c.conversation_id for c in reversed(created) if c != created[1])]

    pages: list[list[chat_pb2.Conversation]] = []
    token = ""
    while True:
        request = chat_pb2.ListConversationsRequest(page_size=2, page_token=token)
        page = expect_ok(
            await transport.unary(LIST_CONVERSATIONS, request, token=user.access_token),
            chat_pb2.ListConversationsResponse,
        )
        pages.append(list(page.conversations))
        token = page.next_page_token
        if not token:
            break
        assert len(pages) < 10
    assert [len(page) for page in pages] == [2, 2, 1], "full pages, and no empty page at the end"
    listed = [conversation for page in pages for conversation in page]
    assert [conversation.conversation_id for conversation in listed] == expected, "by updated_at, newest first"
    assert {conversation.owner_id for conversation in listed} == {user.user_id}
    stamps = [moment(conversation.updated_at) for conversation in listed]
    assert stamps == sorted(stamps, reverse=True)

    everything = expect_ok(
        await transport.unary(LIST_CONVERSATIONS, chat_pb2.ListConversationsRequest(), token=user.access_token),
        chat_pb2.ListConversationsResponse,
    )
    assert list(everything.conversations) == listed
    assert everything.next_page_token == ""


@contract("chat.v1.ChatService/ListConversations")
async def test_list_conversations_pages_by_20_by_default(transport: Transport, setup_transport: Transport) -> None:
    user = await sign_up(setup_transport)
    created = [await create_conversation(setup_transport, user, title=f"Thread {number}") for number in range(21)]
    first = expect_ok(
        await transport.unary(LIST_CONVERSATIONS, chat_pb2.ListConversationsRequest(), token=user.access_token),
        chat_pb2.ListConversationsResponse,
    )
    assert len(first.conversations) == 20
    request = chat_pb2.ListConversationsRequest(page_size=100, page_token=first.next_page_token)
    rest = expect_ok(
        await transport.unary(LIST_CONVERSATIONS, request, token=user.access_token), chat_pb2.ListConversationsResponse
    )
    assert (len(rest.conversations), rest.next_page_token) == (1, ""), "page_size may change between pages"
    listed = [conversation.conversation_id for conversation in [*first.conversations, *rest.conversations]]
    assert listed == [conversation.conversation_id for conversation in reversed(created)]


@contract("chat.v1.ChatService/ListConversations", "INVALID_ARGUMENT")
@pytest.mark.parametrize("page_size", [101, -1])
async def test_list_conversations_page_size_is_1_to_100(
    transport: Transport, setup_transport: Transport, page_size: int
) -> None:
    user = await sign_up(setup_transport)
    request = chat_pb2.ListConversationsRequest(page_size=page_size)
    expect_invalid_field(await transport.unary(LIST_CONVERSATIONS, request, token=user.access_token), "page_size")


@contract("chat.v1.ChatService/ListConversations", "INVALID_ARGUMENT")
async def test_list_conversations_takes_only_its_own_page_tokens(
    transport: Transport, setup_transport: Transport
) -> None:
    user, other = await sign_up(setup_transport), await sign_up(setup_transport)
    for account in (user, other):
        for number in range(2):
            await create_conversation(setup_transport, account, title=f"Thread {number}")
    conversation = await create_conversation(setup_transport, user)
    answer_of(await ask(setup_transport, user, conversation.conversation_id, UNRELATED_QUESTION))

    async def first_token(account: Account) -> str:
        page = expect_ok(
            await setup_transport.unary(
                LIST_CONVERSATIONS, chat_pb2.ListConversationsRequest(page_size=1), token=account.access_token
            ),
            chat_pb2.ListConversationsResponse,
        )
        assert page.next_page_token
        return page.next_page_token

    messages_page = expect_ok(
        await list_messages(setup_transport, user, conversation.conversation_id, 1), chat_pb2.ListMessagesResponse
    )
    for token in ("not-a-page-token", await first_token(other), messages_page.next_page_token):
        request = chat_pb2.ListConversationsRequest(page_size=1, page_token=token)
        reply = await transport.unary(LIST_CONVERSATIONS, request, token=user.access_token)
        expect_invalid_field(reply, "page_token")


@contract("chat.v1.ChatService/ListConversations", "UNAUTHENTICATED")
async def test_list_conversations_needs_a_valid_token(transport: Transport) -> None:
    await expect_needs_a_valid_token(transport, LIST_CONVERSATIONS, chat_pb2.ListConversationsRequest())


# --------------------------------------------------------------------- Ask


@contract("chat.v1.ChatService/Ask")
async def test_ask_streams_an_extractive_answer_citing_the_documents_stores_it_and_emits_the_event(
    transport: Transport, setup_transport: Transport, chat_events: EventLog
) -> None:
    user = await sign_up(setup_transport)
    texts = [PASSWORD_RESET, REVENUE_REPORT, PLANT_CARE]
    space, documents = await space_with_documents(setup_transport, user, texts)
    conversation = await create_conversation(setup_transport, user, [space.space_id])

    stream = await ask(transport, user, conversation.conversation_id, "  How do I reset my password?\n")
    answer = answer_of(stream)
    assert_extractive_from(answer, documents, first=documents[0].document_id)
    assert {citation.document_id for citation in answer.citations} == {documents[0].document_id}, (
        "only the relevant document is quoted"
    )
    assert any("reset link" in sentence for sentence, _ in answer.quotes), answer.complete.text

    [question, stored] = await all_messages(setup_transport, user, conversation.conversation_id)
    assert (question.message_id, question.role, question.text) == (
        answer.complete.question_message_id,
        USER,
        "How do I reset my password?",
    )
    assert (question.answer_kind, list(question.citations)) == (chat_pb2.ANSWER_KIND_UNSPECIFIED, [])
    assert (stored.message_id, stored.role, stored.text, stored.answer_kind) == (
        answer.complete.message_id,
        ASSISTANT,
        answer.complete.text,
        EXTRACTIVE,
    )
    assert [citation_fields(c) for c in stored.citations] == [citation_fields(c) for c in answer.citations]
    assert {stored.conversation_id, question.conversation_id} == {conversation.conversation_id}
    assert moment(question.created_at) < moment(stored.created_at)

    event, payload = await question_asked(chat_events, answer)
    assert event.actor_user_id == user.user_id
    assert (payload.conversation_id, payload.question) == (conversation.conversation_id, "How do I reset my password?")
    assert list(payload.space_ids) == [space.space_id]
    assert payload.answer_kind == events_pb2.ANSWER_KIND_EXTRACTIVE
    assert list(payload.cited_document_ids) == [documents[0].document_id]


@contract("chat.v1.ChatService/Ask")
async def test_ask_answers_nothing_found_without_citations_when_nothing_is_relevant(
    transport: Transport, setup_transport: Transport, chat_events: EventLog
) -> None:
    user = await sign_up(setup_transport)
    space, _ = await space_with_documents(setup_transport, user, [PASSWORD_RESET, REVENUE_REPORT])
    empty = await create_space(setup_transport, user, "Empty")
    for space_id, question in ((space.space_id, UNRELATED_QUESTION), (empty.space_id, "How do I reset my password?")):
        conversation = await create_conversation(setup_transport, user, [space_id])
        answer = answer_of(await ask(transport, user, conversation.conversation_id, question))
        assert_nothing_found(answer)

        [_, stored] = await all_messages(setup_transport, user, conversation.conversation_id)
        assert (stored.message_id, stored.answer_kind, stored.text) == (
            answer.complete.message_id,
            NOTHING_FOUND,
            answer.complete.text,
        )
        assert list(stored.citations) == []
        _, payload = await question_asked(chat_events, answer)
        assert (list(payload.space_ids), payload.answer_kind) == ([space_id], events_pb2.ANSWER_KIND_NOTHING_FOUND)
        assert list(payload.cited_document_ids) == []


@contract("chat.v1.ChatService/Ask")
async def test_ask_without_a_scope_searches_every_space_the_asker_can_read(
    transport: Transport, setup_transport: Transport, chat_events: EventLog
) -> None:
    user, other = await sign_up(setup_transport), await sign_up(setup_transport)
    own, own_documents = await space_with_documents(setup_transport, user, [PASSWORD_RESET], "Own")
    shared = await create_space(setup_transport, other, "Shared")
    await add_member(setup_transport, other, shared.space_id, user.user_id, VIEWER)
    report = await create_document(
        setup_transport, other, shared.space_id, REVENUE_REPORT.title, REVENUE_REPORT.content
    )
    await wait_until_searchable(setup_transport, user, [report])
    conversation = await create_conversation(setup_transport, user)

    answer = answer_of(await ask(transport, user, conversation.conversation_id, "How much did revenue grow?"))
    assert_extractive_from(answer, [*own_documents, report], first=report.document_id)
    _, payload = await question_asked(chat_events, answer)
    assert sorted(payload.space_ids) == sorted([own.space_id, shared.space_id])


@contract("chat.v1.ChatService/Ask")
async def test_ask_silently_skips_a_space_the_asker_can_no_longer_read(
    transport: Transport, setup_transport: Transport, chat_events: EventLog
) -> None:
    user, other = await sign_up(setup_transport), await sign_up(setup_transport)
    kept = await create_space(setup_transport, user, "Kept")
    lost = await create_space(setup_transport, other, "Lost")
    await add_member(setup_transport, other, lost.space_id, user.user_id, VIEWER)
    parking = await create_document(setup_transport, user, kept.space_id, PARKING_RULES.title, PARKING_RULES.content)
    guide = await create_document(setup_transport, other, lost.space_id, PASSWORD_RESET.title, PASSWORD_RESET.content)
    await wait_until_searchable(setup_transport, user, [parking, guide])
    conversation = await create_conversation(setup_transport, user, [lost.space_id, kept.space_id])
    question = "How do I reset my password?"

    before = answer_of(await ask(setup_transport, user, conversation.conversation_id, question))
    assert_extractive_from(before, [guide], first=guide.document_id)
    await remove_member(setup_transport, other, lost.space_id, user.user_id)

    answer = answer_of(await ask(transport, user, conversation.conversation_id, question))
    assert_nothing_found(answer)
    assert "reset link" not in answer.complete.text, "nothing of the lost space is quoted"
    _, payload = await question_asked(chat_events, answer)
    assert list(payload.space_ids) == [kept.space_id], "only the spaces still readable were searched"


@contract("chat.v1.ChatService/Ask", "INVALID_ARGUMENT")
@pytest.mark.parametrize(
    ("field", "conversation_id", "question"),
    [
        *(("conversation_id", malformed, "How do I reset my password?") for malformed in MALFORMED_IDS),
        ("question", None, ""),
        ("question", None, " \t\n "),
        ("question", None, "q" * 2001),
        ("question", None, "🚀" * 2001),
        ("question", None, "Why\x00?"),
    ],
)
async def test_ask_rejects_a_bad_conversation_id_or_question(
    transport: Transport, setup_transport: Transport, field: str, conversation_id: str | None, question: str
) -> None:
    user = await sign_up(setup_transport)
    conversation = await create_conversation(setup_transport, user)
    stream = await ask(transport, user, conversation_id or conversation.conversation_id, question)
    expect_invalid_field(as_reply(stream), field)
    assert await all_messages(setup_transport, user, conversation.conversation_id) == [], "nothing was stored"


@contract("chat.v1.ChatService/Ask")
async def test_ask_accepts_a_question_of_2000_code_points(transport: Transport, setup_transport: Transport) -> None:
    user = await sign_up(setup_transport)
    conversation = await create_conversation(setup_transport, user)
    question = "é" * 2000
    answer = answer_of(await ask(transport, user, conversation.conversation_id, f"  {question} "))
    assert_nothing_found(answer)
    [stored, _] = await all_messages(setup_transport, user, conversation.conversation_id)
    assert stored.text == question


@contract("chat.v1.ChatService/Ask", "UNAUTHENTICATED")
async def test_ask_needs_a_valid_token(transport: Transport) -> None:
    request = chat_pb2.AskRequest(conversation_id=new_id(), question="How do I reset my password?")
    for token in (*BAD_TOKENS, forged_token()):
        stream = await transport.server_stream(ASK, request, token=token)
        expect_error(as_reply(stream), grpc.StatusCode.UNAUTHENTICATED)


@contract("chat.v1.ChatService/Ask", "NOT_FOUND")
async def test_ask_in_another_user_s_conversation_looks_like_a_missing_one(
    transport: Transport, setup_transport: Transport
) -> None:
    owner, other = await sign_up(setup_transport), await sign_up(setup_transport)
    space, _ = await space_with_documents(setup_transport, owner, [PASSWORD_RESET])
    await add_member(setup_transport, owner, space.space_id, other.user_id, VIEWER)
    conversation = await create_conversation(setup_transport, owner, [space.space_id])
    missing = new_id()

    theirs = as_reply(await ask(transport, other, conversation.conversation_id, "How do I reset my password?"))
    nowhere = as_reply(await ask(transport, owner, missing, "How do I reset my password?"))
    expect_missing_alike(theirs, conversation.conversation_id, nowhere, missing)
    assert await all_messages(setup_transport, owner, conversation.conversation_id) == [], "nothing was stored"


# ------------------------------------------------------------ ListMessages


@contract("chat.v1.ChatService/ListMessages")
async def test_list_messages_pages_through_questions_and_answers_oldest_first(
    transport: Transport, setup_transport: Transport
) -> None:
    user = await sign_up(setup_transport)
    space, documents = await space_with_documents(setup_transport, user, [PASSWORD_RESET, REVENUE_REPORT])
    conversation = await create_conversation(setup_transport, user, [space.space_id])
    asked = [
        (
            "How do I reset my password?",
            answer_of(await ask(setup_transport, user, conversation.conversation_id, "How do I reset my password?")),
        ),
        (
            UNRELATED_QUESTION,
            answer_of(await ask(setup_transport, user, conversation.conversation_id, UNRELATED_QUESTION)),
        ),
        (
            "How much did revenue grow?",
            answer_of(await ask(setup_transport, user, conversation.conversation_id, "How much did revenue grow?")),
        ),
    ]

    pages: list[list[chat_pb2.Message]] = []
    token = ""
    while True:
        page = expect_ok(
            await list_messages(transport, user, conversation.conversation_id, 4, token), chat_pb2.ListMessagesResponse
        )
        pages.append(list(page.messages))
        token = page.next_page_token
        if not token:
            break
        assert len(pages) < 10
    assert [len(page) for page in pages] == [4, 2]
    listed = [message for page in pages for message in page]
    expected_ids = [
        message_id
        for _, answer in asked
        for message_id in (answer.complete.question_message_id, answer.complete.message_id)
    ]
    assert [message.message_id for message in listed] == expected_ids, "oldest first"
    stamps = [moment(message.created_at) for message in listed]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)
    for (question_text, answer), question, stored in zip(asked, listed[::2], listed[1::2], strict=True):
        assert (question.role, question.text, question.answer_kind) == (USER, question_text, 0)
        assert list(question.citations) == []
        assert (stored.role, stored.text, stored.answer_kind) == (
            ASSISTANT,
            answer.complete.text,
            answer.complete.answer_kind,
        )
        assert [citation_fields(c) for c in stored.citations] == [citation_fields(c) for c in answer.citations]
    assert [message.answer_kind for message in listed[1::2]] == [EXTRACTIVE, NOTHING_FOUND, EXTRACTIVE]
    assert listed[5].citations[0].document_id == documents[1].document_id

    everything = expect_ok(
        await list_messages(transport, user, conversation.conversation_id), chat_pb2.ListMessagesResponse
    )
    assert (list(everything.messages), everything.next_page_token) == (listed, "")
    fresh = await create_conversation(setup_transport, user)
    empty = expect_ok(await list_messages(transport, user, fresh.conversation_id), chat_pb2.ListMessagesResponse)
    assert (list(empty.messages), empty.next_page_token) == ([], "")


@contract("chat.v1.ChatService/ListMessages")
async def test_list_messages_pages_by_20_by_default(transport: Transport, setup_transport: Transport) -> None:
    user = await sign_up(setup_transport)  # in no space: each question is answered "nothing found" at once
    conversation = await create_conversation(setup_transport, user)
    answers = [
        answer_of(await ask(setup_transport, user, conversation.conversation_id, f"Question {number}?"))
        for number in range(11)
    ]
    first = expect_ok(await list_messages(transport, user, conversation.conversation_id), chat_pb2.ListMessagesResponse)
    assert len(first.messages) == 20
    rest = expect_ok(
        await list_messages(transport, user, conversation.conversation_id, 0, first.next_page_token),
        chat_pb2.ListMessagesResponse,
    )
    assert (len(rest.messages), rest.next_page_token) == (2, "")
    assert [message.message_id for message in [*first.messages, *rest.messages]] == [
        message_id
        for answer in answers
        for message_id in (answer.complete.question_message_id, answer.complete.message_id)
    ]


@contract("chat.v1.ChatService/ListMessages", "INVALID_ARGUMENT")
@pytest.mark.parametrize(
    ("field", "changes"),
    [
        *(("conversation_id", {"conversation_id": malformed}) for malformed in MALFORMED_IDS),
        ("page_size", {"page_size": 101}),
        ("page_size", {"page_size": -1}),
        ("page_token", {"page_token": "not-a-page-token"}),
    ],
)
async def test_list_messages_rejects_a_bad_id_or_paging(
    transport: Transport, setup_transport: Transport, field: str, changes: dict[str, Any]
) -> None:
    user = await sign_up(setup_transport)
    conversation = await create_conversation(setup_transport, user)
    fields = {"conversation_id": conversation.conversation_id, **changes}
    reply = await transport.unary(LIST_MESSAGES, chat_pb2.ListMessagesRequest(**fields), token=user.access_token)
    expect_invalid_field(reply, field)


@contract("chat.v1.ChatService/ListMessages", "INVALID_ARGUMENT")
async def test_a_message_page_token_is_only_valid_for_its_conversation(
    transport: Transport, setup_transport: Transport
) -> None:
    user = await sign_up(setup_transport)
    first, second = await create_conversation(setup_transport, user), await create_conversation(setup_transport, user)
    for conversation in (first, second):
        answer_of(await ask(setup_transport, user, conversation.conversation_id, UNRELATED_QUESTION))
    of_first = expect_ok(
        await list_messages(setup_transport, user, first.conversation_id, 1), chat_pb2.ListMessagesResponse
    ).next_page_token
    of_conversations = expect_ok(
        await setup_transport.unary(
            LIST_CONVERSATIONS, chat_pb2.ListConversationsRequest(page_size=1), token=user.access_token
        ),
        chat_pb2.ListConversationsResponse,
    ).next_page_token
    assert of_first
    assert of_conversations
    for token in (of_first, of_conversations):
        reply = await list_messages(transport, user, second.conversation_id, 1, token)
        expect_invalid_field(reply, "page_token")


@contract("chat.v1.ChatService/ListMessages", "UNAUTHENTICATED")
async def test_list_messages_needs_a_valid_token(transport: Transport) -> None:
    request = chat_pb2.ListMessagesRequest(conversation_id=new_id())
    await expect_needs_a_valid_token(transport, LIST_MESSAGES, request)


@contract("chat.v1.ChatService/ListMessages", "NOT_FOUND")
async def test_list_messages_of_another_user_s_conversation_looks_like_a_missing_one(
    transport: Transport, setup_transport: Transport
) -> None:
    owner, other = await sign_up(setup_transport), await sign_up(setup_transport)
    conversation = await create_conversation(setup_transport, owner)
    answer_of(await ask(setup_transport, owner, conversation.conversation_id, UNRELATED_QUESTION))
    missing = new_id()
    theirs = await list_messages(transport, other, conversation.conversation_id)
    nowhere = await list_messages(transport, owner, missing)
    expect_missing_alike(theirs, conversation.conversation_id, nowhere, missing)


# ---------------------------------------------------------- the WebSocket


def direct_socket_base(stack: StackEndpoints) -> str:
    """The chat service's own WebSocket port, bypassing Envoy."""
    return f"http://{stack.of('chat')['ws']}"


async def ws_ask(socket: JsonSocket, request_id: str, conversation_id: str, question: str) -> list[dict[str, Any]]:
    """Everything the socket sends back for one ask, up to its `complete` or `error`."""
    await socket.send(
        {"type": "ask", "request_id": request_id, "conversation_id": conversation_id, "question": question}
    )
    events: list[dict[str, Any]] = []
    while True:
        event = await socket.receive()
        assert event["request_id"] == request_id, event
        events.append(event)
        if event["type"] in ("complete", "error"):
            return events


def assert_ws_answer(events: list[dict[str, Any]], document: knowledge_pb2.Document) -> dict[str, Any]:
    """Deltas and numbered citations, then one `complete` whose text the deltas make up."""
    *updates, complete = events
    assert complete["type"] == "complete", complete
    assert {event["type"] for event in updates} <= {"delta", "citation"}
    citations = [event for event in updates if event["type"] == "citation"]
    assert [citation["number"] for citation in citations] == list(range(1, len(citations) + 1))
    assert citations
    assert {citation["document_id"] for citation in citations} == {document.document_id}
    for citation in citations:
        assert (citation["space_id"], citation["document_version"]) == (document.space_id, document.version)
        assert citation["chunk_index"] >= 0
        assert -1.0 <= citation["score"] <= 1.0
        assert snippet_is_from(citation["snippet"], text_of(document))
    assert "".join(event["text"] for event in updates if event["type"] == "delta") == complete["text"]
    assert complete["answer_kind"] == "ANSWER_KIND_EXTRACTIVE"
    assert complete["text"].startswith(ANSWER_HEADING)
    assert_canonical_id(complete["message_id"])
    assert_canonical_id(complete["question_message_id"])
    return complete


async def test_ask_over_the_websocket_through_envoy_streams_the_answer(
    stack: StackEndpoints, setup_transport: Transport
) -> None:
    user = await sign_up(setup_transport)
    space, [guide, _] = await space_with_documents(setup_transport, user, [PASSWORD_RESET, REVENUE_REPORT])
    conversation = await create_conversation(setup_transport, user, [space.space_id])

    answers = []
    for carried_in in ("subprotocol", "header", "query"):
        async with open_socket(
            stack.envoy_http, WS_PATH, user.access_token, CHAT_SUBPROTOCOL, carried_in=carried_in
        ) as socket:
            events = await ws_ask(socket, carried_in, conversation.conversation_id, "How do I reset my password?")
            answers.append(assert_ws_answer(events, guide))

    stored = await all_messages(setup_transport, user, conversation.conversation_id)
    assert [message.message_id for message in stored] == [
        message_id for answer in answers for message_id in (answer["question_message_id"], answer["message_id"])
    ], "the same use case as gRPC Ask: both messages of each ask stored"
    assert [message.text for message in stored[1::2]] == [answer["text"] for answer in answers]


async def test_the_websocket_refuses_a_missing_or_bad_token(stack: StackEndpoints) -> None:
    """Envoy refuses the upgrade itself (HTTP 401) before the chat service sees it; the chat
    service, reached directly, accepts the upgrade and closes the socket with 4401."""
    for token in (*BAD_TOKENS, forged_token()):
        carried_in: TokenCarrier = "query"  # a forged or empty token is no valid subprotocol token
        with pytest.raises(InvalidStatus) as refused:
            async with open_socket(stack.envoy_http, WS_PATH, token, CHAT_SUBPROTOCOL, carried_in):
                pass
        assert refused.value.response.status_code == 401, token

        async with open_socket(direct_socket_base(stack), WS_PATH, token, CHAT_SUBPROTOCOL, carried_in) as socket:
            with pytest.raises(ConnectionClosedError) as closed:
                await socket.receive()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4401, closed.value.rcvd
        assert closed.value.rcvd.reason, "the close says why"


async def test_the_websocket_answers_a_bad_message_with_an_error_and_stays_usable(
    stack: StackEndpoints, setup_transport: Transport
) -> None:
    user, other = await sign_up(setup_transport), await sign_up(setup_transport)
    space, [guide] = await space_with_documents(setup_transport, user, [PASSWORD_RESET])
    conversation = await create_conversation(setup_transport, user, [space.space_id])
    theirs = await create_conversation(setup_transport, other)

    async with open_socket(stack.envoy_http, WS_PATH, user.access_token, CHAT_SUBPROTOCOL) as socket:
        for raw, request_id, field in (
            ("this is not JSON", None, "message"),
            ("[1, 2]", None, "message"),
            (json.dumps({"type": "shout", "request_id": "r0"}), "r0", "type"),
            (json.dumps({"type": "ask", "conversation_id": conversation.conversation_id}), None, "request_id"),
            (json.dumps({"type": "ask", "request_id": "r1", "question": 42}), "r1", "question"),
        ):
            await socket.send(raw)
            error = await socket.receive()
            assert (error["type"], error["code"], error["request_id"], error["field"]) == (
                "error",
                "INVALID_ARGUMENT",
                request_id,
                field,
            ), error
            assert error["message"]
        await socket.send(b"\x00binary")
        assert (await socket.receive())["field"] == "message"

        [invalid] = await ws_ask(socket, "r2", "not-a-uuid", "How do I reset my password?")
        assert (invalid["type"], invalid["code"], invalid["field"]) == ("error", "INVALID_ARGUMENT", "conversation_id")
        [missing] = await ws_ask(socket, "r3", theirs.conversation_id, "How do I reset my password?")
        assert (missing["type"], missing["code"]) == ("error", "NOT_FOUND"), "another user's conversation"
        assert "field" not in missing

        complete = assert_ws_answer(
            await ws_ask(socket, "r2", conversation.conversation_id, "How do I reset my password?"), guide
        )
    [_, stored] = await all_messages(setup_transport, user, conversation.conversation_id)
    assert stored.message_id == complete["message_id"]
