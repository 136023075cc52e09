"""The chat service's store: PostgreSQL tables for conversations, their messages and the
citations of answers, and every query on them.

Roles and answer kinds are stored as their proto numbers (answer_kind 0 for questions). A
conversation's `updated_at` is the time of its last message, so "most recently active first"
is an index scan, and appending a message locks the conversation row first: messages of one
conversation get strictly increasing times, in the order they were added.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Row,
    SmallInteger,
    String,
    Table,
    Text,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncSession

from services.chat.domain import (
    SNIPPET_MAX,
    TITLE_LENGTH,
    AnswerKind,
    Citation,
    Conversation,
    Message,
    MessageRole,
)
from services.kit.pagination import Cursor

metadata = MetaData()

conversations = Table(
    "conversations",
    metadata,
    Column("conversation_id", UUID(as_uuid=False), primary_key=True),
    Column("owner_id", UUID(as_uuid=False), nullable=False),
    Column("title", String(TITLE_LENGTH[1]), nullable=False),
    Column("space_ids", ARRAY(UUID(as_uuid=False)), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # An owner's conversations, most recently active first (ListConversations, scanned backwards).
    Index("conversations_by_owner_activity", "owner_id", "updated_at", "conversation_id"),
)

messages = Table(
    "messages",
    metadata,
    Column("message_id", UUID(as_uuid=False), primary_key=True),
    Column(
        "conversation_id",
        UUID(as_uuid=False),
        ForeignKey("conversations.conversation_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("role", SmallInteger, nullable=False),
    Column("text", Text, nullable=False),
    Column("answer_kind", SmallInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("role IN (1, 2)", name="messages_role_known"),
    CheckConstraint("answer_kind BETWEEN 0 AND 3", name="messages_answer_kind_known"),
    # A conversation's messages oldest first (ListMessages' cursor).
    Index("messages_by_conversation_time", "conversation_id", "created_at", "message_id"),
)

citations = Table(
    "citations",
    metadata,
    Column("message_id", UUID(as_uuid=False), ForeignKey("messages.message_id", ondelete="CASCADE"), nullable=False),
    # The citation's number in its answer: 1, 2, ... in the order they were sent.
    Column("number", SmallInteger, nullable=False),
    Column("document_id", UUID(as_uuid=False), nullable=False),
    Column("space_id", UUID(as_uuid=False), nullable=False),
    Column("chunk_index", Integer, nullable=False),
    Column("document_version", BigInteger, nullable=False),
    Column("snippet", String(SNIPPET_MAX), nullable=False),
    Column("score", Float, nullable=False),
    PrimaryKeyConstraint("message_id", "number"),
)


def conversation_of(row: Row[Any]) -> Conversation:
    return Conversation(
        conversation_id=str(row.conversation_id),
        owner_id=str(row.owner_id),
        title=row.title,
        space_ids=tuple(str(space_id) for space_id in row.space_ids),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def citation_of(row: Row[Any]) -> Citation:
    return Citation(
        document_id=str(row.document_id),
        space_id=str(row.space_id),
        chunk_index=int(row.chunk_index),
        document_version=int(row.document_version),
        snippet=row.snippet,
        score=float(row.score),
    )


def message_of(row: Row[Any], cited: Sequence[Citation]) -> Message:
    return Message(
        message_id=str(row.message_id),
        conversation_id=str(row.conversation_id),
        role=MessageRole(row.role),
        text=row.text,
        citations=tuple(cited),
        created_at=row.created_at,
        answer_kind=AnswerKind(row.answer_kind) if row.answer_kind else None,
    )


class ChatRepository:
    """Every query of the chat database, inside the caller's transaction."""

    # -- conversations

    async def add_conversation(self, session: AsyncSession, conversation: Conversation) -> None:
        await session.execute(
            conversations.insert().values(
                conversation_id=conversation.conversation_id,
                owner_id=conversation.owner_id,
                title=conversation.title,
                space_ids=list(conversation.space_ids),
                created_at=conversation.created_at,
                updated_at=conversation.updated_at,
            )
        )

    async def conversation_of_owner(
        self, session: AsyncSession, conversation_id: str, owner_id: str, *, for_update: bool = False
    ) -> Conversation | None:
        """The conversation if this user owns it: another user's is not even read, so it answers
        exactly like a missing one. `for_update` locks its row until the transaction ends, so
        messages are appended one at a time (and only by the owner)."""
        query = select(conversations).where(
            conversations.c.conversation_id == conversation_id, conversations.c.owner_id == owner_id
        )
        if for_update:
            query = query.with_for_update()
        row = (await session.execute(query)).first()
        return conversation_of(row) if row else None

    async def conversations_of(
        self, session: AsyncSession, owner_id: str, after: Cursor | None, limit: int
    ) -> list[Conversation]:
        """The owner's conversations by updated_at then conversation_id, both descending."""
        query = select(conversations).where(conversations.c.owner_id == owner_id)
        if after is not None:
            position = tuple_(conversations.c.updated_at, conversations.c.conversation_id)
            query = query.where(position < (after.moment, after.key))
        ordered = query.order_by(conversations.c.updated_at.desc(), conversations.c.conversation_id.desc())
        rows = (await session.execute(ordered.limit(limit))).all()
        return [conversation_of(row) for row in rows]

    async def touch(self, session: AsyncSession, conversation_id: str, at: datetime) -> None:
        """Record activity: the conversation's updated_at becomes its last message's time."""
        await session.execute(
            update(conversations).where(conversations.c.conversation_id == conversation_id).values(updated_at=at)
        )

    # -- messages

    async def add_message(self, session: AsyncSession, message: Message) -> None:
        await session.execute(
            messages.insert().values(
                message_id=message.message_id,
                conversation_id=message.conversation_id,
                role=int(message.role),
                text=message.text,
                answer_kind=0 if message.answer_kind is None else int(message.answer_kind),
                created_at=message.created_at,
            )
        )
        if message.citations:
            await session.execute(
                citations.insert(),
                [
                    {
                        "message_id": message.message_id,
                        "number": number,
                        "document_id": citation.document_id,
                        "space_id": citation.space_id,
                        "chunk_index": citation.chunk_index,
                        "document_version": citation.document_version,
                        "snippet": citation.snippet,
                        "score": citation.score,
                    }
                    for number, citation in enumerate(message.citations, start=1)
                ],
            )

    async def messages_in(
        self, session: AsyncSession, conversation_id: str, after: Cursor | None, limit: int
    ) -> list[Message]:
        """A conversation's messages oldest first (created_at, then message_id), with citations."""
        query = select(messages).where(messages.c.conversation_id == conversation_id)
        if after is not None:
            query = query.where(tuple_(messages.c.created_at, messages.c.message_id) > (after.moment, after.key))
        rows = (await session.execute(query.order_by(messages.c.created_at, messages.c.message_id).limit(limit))).all()
        cited = await self._citations_of(
            session, [str(row.message_id) for row in rows if row.role == MessageRole.ASSISTANT]
        )
        return [message_of(row, cited.get(str(row.message_id), [])) for row in rows]

    async def _citations_of(self, session: AsyncSession, message_ids: Sequence[str]) -> dict[str, list[Citation]]:
        if not message_ids:
            return {}
        rows = (
            await session.execute(
                select(citations)
                .where(citations.c.message_id.in_(message_ids))
                .order_by(citations.c.message_id, citations.c.number)
            )
        ).all()
        by_message: dict[str, list[Citation]] = {}
        for row in rows:
            by_message.setdefault(str(row.message_id), []).append(citation_of(row))
        return by_message
