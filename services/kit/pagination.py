"""Cursor pagination, the same in every service that lists.

A page token is opaque to callers: the cursor of the last item of a page (a `rank` and a
tie-breaking `key`), bound to the listing it came from and to the request parameters (the
scope) it was issued for, so it is refused anywhere else. Which cursors a listing can continue
from is the listing's own rule (a `PagedListing`); the mechanism here is shared.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, Protocol, TypeVar

from services.kit.errors import InvalidArgument
from services.kit.ids import CANONICAL_UUID

PAGE_SIZE_MAX = 100
PAGE_SIZE_DEFAULT = 20
PAGE_TOKEN_MAX = 512
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)
# Times a token may carry: datetime's own range, so decoding cannot overflow.
RANK_OF_TIME = (
    (datetime(1, 1, 1, tzinfo=UTC) - EPOCH) // ONE_MICROSECOND,
    (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - EPOCH) // ONE_MICROSECOND,
)
T = TypeVar("T")


@dataclass(frozen=True)
class Cursor:
    """The sort key of the last item of a page; the next page starts after it in the listing's
    order. For time-ordered listings `rank` is a time in microseconds since the epoch and `key`
    the tie-breaking id; a listing may rank by something else (a version number, key empty)."""

    rank: int
    key: str = ""

    @classmethod
    def at(cls, moment: datetime, key: str) -> Cursor:
        return cls((moment - EPOCH) // ONE_MICROSECOND, key)

    @property
    def moment(self) -> datetime:
        return EPOCH + timedelta(microseconds=self.rank)


def is_time_and_id(cursor: Cursor) -> bool:
    """The cursor of a listing ordered by time then id: a time datetime can hold, a canonical UUID."""
    return RANK_OF_TIME[0] <= cursor.rank <= RANK_OF_TIME[1] and bool(CANONICAL_UUID.match(cursor.key))


class PagedListing(Protocol):
    """A paginated RPC, as the pagination needs it (a service's `Listing` enum member)."""

    @property
    def value(self) -> str:
        """The RPC's name; a page token names the listing it came from."""
        ...

    def accepts(self, cursor: Cursor) -> bool:
        """Whether a decoded cursor can continue this listing; checked before it reaches a query."""
        ...


@dataclass(frozen=True)
class PageRequest:
    size: int
    after: Cursor | None  # None: the first page


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str  # empty on the last page


def page_request(page_size: int, page_token: str, listing: PagedListing, scope: Sequence[str]) -> PageRequest:
    """Validate a page request. `scope` are the request parameters the token is bound to (such as
    the caller, or the parent resource); page_size may change between pages."""
    if not 0 <= page_size <= PAGE_SIZE_MAX:
        raise InvalidArgument(
            "page_size", f"must be 1–{PAGE_SIZE_MAX} (0 means the default of {PAGE_SIZE_DEFAULT}), got {page_size}"
        )
    token = page_token.strip()
    return PageRequest(page_size or PAGE_SIZE_DEFAULT, decode_page_token(token, listing, scope) if token else None)


def encode_page_token(listing: PagedListing, scope: Sequence[str], cursor: Cursor) -> str:
    body = {"l": listing.value, "q": _scope_digest(listing, scope), "r": cursor.rank, "k": cursor.key}
    return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_page_token(token: str, listing: PagedListing, scope: Sequence[str]) -> Cursor:
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
    cursor = Cursor(rank, key)
    if not listing.accepts(cursor):
        raise refusal
    return cursor


def _scope_digest(listing: PagedListing, scope: Sequence[str]) -> str:
    return hashlib.sha256("\x1f".join([listing.value, *scope]).encode()).hexdigest()[:16]


def page_of(
    rows: Sequence[T],
    request: PageRequest,
    listing: PagedListing,
    scope: Sequence[str],
    cursor_of: Callable[[T], Cursor],
) -> Page[T]:
    """A page from up to size + 1 rows read in order: the extra row only says another page exists."""
    items = list(rows[: request.size])
    if len(rows) <= request.size:
        return Page(items, "")
    return Page(items, encode_page_token(listing, scope, cursor_of(items[-1])))
