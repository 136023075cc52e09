"""services.chat.service: the Ask use case step by step, against in-memory stand-ins for the
store, the knowledge service and the vector service (PostgreSQL and the peers have their own
tests; here the rules of asking are checked): the question is stored first, only readable
spaces are searched, the answer streams within the contract and is stored with its event
before `complete`, and failures leave only the question behind."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from services.api.events.v1 import events_pb2
from services.chat.composer import ExtractiveComposer
from services.chat.domain import (
    NOTHING_FOUND_TEXT,
    AnswerComplete,
    AnswerDelta,
    AnswerKind,
    AskUpdate,
    Citation,
    Conversation,
    Message,
    MessageRole,
    RetrievedChunk,
)
from services.chat.repository import ChatRepository
from services.chat.service import SEARCH_TOP_K, ChatService
from services.kit.db import SessionFactory
from services.kit.errors import NotFound, PermissionDenied, Unavailable
from services.kit.events import EventEnvelope
from services.kit.pagination import Cursor

OWNER = "00000000-0000-4000-8000-0000000000a1"
STRANGER = "00000000-0000-4000-8000-0000000000b2"
SPACE_A = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
SPACE_B = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
SPACE_C = "cccccccc-cccc-4ccc-8ccc-cccccccccccc"
START = datetime(2025, 7, 26, 9, 0, tzinfo=UTC)

REFUND_CHUNK = RetrievedChunk(
    "11111111-1111-4111-8111-111111111111", SPACE_A, 2, 0, "Refunds are paid within 14 days of the request.", 0.8
)
SECRET_CHUNK = RetrievedChunk(
    "99999999-9999-4999-8999-999999999999", SPACE_C, 1, 0, "Refunds for executives are paid the same day.", 0.9
)


class FakeSession:
    """A session whose transaction does nothing; it keeps the events recorded in it."""

    def __init__(self, events: list[EventEnvelope]) -> None:
        self.events = events

    async def __aenter__(self) -> FakeSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def begin(self) -> FakeSession:
        return self

    async def execute(self, statement: Any) -> None:
        # Only the outbox writes through the session itself here (services.kit.outbox).
        self.events.append(EventEnvelope.FromString(statement.compile().params["envelope"]))


class MemoryRepository(ChatRepository):
    """The repository's contract, in memory."""

    def __init__(self) -> None:
        self.conversations: dict[str, Conversation] = {}
        self.messages: list[Message] = []

    async def add_conversation(self, session: Any, conversation: Conversation) -> None:
        self.conversations[conversation.conversation_id] = conversation

    async def conversation_of_owner(
        self, session: Any, conversation_id: str, owner_id: str, *, for_update: bool = False
    ) -> Conversation | None:
        found = self.conversations.get(conversation_id)
        return found if found is not None and found.owner_id == owner_id else None

    async def touch(self, session: Any, conversation_id: str, at: datetime) -> None:
        self.conversations[conversation_id] = dataclasses.replace(self.conversations[conversation_id], updated_at=at)

    async def add_message(self, session: Any, message: Message) -> None:
        self.messages.append(message)

    async def messages_in(self, session: Any, conversation_id: str, after: Cursor | None, limit: int) -> list[Message]:
        return [message for message in self.messages if message.conversation_id == conversation_id][:limit]


class Access:
    """The knowledge service: `readable` answers, one per call (the last one repeats)."""

    def __init__(self, *readable: set[str]) -> None:
        self.answers = list(readable)

    async def can_read(self, user_id: str, space_id: str) -> bool:
        return space_id in self.answers[0]

    async def readable_spaces(self, user_id: str) -> set[str]:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class Search:
    """The vector service: returns `chunks`, or raises the next of `failures`."""

    def __init__(self, chunks: Sequence[RetrievedChunk] = (), failures: Sequence[Exception] = ()) -> None:
        self.chunks = list(chunks)
        self.failures = list(failures)
        self.calls: list[tuple[str, list[str], int]] = []
        self.messages_at_search: list[Message] = []
        self.repository: MemoryRepository | None = None

    async def search(self, query: str, space_ids: Sequence[str], top_k: int) -> list[RetrievedChunk]:
        self.calls.append((query, list(space_ids), top_k))
        if self.repository is not None:
            self.messages_at_search = list(self.repository.messages)
        if self.failures:
            raise self.failures.pop(0)
        return self.chunks


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now  # a clock that never moves: message times must still increase


@dataclasses.dataclass
class Chat:
    service: ChatService
    repository: MemoryRepository
    search: Search
    events: list[EventEnvelope]
    commits: list[str]


def chat(access: Access, search: Search) -> Chat:
    repository = MemoryRepository()
    search.repository = repository
    events: list[EventEnvelope] = []
    commits: list[str] = []
    service = ChatService(
        sessions=cast(SessionFactory, lambda: FakeSession(events)),
        repository=repository,
        access=access,
        search=search,
        composer=ExtractiveComposer(),
        on_commit=lambda: commits.append("wake"),
        clock=Clock(),
    )
    return Chat(service, repository, search, events, commits)


async def conversation(world: Chat, *space_ids: str) -> Conversation:
    return await world.service.create_conversation(OWNER, "Refunds", list(space_ids))


async def ask(world: Chat, conversation_id: str, question: str = "How fast are refunds paid?") -> list[AskUpdate]:
    return [update async for update in world.service.ask(OWNER, conversation_id, question)]


def question_asked(world: Chat) -> events_pb2.QuestionAsked:
    [envelope] = world.events
    assert envelope.event_type == "chat.question.asked"
    assert envelope.producer == "chat"
    assert envelope.actor_user_id == OWNER
    return events_pb2.QuestionAsked.FromString(envelope.payload)


# ------------------------------------------------------------- conversations


async def test_a_conversation_can_only_be_scoped_to_readable_spaces() -> None:
    world = chat(Access({SPACE_A}), Search())
    with pytest.raises(PermissionDenied) as caught:
        await conversation(world, SPACE_A, SPACE_C, SPACE_B)
    assert SPACE_C in caught.value.message  # the first refused space, in the order given
    assert world.repository.conversations == {}
    created = await conversation(world, SPACE_A)
    assert created.space_ids == (SPACE_A,)
    assert created.owner_id == OWNER


async def test_another_users_conversation_does_not_exist_for_them() -> None:
    world = chat(Access({SPACE_A}), Search([REFUND_CHUNK]))
    created = await conversation(world, SPACE_A)
    with pytest.raises(NotFound):
        await world.service.get_conversation(STRANGER, created.conversation_id)
    with pytest.raises(NotFound):
        await world.service.list_messages(STRANGER, created.conversation_id, 0, "")
    with pytest.raises(NotFound):
        _ = [update async for update in world.service.ask(STRANGER, created.conversation_id, "refunds?")]
    assert world.repository.messages == []
    assert world.search.calls == []


# --------------------------------------------------------------------- asking


async def test_an_answer_streams_then_completes_once_stored_with_its_event() -> None:
    world = chat(Access({SPACE_A, SPACE_B}), Search([REFUND_CHUNK]))
    created = await conversation(world, SPACE_A, SPACE_B)
    updates = await ask(world, created.conversation_id)

    *streamed, complete = updates
    assert isinstance(complete, AnswerComplete)
    assert complete.answer_kind is AnswerKind.EXTRACTIVE
    assert "".join(u.text for u in streamed if isinstance(u, AnswerDelta)) == complete.text
    cited = [u for u in streamed if isinstance(u, Citation)]
    assert [c.document_id for c in cited] == [REFUND_CHUNK.document_id]
    assert "[1]" in complete.text

    question, answer = world.repository.messages
    assert question.role is MessageRole.USER
    assert question.text == "How fast are refunds paid?"
    assert question.message_id == complete.question_message_id
    assert (answer.message_id, answer.text, answer.citations) == (complete.message_id, complete.text, tuple(cited))
    assert question.created_at < answer.created_at, "the question comes first even on a clock that stands still"
    assert world.repository.conversations[created.conversation_id].updated_at == answer.created_at

    event = question_asked(world)
    assert event.conversation_id == created.conversation_id
    assert (event.question_message_id, event.answer_message_id) == (question.message_id, answer.message_id)
    assert list(event.space_ids) == [SPACE_A, SPACE_B]
    assert event.answer_kind == events_pb2.ANSWER_KIND_EXTRACTIVE
    assert list(event.cited_document_ids) == [REFUND_CHUNK.document_id]
    assert world.commits == ["wake"]


async def test_the_question_is_stored_before_retrieval() -> None:
    world = chat(Access({SPACE_A}), Search([REFUND_CHUNK]))
    created = await conversation(world, SPACE_A)
    await ask(world, created.conversation_id)
    assert [m.role for m in world.search.messages_at_search] == [MessageRole.USER]


async def test_spaces_the_asker_lost_are_skipped_and_foreign_chunks_never_used() -> None:
    world = chat(Access({SPACE_A, SPACE_B}), Search([SECRET_CHUNK, REFUND_CHUNK]))
    created = await conversation(world, SPACE_B, SPACE_A)
    world.service.access = Access({SPACE_A})  # the asker has left SPACE_B since
    updates = await ask(world, created.conversation_id)

    assert world.search.calls == [("How fast are refunds paid?", [SPACE_A], SEARCH_TOP_K)]
    cited = [u for u in updates if isinstance(u, Citation)]
    assert [c.space_id for c in cited] == [SPACE_A], "a chunk from a space not searched is dropped"
    assert "executives" not in updates[-1].text  # type: ignore[union-attr]
    assert list(question_asked(world).space_ids) == [SPACE_A]


async def test_an_empty_scope_searches_every_readable_space_and_records_them() -> None:
    world = chat(Access({SPACE_B, SPACE_A}), Search([REFUND_CHUNK]))
    created = await conversation(world)
    await ask(world, created.conversation_id)
    assert world.search.calls[0][1] == [], "the vector service decides 'every readable space' itself"
    assert list(question_asked(world).space_ids) == [SPACE_A, SPACE_B]


async def test_nothing_readable_means_nothing_found_without_a_search() -> None:
    world = chat(Access({SPACE_A}), Search([REFUND_CHUNK]))
    created = await conversation(world, SPACE_A)
    world.service.access = Access(set())
    updates = await ask(world, created.conversation_id)
    assert world.search.calls == []
    assert updates == [AnswerDelta(NOTHING_FOUND_TEXT), updates[-1]]
    complete = updates[-1]
    assert isinstance(complete, AnswerComplete)
    assert (complete.answer_kind, complete.text) == (AnswerKind.NOTHING_FOUND, NOTHING_FOUND_TEXT)
    event = question_asked(world)
    assert list(event.space_ids) == []
    assert event.answer_kind == events_pb2.ANSWER_KIND_NOTHING_FOUND
    assert list(event.cited_document_ids) == []


async def test_nothing_relevant_means_nothing_found_and_no_citation() -> None:
    world = chat(Access({SPACE_A}), Search([REFUND_CHUNK]))
    created = await conversation(world, SPACE_A)
    updates = await ask(world, created.conversation_id, "Which volcano erupted last?")
    assert not any(isinstance(update, Citation) for update in updates)
    assert updates[-1] == AnswerComplete(
        world.repository.messages[1].message_id,
        world.repository.messages[0].message_id,
        AnswerKind.NOTHING_FOUND,
        NOTHING_FOUND_TEXT,
    )


async def test_search_down_is_unavailable_and_only_the_question_is_kept() -> None:
    down = Unavailable("the search service (vector) is not answering right now (UNAVAILABLE); try again in a moment")
    world = chat(Access({SPACE_A}), Search([REFUND_CHUNK], failures=[down]))
    created = await conversation(world, SPACE_A)
    with pytest.raises(Unavailable):
        await ask(world, created.conversation_id)
    assert [m.role for m in world.repository.messages] == [MessageRole.USER]
    assert world.events == []


async def test_access_lost_during_the_search_is_retried_with_a_fresh_list() -> None:
    lost = PermissionDenied(f"you are not a member of space {SPACE_B}")
    world = chat(Access({SPACE_A, SPACE_B}, {SPACE_A}), Search([REFUND_CHUNK], failures=[lost]))
    created = await conversation(world, SPACE_A, SPACE_B)
    world.service.access = Access({SPACE_A, SPACE_B}, {SPACE_A})
    updates = await ask(world, created.conversation_id)
    assert [call[1] for call in world.search.calls] == [[SPACE_A, SPACE_B], [SPACE_A]]
    assert isinstance(updates[-1], AnswerComplete)
    assert list(question_asked(world).space_ids) == [SPACE_A]


async def test_access_that_keeps_changing_gives_up_as_unavailable() -> None:
    lost = PermissionDenied("changed")
    world = chat(Access({SPACE_A}), Search([REFUND_CHUNK], failures=[lost, lost]))
    created = await conversation(world, SPACE_A)
    with pytest.raises(Unavailable, match="ask again"):
        await ask(world, created.conversation_id)


async def test_answers_keep_later_messages_after_earlier_ones() -> None:
    world = chat(Access({SPACE_A}), Search([REFUND_CHUNK]))
    created = await conversation(world, SPACE_A)
    await ask(world, created.conversation_id)
    await ask(world, created.conversation_id, "And refunds for gift cards?")
    times = [message.created_at for message in world.repository.messages]
    assert times == sorted(times)
    assert len(set(times)) == 4


async def test_composer_output_is_what_gets_stored() -> None:
    class Echo:
        answer_kind = AnswerKind.GENERATIVE

        async def compose(self, question: str, chunks: Sequence[RetrievedChunk]) -> AsyncIterator[AnswerDelta]:
            yield AnswerDelta("")  # an empty fragment is never sent
            yield AnswerDelta("x" * 2500)  # a long one is sent in pieces of at most 2000

    world = chat(Access({SPACE_A}), Search([REFUND_CHUNK]))
    world.service.composer = Echo()
    created = await conversation(world, SPACE_A)
    updates = await ask(world, created.conversation_id)
    assert [len(u.text) for u in updates if isinstance(u, AnswerDelta)] == [2000, 500]
    complete = updates[-1]
    assert isinstance(complete, AnswerComplete)
    assert complete.answer_kind is AnswerKind.GENERATIVE
    assert world.repository.messages[-1].text == "x" * 2500
