"""The gRPC adapter of the chat service: proto in, use case, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from services.api.chat.v1 import chat_pb2, chat_pb2_grpc
from services.chat.domain import AnswerComplete, AnswerDelta, AnswerKind, AskUpdate, Citation, Conversation, Message
from services.chat.service import ChatService
from services.kit.auth import current_principal
from services.kit.protos import timestamp

SERVICE_NAME = "chat.v1.ChatService"
# Every method needs the caller's token.
PUBLIC_METHODS: frozenset[str] = frozenset()


def answer_kind_message(kind: AnswerKind | None) -> chat_pb2.AnswerKind.ValueType:
    """Domain kinds carry the proto's numbers; a question has none (ANSWER_KIND_UNSPECIFIED)."""
    return chat_pb2.AnswerKind.ValueType(0 if kind is None else int(kind))


def conversation_message(conversation: Conversation) -> chat_pb2.Conversation:
    return chat_pb2.Conversation(
        conversation_id=conversation.conversation_id,
        owner_id=conversation.owner_id,
        title=conversation.title,
        space_ids=conversation.space_ids,
        created_at=timestamp(conversation.created_at),
        updated_at=timestamp(conversation.updated_at),
    )


def citation_message(citation: Citation) -> chat_pb2.Citation:
    return chat_pb2.Citation(
        document_id=citation.document_id,
        space_id=citation.space_id,
        chunk_index=citation.chunk_index,
        document_version=citation.document_version,
        snippet=citation.snippet,
        score=citation.score,
    )


def message_message(message: Message) -> chat_pb2.Message:
    return chat_pb2.Message(
        message_id=message.message_id,
        conversation_id=message.conversation_id,
        role=chat_pb2.MessageRole.ValueType(int(message.role)),
        text=message.text,
        citations=[citation_message(citation) for citation in message.citations],
        created_at=timestamp(message.created_at),
        answer_kind=answer_kind_message(message.answer_kind),
    )


def ask_response(update: AskUpdate) -> chat_pb2.AskResponse:
    if isinstance(update, AnswerDelta):
        return chat_pb2.AskResponse(delta=chat_pb2.AnswerDelta(text=update.text))
    if isinstance(update, Citation):
        return chat_pb2.AskResponse(citation=citation_message(update))
    complete: AnswerComplete = update
    return chat_pb2.AskResponse(
        complete=chat_pb2.AnswerComplete(
            message_id=complete.message_id,
            answer_kind=answer_kind_message(complete.answer_kind),
            text=complete.text,
            question_message_id=complete.question_message_id,
        )
    )


def caller_id() -> str:
    return current_principal().user_id


class ChatServer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, service: ChatService) -> None:
        self.service = service

    async def CreateConversation(
        self, request: chat_pb2.CreateConversationRequest, context: Any
    ) -> chat_pb2.CreateConversationResponse:
        conversation = await self.service.create_conversation(caller_id(), request.title, list(request.space_ids))
        return chat_pb2.CreateConversationResponse(conversation=conversation_message(conversation))

    async def GetConversation(
        self, request: chat_pb2.GetConversationRequest, context: Any
    ) -> chat_pb2.GetConversationResponse:
        conversation = await self.service.get_conversation(caller_id(), request.conversation_id)
        return chat_pb2.GetConversationResponse(conversation=conversation_message(conversation))

    async def ListConversations(
        self, request: chat_pb2.ListConversationsRequest, context: Any
    ) -> chat_pb2.ListConversationsResponse:
        page = await self.service.list_conversations(caller_id(), request.page_size, request.page_token)
        return chat_pb2.ListConversationsResponse(
            conversations=[conversation_message(conversation) for conversation in page.items],
            next_page_token=page.next_page_token,
        )

    async def Ask(self, request: chat_pb2.AskRequest, context: Any) -> AsyncIterator[chat_pb2.AskResponse]:
        async for update in self.service.ask(caller_id(), request.conversation_id, request.question):
            yield ask_response(update)

    async def ListMessages(self, request: chat_pb2.ListMessagesRequest, context: Any) -> chat_pb2.ListMessagesResponse:
        page = await self.service.list_messages(
            caller_id(), request.conversation_id, request.page_size, request.page_token
        )
        return chat_pb2.ListMessagesResponse(
            messages=[message_message(message) for message in page.items], next_page_token=page.next_page_token
        )
