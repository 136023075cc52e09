"""The knowledge domain: roles, spaces, memberships, documents, versions and list pages.

Pure rules, no I/O: what valid input is (ids, names, titles, content, tags), who may do what in
a space, when a membership change would leave a space without an owner, how a document moves
from one version to the next, and which cursors each listing's page tokens may carry (page
sizes and tokens themselves are services.kit.pagination's).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum, StrEnum

from services.kit.errors import Conflict, FailedPrecondition, InvalidArgument, PermissionDenied
from services.kit.pagination import Cursor, is_time_and_id
from services.kit.text import trimmed_text

SPACE_NAME_LENGTH = (1, 100)
SPACE_DESCRIPTION_MAX = 2000
TITLE_LENGTH = (1, 200)
CONTENT_MAX_BYTES = 262_144
TAGS_MAX = 20
TAG_LENGTH = (1, 40)


# ------------------------------------------------------------------ input


def normalize_space_name(raw: str) -> str:
    return trimmed_text(raw, "name", *SPACE_NAME_LENGTH)


def normalize_description(raw: str) -> str:
    return trimmed_text(raw, "description", 0, SPACE_DESCRIPTION_MAX)


def normalize_title(raw: str) -> str:
    return trimmed_text(raw, "title", *TITLE_LENGTH)


def check_content(content: str) -> str:
    """Content is kept exactly as given (not trimmed); only its UTF-8 size is bounded."""
    try:
        size = len(content.encode("utf-8"))
    except UnicodeEncodeError as error:
        raise InvalidArgument("content", "must be valid UTF-8 text") from error
    if size > CONTENT_MAX_BYTES:
        raise InvalidArgument("content", f"must be at most {CONTENT_MAX_BYTES} bytes of UTF-8 (256 KiB), got {size}")
    return content


def normalize_tags(raw: Sequence[str], field: str = "tags") -> tuple[str, ...]:
    """0–20 distinct tags of 1–40 characters each after trimming, in the order given."""
    if len(raw) > TAGS_MAX:
        raise InvalidArgument(field, f"must hold at most {TAGS_MAX} tags, got {len(raw)}")
    tags: list[str] = []
    for index, value in enumerate(raw):
        tag = trimmed_text(value, f"{field}[{index}]", *TAG_LENGTH)
        if tag in tags:
            raise InvalidArgument(f"{field}[{index}]", f"repeats the tag {tag!r}; tags must be distinct")
        tags.append(tag)
    return tuple(tags)


def check_expected_version(value: int) -> int:
    if value < 1:
        raise InvalidArgument("expected_version", f"must be ≥ 1 (the version you last read), got {value}")
    return value


def check_version_number(value: int) -> int:
    if value < 1:
        raise InvalidArgument("version", f"must be ≥ 1, got {value}")
    return value


# ------------------------------------------------------------------ roles


class Role(IntEnum):
    """A member's level of access; each role includes the rights of the lower ones.

    The numbers are those of knowledge.v1.Role and events.v1.SpaceRole, so converting
    between them is a cast."""

    VIEWER = 1
    EDITOR = 2
    OWNER = 3

    @property
    def label(self) -> str:
        return self.name.lower()


ROLE_NAMES = "ROLE_VIEWER, ROLE_EDITOR or ROLE_OWNER"


def role_to_grant(number: int, field: str = "role") -> Role:
    """The role a member is given: one of the three, never ROLE_UNSPECIFIED."""
    if number == 0:
        raise InvalidArgument(field, f"must be {ROLE_NAMES}; ROLE_UNSPECIFIED is not a role")
    try:
        return Role(number)
    except ValueError as error:
        raise InvalidArgument(field, f"must be {ROLE_NAMES}, got the unknown value {number}") from error


def lowest_role(number: int, field: str) -> Role:
    """The lowest role a check accepts; ROLE_UNSPECIFIED means any member (viewer)."""
    return Role.VIEWER if number == 0 else role_to_grant(number, field)


def has_access(role: Role | None, required: Role) -> bool:
    return role is not None and role >= required


def not_a_member(space_id: str) -> PermissionDenied:
    return PermissionDenied(
        f"you are not a member of space {space_id}, or it does not exist; ask one of its owners to add you"
    )


def require_role(role: Role | None, needed: Role, action: str, space_id: str) -> Role:
    """The caller's role when it is at least `needed`. A non-member and a space that does not
    exist get the same answer, so space ids cannot be probed."""
    if role is None:
        raise not_a_member(space_id)
    if role < needed:
        required = "the owner role" if needed is Role.OWNER else f"the {needed.label} role or higher"
        raise PermissionDenied(f"{action} needs {required} in space {space_id}; your role is {role.label}")
    return role


def check_may_remove(caller_role: Role | None, caller_id: str, user_id: str, space_id: str) -> None:
    """Owners remove anyone; any member may remove themselves (leave the space)."""
    if caller_role is not None and caller_id == user_id:
        return
    require_role(caller_role, Role.OWNER, "removing another member", space_id)


def check_space_keeps_an_owner(owners: int, current: Role, new: Role | None, user_id: str, space_id: str) -> None:
    """A space always has an owner: its last owner can be neither demoted nor removed.
    `new` is None when the member is being removed."""
    if current is not Role.OWNER or new is Role.OWNER or owners > 1:
        return
    change = f"removing user {user_id}" if new is None else f"changing the role of user {user_id} to {new.label}"
    raise FailedPrecondition(
        f"{change} would leave space {space_id} without an owner; make another member an owner first"
    )


# ----------------------------------------------------------------- spaces


@dataclass(frozen=True)
class Space:
    space_id: str
    name: str
    description: str
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class Membership:
    space_id: str
    user_id: str
    role: Role
    added_by: str
    added_at: datetime
    updated_at: datetime  # equals added_at until the role first changes


def new_space(name: str, description: str, creator_id: str, now: datetime) -> tuple[Space, Membership]:
    """A space and its creator's owner membership."""
    space = Space(
        space_id=str(uuid.uuid4()),
        name=normalize_space_name(name),
        description=normalize_description(description),
        created_by=creator_id,
        created_at=now,
    )
    return space, Membership(space.space_id, creator_id, Role.OWNER, creator_id, now, now)


# -------------------------------------------------------------- documents


@dataclass(frozen=True)
class Document:
    document_id: str
    space_id: str
    title: str
    content: str  # empty in listings
    tags: tuple[str, ...]
    version: int
    created_by: str
    created_at: datetime
    updated_by: str
    updated_at: datetime


@dataclass(frozen=True)
class DocumentVersion:
    """An immutable snapshot of a document as written at one version."""

    version: int
    title: str
    content: str  # empty in listings
    tags: tuple[str, ...]
    author_id: str
    created_at: datetime


@dataclass(frozen=True)
class DocumentChanges:
    """What an update sets; None leaves the current value."""

    title: str | None
    content: str | None
    tags: tuple[str, ...] | None


def creation_time(now: datetime, latest_in_space: datetime | None) -> datetime:
    """A new document's creation time: after every document already in its space, even if the
    clock stepped back, so a listing cursor never passes over a document created later."""
    if latest_in_space is not None and now <= latest_in_space:
        return latest_in_space + timedelta(microseconds=1)
    return now


@dataclass(frozen=True)
class DocumentDraft:
    """A new document's validated fields, before it has a place and a time."""

    title: str
    content: str
    tags: tuple[str, ...]


def document_draft(title: str, content: str, tags: Sequence[str]) -> DocumentDraft:
    return DocumentDraft(normalize_title(title), check_content(content), normalize_tags(tags))


def new_document(draft: DocumentDraft, space_id: str, author_id: str, created_at: datetime) -> Document:
    """A document at version 1."""
    return Document(
        document_id=str(uuid.uuid4()),
        space_id=space_id,
        title=draft.title,
        content=draft.content,
        tags=draft.tags,
        version=1,
        created_by=author_id,
        created_at=created_at,
        updated_by=author_id,
        updated_at=created_at,
    )


def document_changes(title: str | None, content: str | None, tags: Sequence[str] | None) -> DocumentChanges:
    if title is None and content is None and tags is None:
        raise InvalidArgument("title, content, tags", "none is set; set at least one of them to update the document")
    return DocumentChanges(
        title=None if title is None else normalize_title(title),
        content=None if content is None else check_content(content),
        tags=None if tags is None else normalize_tags(tags, "tags.values"),
    )


def check_current_version(document: Document, expected_version: int) -> None:
    """Optimistic concurrency: a write applies only to the version the writer read."""
    if document.version != expected_version:
        raise Conflict(
            f"document {document.document_id} is at version {document.version}, not expected_version "
            f"{expected_version}: someone else changed it; re-read it and retry"
        )


def next_version(document: Document, changes: DocumentChanges, author_id: str, now: datetime) -> Document:
    """The document at its next version: changed fields replaced, unset ones kept. A new version
    is recorded even when nothing differs (the caller asked for a write)."""
    return Document(
        document_id=document.document_id,
        space_id=document.space_id,
        title=document.title if changes.title is None else changes.title,
        content=document.content if changes.content is None else changes.content,
        tags=document.tags if changes.tags is None else changes.tags,
        version=document.version + 1,
        created_by=document.created_by,
        created_at=document.created_at,
        updated_by=author_id,
        updated_at=now,
    )


def snapshot(document: Document) -> DocumentVersion:
    """The version record of a document's current state."""
    return DocumentVersion(
        version=document.version,
        title=document.title,
        content=document.content,
        tags=document.tags,
        author_id=document.updated_by,
        created_at=document.updated_at,
    )


# ------------------------------------------------------------------ pages

RANK_OF_VERSION = (1, 2**63 - 1)  # PostgreSQL bigint


class Listing(StrEnum):
    """The paginated RPCs; a page token names the one it came from (services.kit.pagination).

    Spaces, members and documents are listed by creation time then id: a cursor's `rank` is the
    time in microseconds since the epoch and its `key` the id. Versions are listed by version
    number: `rank` is the version and `key` is empty."""

    SPACES = "ListSpaces"
    MEMBERS = "ListMembers"
    DOCUMENTS = "ListDocuments"
    VERSIONS = "ListDocumentVersions"

    @property
    def ordered_by_version(self) -> bool:
        return self is Listing.VERSIONS

    def accepts(self, cursor: Cursor) -> bool:
        if self.ordered_by_version:
            return RANK_OF_VERSION[0] <= cursor.rank <= RANK_OF_VERSION[1] and cursor.key == ""
        return is_time_and_id(cursor)
