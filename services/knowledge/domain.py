"""The knowledge domain: roles, spaces, memberships, documents, versions and list pages.

Pure rules, no I/O: what valid input is (ids, names, titles, content, tags, page sizes and
tokens), who may do what in a space, when a membership change would leave a space without an
owner, how a document moves from one version to the next, and what a page token holds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum, StrEnum
from typing import Generic, TypeVar

from services.kit.errors import Conflict, FailedPrecondition, InvalidArgument, PermissionDenied
from services.kit.ids import CANONICAL_UUID

SPACE_NAME_LENGTH = (1, 100)
SPACE_DESCRIPTION_MAX = 2000
TITLE_LENGTH = (1, 200)
CONTENT_MAX_BYTES = 262_144
TAGS_MAX = 20
TAG_LENGTH = (1, 40)
PAGE_SIZE_MAX = 100
PAGE_SIZE_DEFAULT = 20


# ------------------------------------------------------------------ input


def _reject_nul(value: str, field: str) -> None:
    # PostgreSQL text columns cannot hold U+0000; refusing it here keeps it an input error.
    if "\x00" in value:
        raise InvalidArgument(field, "must not contain the NUL character (U+0000)")


def _trimmed_text(raw: str, field: str, low: int, high: int) -> str:
    text = raw.strip()
    _reject_nul(text, field)
    if not low <= len(text) <= high:
        if low > 0 and not text:
            raise InvalidArgument(field, f"is required: {low}–{high} characters after trimming")
        raise InvalidArgument(field, f"must be {low}–{high} characters after trimming, got {len(text)}")
    return text


def normalize_space_name(raw: str) -> str:
    return _trimmed_text(raw, "name", *SPACE_NAME_LENGTH)


def normalize_description(raw: str) -> str:
    return _trimmed_text(raw, "description", 0, SPACE_DESCRIPTION_MAX)


def normalize_title(raw: str) -> str:
    return _trimmed_text(raw, "title", *TITLE_LENGTH)


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
        tag = _trimmed_text(value, f"{field}[{index}]", *TAG_LENGTH)
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

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)
# Creation times a token may carry: datetime's own range, so decoding cannot overflow.
RANK_OF_TIME = (
    (datetime(1, 1, 1, tzinfo=UTC) - EPOCH) // ONE_MICROSECOND,
    (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - EPOCH) // ONE_MICROSECOND,
)
RANK_OF_VERSION = (1, 2**63 - 1)  # PostgreSQL bigint
PAGE_TOKEN_MAX = 512
T = TypeVar("T")


class Listing(StrEnum):
    """The paginated RPCs; a page token names the one it came from."""

    SPACES = "ListSpaces"
    MEMBERS = "ListMembers"
    DOCUMENTS = "ListDocuments"
    VERSIONS = "ListDocumentVersions"

    @property
    def ordered_by_version(self) -> bool:
        return self is Listing.VERSIONS


@dataclass(frozen=True)
class Cursor:
    """The sort key of the last item of a page; the next page starts after it.

    For creation-ordered listings `rank` is the creation time in microseconds since the epoch
    and `key` the tie-breaking id; for versions `rank` is the version number and `key` is empty."""

    rank: int
    key: str = ""

    @classmethod
    def at(cls, moment: datetime, key: str) -> Cursor:
        return cls((moment - EPOCH) // ONE_MICROSECOND, key)

    @property
    def moment(self) -> datetime:
        return EPOCH + timedelta(microseconds=self.rank)


@dataclass(frozen=True)
class PageRequest:
    size: int
    after: Cursor | None  # None: the first page


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str  # empty on the last page


def page_request(page_size: int, page_token: str, listing: Listing, scope: Sequence[str]) -> PageRequest:
    """Validate a page request. `scope` are the request parameters the token is bound to (the
    space, the document, or the caller for ListSpaces); page_size may change between pages."""
    if not 0 <= page_size <= PAGE_SIZE_MAX:
        raise InvalidArgument(
            "page_size", f"must be 1–{PAGE_SIZE_MAX} (0 means the default of {PAGE_SIZE_DEFAULT}), got {page_size}"
        )
    token = page_token.strip()
    return PageRequest(page_size or PAGE_SIZE_DEFAULT, decode_page_token(token, listing, scope) if token else None)


def encode_page_token(listing: Listing, scope: Sequence[str], cursor: Cursor) -> str:
    body = {"l": listing.value, "q": _scope_digest(listing, scope), "r": cursor.rank, "k": cursor.key}
    return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_page_token(token: str, listing: Listing, scope: Sequence[str]) -> Cursor:
    """The cursor in a token from `encode_page_token` for the same listing and scope."""
    refusal = InvalidArgument(
        "page_token",
        f"is not a page token from {listing.value} for these request parameters; pass the "
        "next_page_token of the previous page unchanged, or none for the first page",
    )
    if len(token) > PAGE_TOKEN_MAX:
        raise refusal
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, UnicodeDecodeError, ValueError) as error:
        raise refusal from error
    if not isinstance(body, dict) or body.get("l") != listing.value or body.get("q") != _scope_digest(listing, scope):
        raise refusal
    rank, key = body.get("r"), body.get("k")
    # The token is opaque but not sealed: its values are checked before they reach a query.
    if not isinstance(rank, int) or isinstance(rank, bool) or not isinstance(key, str):
        raise refusal
    low, high = RANK_OF_VERSION if listing.ordered_by_version else RANK_OF_TIME
    key_ok = key == "" if listing.ordered_by_version else bool(CANONICAL_UUID.match(key))
    if not low <= rank <= high or not key_ok:
        raise refusal
    return Cursor(rank, key)


def _scope_digest(listing: Listing, scope: Sequence[str]) -> str:
    return hashlib.sha256("\x1f".join([listing.value, *scope]).encode()).hexdigest()[:16]


def page_of(
    rows: Sequence[T], request: PageRequest, listing: Listing, scope: Sequence[str], cursor_of: Callable[[T], Cursor]
) -> Page[T]:
    """A page from up to size + 1 rows read in order: the extra row only says another page exists."""
    items = list(rows[: request.size])
    if len(rows) <= request.size:
        return Page(items, "")
    return Page(items, encode_page_token(listing, scope, cursor_of(items[-1])))
