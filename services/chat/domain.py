"""The chat domain: conversations, messages, citations, the answer being streamed, and list pages.

Pure rules, no I/O: what valid input is (ids, titles, space scopes, questions), what a
conversation that is not the caller's looks like (missing: NOT_FOUND), which spaces a question
may search, how messages are ordered in time, the limits every streamed answer keeps whatever
wrote it (fragment sizes, total length, citation count), and which cursors each listing's page
tokens may carry (page sizes and tokens themselves are services.kit.pagination's).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum, StrEnum
from typing import TypeAlias

from services.kit.errors import NotFound
from services.kit.ids import parse_ids
from services.kit.pagination import Cursor, is_time_and_id
from services.kit.text import trimmed_text

TITLE_LENGTH = (1, 200)
SPACE_IDS_MAX = 100
QUESTION_LENGTH = (1, 2000)
ANSWER_MAX = 20_000
DELTA_MAX = 2000
CITATIONS_MAX = 20
SNIPPET_MAX = 1000

NOTHING_FOUND_TEXT = (
    "I found nothing about that in your spaces. Try other words, or add the documents that cover it to a space "
    "this conversation searches."
)


# ------------------------------------------------------------------ input


def normalize_title(raw: str) -> str:
    return trimmed_text(raw, "title", *TITLE_LENGTH)


def normalize_question(raw: str) -> str:
    return trimmed_text(raw, "question", *QUESTION_LENGTH)


def normalize_space_ids(raw: Sequence[str]) -> tuple[str, ...]:
    """0–100 distinct space UUIDs, in the order given."""
    return parse_ids(raw, "space_ids", SPACE_IDS_MAX)


# ------------------------------------------------------------ conversations


class AnswerKind(IntEnum):
    """How an assistant message was produced; the numbers of chat.v1.AnswerKind and
    events.v1.AnswerKind, so converting is a cast. User messages have none (None, stored as 0)."""

    EXTRACTIVE = 1
    NOTHING_FOUND = 2
    GENERATIVE = 3


class MessageRole(IntEnum):
    """Who wrote a message; the numbers of chat.v1.MessageRole."""

    USER = 1
    ASSISTANT = 2


@dataclass(frozen=True)
class Conversation:
    conversation_id: str
    owner_id: str
    title: str
    space_ids: tuple[str, ...]  # empty: every space the owner can read when asking
    created_at: datetime
    updated_at: datetime  # when the last message was added; created_at while there is none


def new_conversation(owner_id: str, title: str, space_ids: tuple[str, ...], now: datetime) -> Conversation:
    """An empty conversation; `title` and `space_ids` are already normalized."""
    return Conversation(str(uuid.uuid4()), owner_id, title, space_ids, now, now)


def no_such_conversation(conversation_id: str) -> NotFound:
    return NotFound(f"conversation {conversation_id} does not exist; list your conversations to find its id")


def spaces_to_search(scope: Sequence[str], readable: Collection[str]) -> list[str]:
    """The spaces a question searches: the conversation's scope less the spaces the asker can no
    longer read (skipped silently), or every readable space when the scope is empty."""
    if not scope:
        return sorted(readable)
    return [space_id for space_id in scope if space_id in readable]


# ------------------------------------------------------------ messages


@dataclass(frozen=True)
class Citation:
    """A chunk an answer relies on; its number is its position in the answer's citations + 1."""

    document_id: str
    space_id: str
    chunk_index: int
    document_version: int
    snippet: str
    score: float


@dataclass(frozen=True)
class Message:
    message_id: str
    conversation_id: str
    role: MessageRole
    text: str
    citations: tuple[Citation, ...]
    created_at: datetime
    answer_kind: AnswerKind | None  # None for questions


def new_question(conversation_id: str, text: str, at: datetime) -> Message:
    return Message(str(uuid.uuid4()), conversation_id, MessageRole.USER, text, (), at, None)


def new_answer(
    conversation_id: str, text: str, citations: Sequence[Citation], kind: AnswerKind, at: datetime
) -> Message:
    return Message(str(uuid.uuid4()), conversation_id, MessageRole.ASSISTANT, text, tuple(citations), at, kind)


def message_time(now: datetime, last_activity: datetime) -> datetime:
    """A new message's time: after the conversation's last activity even if the clock stepped
    back, so messages sort in the order they were added (a question before its answer)."""
    if now <= last_activity:
        return last_activity + timedelta(microseconds=1)
    return now


def cited_document_ids(citations: Sequence[Citation]) -> list[str]:
    """Distinct cited documents in first-citation order (chat.question.asked)."""
    return list(dict.fromkeys(citation.document_id for citation in citations))


# -------------------------------------------------------------- answers


@dataclass(frozen=True)
class RetrievedChunk:
    """A chunk the vector service found for a question, from a space the asker can read."""

    document_id: str
    space_id: str
    document_version: int
    chunk_index: int
    text: str  # the chunk's text or its start (the vector service's snippet)
    score: float  # cosine similarity with the question, -1.0 to 1.0


@dataclass(frozen=True)
class AnswerDelta:
    """The next fragment of the answer text: 1–2000 characters, not trimmed."""

    text: str


@dataclass(frozen=True)
class AnswerComplete:
    """The end of an answer, sent once it is stored."""

    message_id: str
    question_message_id: str
    answer_kind: AnswerKind
    text: str


# What an Ask stream carries, in order: deltas and citations in any interleaving, then one
# completion. Both adapters (gRPC and WebSocket) translate these, nothing else.
AskUpdate: TypeAlias = AnswerDelta | Citation | AnswerComplete
# What an answer composer writes: text fragments and the citations the text refers to.
AnswerPart: TypeAlias = AnswerDelta | Citation


class InvalidAnswer(Exception):
    """A composer wrote an answer outside the contract's limits: a bug in the composer, so the
    caller sees INTERNAL (this is not a DomainError)."""


def without_nul(text: str) -> str:
    # Document content may hold U+0000 (the knowledge service keeps it); PostgreSQL text may not.
    return text.replace("\x00", "")


def split_delta(text: str) -> list[str]:
    """Fragments of at most DELTA_MAX characters that concatenate to `text`."""
    return [text[start : start + DELTA_MAX] for start in range(0, len(text), DELTA_MAX)]


class AnswerDraft:
    """The answer as it is streamed: every fragment and citation passes through here, so what
    the caller receives and what is stored are the same text within the same limits."""

    def __init__(self) -> None:
        self._fragments: list[str] = []
        self._length = 0
        self._citations: list[Citation] = []

    @property
    def text(self) -> str:
        return "".join(self._fragments)

    @property
    def citations(self) -> tuple[Citation, ...]:
        return tuple(self._citations)

    @property
    def is_empty(self) -> bool:
        return self._length == 0 and not self._citations

    def add_text(self, text: str) -> list[AnswerDelta]:
        """The deltas to send for this text (none for an empty one)."""
        text = without_nul(text)
        if self._length + len(text) > ANSWER_MAX:
            raise InvalidAnswer(f"the answer would exceed {ANSWER_MAX} characters")
        self._fragments.append(text)
        self._length += len(text)
        return [AnswerDelta(piece) for piece in split_delta(text)]

    def add_citation(self, citation: Citation) -> Citation:
        """The citation as sent and stored: its snippet cut to 1000 characters, its score
        kept within the cosine range."""
        if len(self._citations) >= CITATIONS_MAX:
            raise InvalidAnswer(f"an answer may cite at most {CITATIONS_MAX} chunks")
        snippet = without_nul(citation.snippet).strip()[:SNIPPET_MAX]
        if not snippet:
            raise InvalidAnswer(f"citation of document {citation.document_id} has an empty snippet")
        if citation.chunk_index < 0 or citation.document_version < 1:
            raise InvalidAnswer(f"citation of document {citation.document_id} has an invalid chunk or version")
        kept = Citation(
            document_id=citation.document_id,
            space_id=citation.space_id,
            chunk_index=citation.chunk_index,
            document_version=citation.document_version,
            snippet=snippet,
            score=min(1.0, max(-1.0, citation.score)),
        )
        self._citations.append(kept)
        return kept


# ------------------------------------------------------------------ pages


class Listing(StrEnum):
    """The paginated RPCs; a page token names the one it came from (services.kit.pagination).
    Both are ordered by time then id: a cursor's `rank` is a time in microseconds since the
    epoch, its `key` the tie-breaking id."""

    CONVERSATIONS = "ListConversations"  # newest activity first
    MESSAGES = "ListMessages"  # oldest first

    def accepts(self, cursor: Cursor) -> bool:
        return is_time_and_id(cursor)
