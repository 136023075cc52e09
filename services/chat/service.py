"""Chat use cases: conversations, their messages, and asking a question.

Input is validated first, then ownership (another user's conversation answers like a missing
one), then the work. Asking follows chat.proto step by step:

1. the question is stored as a user message (its own transaction: if anything later fails,
   the question, and only the question, is kept);
2. the spaces to search are the conversation's scope less the spaces the asker can no longer
   read, per the knowledge service (every readable space when the scope is empty);
3. the vector service searches them AS THE ASKER (the asker's token is forwarded), so its own
   permission filter applies too; chunks from any other space are dropped all the same;
4. the composer streams the answer (or "nothing found" when nothing is relevant) through an
   `AnswerDraft`, which holds every answer to the contract's limits;
5. the answer, its citations and chat.question.asked are stored in one transaction, and only
   then is the completion sent.

The gRPC and WebSocket adapters both stream `ask`: there is one implementation of asking.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from opentelemetry import trace

from services.api.events.v1 import events_pb2
from services.chat.composer import AnswerComposer
from services.chat.domain import (
    NOTHING_FOUND_TEXT,
    AnswerComplete,
    AnswerDraft,
    AnswerKind,
    AskUpdate,
    Citation,
    Conversation,
    Listing,
    Message,
    RetrievedChunk,
    cited_document_ids,
    message_time,
    new_answer,
    new_conversation,
    new_question,
    no_such_conversation,
    normalize_question,
    normalize_space_ids,
    normalize_title,
    spaces_to_search,
)
from services.chat.repository import ChatRepository
from services.kit.db import SessionFactory, transaction
from services.kit.errors import PermissionDenied, Unavailable
from services.kit.events import EventEnvelope, new_envelope
from services.kit.ids import parse_id
from services.kit.outbox import record_event
from services.kit.pagination import Cursor, Page, page_of, page_request

PRODUCER = "chat"
# Chunks asked of the vector service per question: enough for a few quotes from several documents.
SEARCH_TOP_K = 8
# Membership can change between listing the readable spaces and searching them; the search is
# tried once more with a fresh list before the question is given up.
SEARCH_ATTEMPTS = 2


class SpaceAccess(Protocol):
    """Who may read which space (the knowledge service)."""

    async def can_read(self, user_id: str, space_id: str) -> bool: ...

    async def readable_spaces(self, user_id: str) -> set[str]: ...


class ChunkSearch(Protocol):
    """Similarity search over document chunks, as the current caller (the vector service)."""

    async def search(self, query: str, space_ids: Sequence[str], top_k: int) -> list[RetrievedChunk]:
        """Chunks best first, from these spaces (every space the caller can read when empty);
        PermissionDenied when a listed space is not readable by the caller."""
        ...


def not_readable(space_id: str) -> PermissionDenied:
    return PermissionDenied(
        f"you are not a member of space {space_id}, or it does not exist; a conversation can only "
        "draw on spaces you can read"
    )


def question_asked(
    conversation_id: str, asked: Message, answer: Message, searched: Sequence[str], asker_id: str
) -> EventEnvelope:
    """chat.question.asked: keyed by conversation, so one conversation's events stay in order."""
    return new_envelope(
        event_type="chat.question.asked",
        payload=events_pb2.QuestionAsked(
            conversation_id=conversation_id,
            question_message_id=asked.message_id,
            answer_message_id=answer.message_id,
            question=asked.text,
            space_ids=list(searched),
            answer_kind=events_pb2.AnswerKind.ValueType(int(answer.answer_kind or 0)),
            cited_document_ids=cited_document_ids(answer.citations),
        ),
        producer=PRODUCER,
        partition_key=conversation_id,
        subject_ids={"conversation_id": conversation_id},
        actor_user_id=asker_id,
        occurred_at=answer.created_at,
    )


class ChatService:
    def __init__(
        self,
        sessions: SessionFactory,
        repository: ChatRepository,
        access: SpaceAccess,
        search: ChunkSearch,
        composer: AnswerComposer,
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.sessions = sessions
        self.repository = repository
        self.access = access
        self.search = search
        self.composer = composer
        self.on_commit = on_commit  # wakes the outbox relay
        self.clock = clock

    # ------------------------------------------------------ conversations

    async def create_conversation(self, caller_id: str, title: str, space_ids: Sequence[str]) -> Conversation:
        title = normalize_title(title)
        scope = normalize_space_ids(space_ids)
        readable = await asyncio.gather(*(self.access.can_read(caller_id, space_id) for space_id in scope))
        for space_id, allowed in zip(scope, readable, strict=True):
            if not allowed:
                raise not_readable(space_id)  # the first refused space, in the order given
        conversation = new_conversation(caller_id, title, scope, self.clock())
        async with transaction(self.sessions) as session:
            await self.repository.add_conversation(session, conversation)
        return conversation

    async def get_conversation(self, caller_id: str, conversation_id: str) -> Conversation:
        conversation_id = parse_id(conversation_id, "conversation_id")
        async with self.sessions() as session:
            conversation = await self.repository.conversation_of_owner(session, conversation_id, caller_id)
        if conversation is None:
            raise no_such_conversation(conversation_id)
        return conversation

    async def list_conversations(self, caller_id: str, page_size: int, page_token: str) -> Page[Conversation]:
        # The token is bound to the caller: another user's token is not valid here.
        scope = [caller_id]
        request = page_request(page_size, page_token, Listing.CONVERSATIONS, scope)
        async with self.sessions() as session:
            rows = await self.repository.conversations_of(session, caller_id, request.after, request.size + 1)
        return page_of(
            rows, request, Listing.CONVERSATIONS, scope, lambda row: Cursor.at(row.updated_at, row.conversation_id)
        )

    async def list_messages(
        self, caller_id: str, conversation_id: str, page_size: int, page_token: str
    ) -> Page[Message]:
        conversation_id = parse_id(conversation_id, "conversation_id")
        scope = [conversation_id]
        request = page_request(page_size, page_token, Listing.MESSAGES, scope)
        async with self.sessions() as session:
            if await self.repository.conversation_of_owner(session, conversation_id, caller_id) is None:
                raise no_such_conversation(conversation_id)
            rows = await self.repository.messages_in(session, conversation_id, request.after, request.size + 1)
        return page_of(rows, request, Listing.MESSAGES, scope, lambda row: Cursor.at(row.created_at, row.message_id))

    # --------------------------------------------------------------- asking

    async def ask(self, caller_id: str, conversation_id: str, question: str) -> AsyncIterator[AskUpdate]:
        """Answer a question in a conversation: deltas and citations, then one AnswerComplete
        once the answer is stored."""
        conversation_id = parse_id(conversation_id, "conversation_id")
        question = normalize_question(question)
        conversation, asked = await self._store_question(caller_id, conversation_id, question)
        searched, chunks = await self._retrieve(caller_id, conversation, question)

        draft = AnswerDraft()
        kind = self.composer.answer_kind
        if chunks:
            async for part in self.composer.compose(question, chunks):
                if isinstance(part, Citation):
                    yield draft.add_citation(part)
                else:
                    for delta in draft.add_text(part.text):
                        yield delta
        if draft.is_empty:
            # Nothing relevant (or nothing readable): say so, never make an answer up.
            kind = AnswerKind.NOTHING_FOUND
            for delta in draft.add_text(NOTHING_FOUND_TEXT):
                yield delta

        answer = await self._store_answer(caller_id, conversation_id, asked, draft, kind, searched)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(
                {
                    "chat.spaces_searched": len(searched),
                    "chat.chunks_retrieved": len(chunks),
                    "chat.citations": len(answer.citations),
                    "chat.answer_kind": kind.name,
                }
            )
        yield AnswerComplete(answer.message_id, asked.message_id, kind, answer.text)

    async def _store_question(
        self, caller_id: str, conversation_id: str, question: str
    ) -> tuple[Conversation, Message]:
        async with transaction(self.sessions) as session:
            conversation = await self.repository.conversation_of_owner(
                session, conversation_id, caller_id, for_update=True
            )
            if conversation is None:
                raise no_such_conversation(conversation_id)
            asked = new_question(conversation_id, question, message_time(self.clock(), conversation.updated_at))
            await self.repository.add_message(session, asked)
            await self.repository.touch(session, conversation_id, asked.created_at)
        return conversation, asked

    async def _retrieve(
        self, caller_id: str, conversation: Conversation, question: str
    ) -> tuple[list[str], list[RetrievedChunk]]:
        """The spaces searched and the chunks found in them, best first."""
        for _ in range(SEARCH_ATTEMPTS):
            searched = spaces_to_search(conversation.space_ids, await self.access.readable_spaces(caller_id))
            if not searched:
                return [], []
            # An empty scope is searched as "every space I can read": the vector service decides
            # at search time, and the request stays within its 100-space limit.
            restriction = searched if conversation.space_ids else []
            try:
                found = await self.search.search(question, restriction, SEARCH_TOP_K)
            except PermissionDenied:
                continue  # a space was lost between the two calls: list the readable ones again
            # Never use a chunk from outside the spaces the asker was found to read, whatever
            # the search returned.
            allowed = set(searched)
            return searched, [chunk for chunk in found if chunk.space_id in allowed]
        raise Unavailable("access to this conversation's spaces kept changing while answering; ask again")

    async def _store_answer(
        self,
        caller_id: str,
        conversation_id: str,
        asked: Message,
        draft: AnswerDraft,
        kind: AnswerKind,
        searched: Sequence[str],
    ) -> Message:
        async with transaction(self.sessions) as session:
            conversation = await self.repository.conversation_of_owner(
                session, conversation_id, caller_id, for_update=True
            )
            if conversation is None:
                raise no_such_conversation(conversation_id)
            at = message_time(self.clock(), conversation.updated_at)
            answer = new_answer(conversation_id, draft.text, draft.citations, kind, at)
            await self.repository.add_message(session, answer)
            await self.repository.touch(session, conversation_id, answer.created_at)
            await record_event(session, question_asked(conversation_id, asked, answer, searched, caller_id))
        self.on_commit()
        return answer
