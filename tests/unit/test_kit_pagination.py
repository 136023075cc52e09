"""services.kit.pagination: page sizes, opaque page tokens bound to a listing and its request
parameters, the listing's own cursor check, and pages from size + 1 rows."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import pytest

from services.kit.errors import InvalidArgument
from services.kit.pagination import (
    PAGE_SIZE_DEFAULT,
    PAGE_SIZE_MAX,
    PAGE_TOKEN_MAX,
    RANK_OF_TIME,
    Cursor,
    Page,
    PagedListing,
    PageRequest,
    decode_page_token,
    encode_page_token,
    is_time_and_id,
    page_of,
    page_request,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
ITEM = "0b1e6c52-8d0f-4a4c-9a59-6f1f3a1c2d3e"
PARENT = "6a1d1f70-2f7e-4bb8-9d8c-1c2b3a4d5e6f"
OTHER_PARENT = "f3c2b1a0-9e8d-4c7b-8a69-5d4e3f2a1b0c"


class Listing(StrEnum):
    """Two listings with different cursor rules, as a service declares them."""

    THINGS = "ListThings"  # by time then id
    STEPS = "ListSteps"  # by a positive step number, no key

    def accepts(self, cursor: Cursor) -> bool:
        if self is Listing.STEPS:
            return cursor.rank >= 1 and cursor.key == ""
        return is_time_and_id(cursor)


class Recording:
    """A listing that is not an enum: it records what it was asked to accept."""

    def __init__(self, name: str, verdict: bool) -> None:
        self.name = name
        self.verdict = verdict
        self.asked: list[Cursor] = []

    @property
    def value(self) -> str:
        return self.name

    def accepts(self, cursor: Cursor) -> bool:
        self.asked.append(cursor)
        return self.verdict


def body_of(token: str) -> dict[str, object]:
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    return decoded


def forged(body: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


def refused(token: str, listing: PagedListing, scope: list[str]) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(token, listing, scope)
    return caught.value


# ------------------------------------------------------------------ page sizes


def test_page_size_zero_means_the_default_and_the_bounds_are_accepted() -> None:
    assert page_request(0, "", Listing.THINGS, [PARENT]) == PageRequest(PAGE_SIZE_DEFAULT, None)
    assert page_request(1, "", Listing.THINGS, [PARENT]) == PageRequest(1, None)
    assert page_request(PAGE_SIZE_MAX, "", Listing.THINGS, [PARENT]) == PageRequest(PAGE_SIZE_MAX, None)
    assert (PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX) == (20, 100)


@pytest.mark.parametrize("size", [-1, PAGE_SIZE_MAX + 1])
def test_page_size_outside_the_range_is_invalid_with_the_documented_message(size: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        page_request(size, "", Listing.THINGS, [PARENT])
    assert caught.value.field == "page_size"
    assert f"must be 1–100 (0 means the default of 20), got {size}" in str(caught.value)


def test_the_page_size_is_checked_before_the_token() -> None:
    with pytest.raises(InvalidArgument) as caught:
        page_request(-1, "garbage!", Listing.THINGS, [PARENT])
    assert caught.value.field == "page_size"


def test_a_blank_token_is_the_first_page() -> None:
    assert page_request(5, "  \t", Listing.THINGS, [PARENT]) == PageRequest(5, None)


# ------------------------------------------------------------------ cursors


def test_cursor_times_round_trip_to_the_microsecond() -> None:
    cursor = Cursor.at(NOW, ITEM)
    assert cursor.moment == NOW
    assert cursor.key == ITEM
    assert Cursor.at(datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), ITEM).rank == -1
    assert Cursor(7) == Cursor(7, "")


def test_time_and_id_cursors_hold_a_representable_time_and_a_canonical_uuid() -> None:
    assert is_time_and_id(Cursor.at(NOW, ITEM))
    assert is_time_and_id(Cursor(RANK_OF_TIME[0], ITEM))
    assert is_time_and_id(Cursor(RANK_OF_TIME[1], ITEM))
    assert Cursor(RANK_OF_TIME[0], ITEM).moment == datetime(1, 1, 1, tzinfo=UTC)
    assert Cursor(RANK_OF_TIME[1], ITEM).moment == datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert not is_time_and_id(Cursor(RANK_OF_TIME[0] - 1, ITEM))
    assert not is_time_and_id(Cursor(RANK_OF_TIME[1] + 1, ITEM))
    assert not is_time_and_id(Cursor.at(NOW, ""))
    assert not is_time_and_id(Cursor.at(NOW, ITEM.upper()))
    assert not is_time_and_id(Cursor.at(NOW, "x' OR 1=1"))


# ------------------------------------------------------------------ tokens


def test_a_token_round_trips_for_the_same_listing_and_scope() -> None:
    cursor = Cursor.at(NOW, ITEM)
    token = encode_page_token(Listing.THINGS, [PARENT], cursor)
    assert decode_page_token(token, Listing.THINGS, [PARENT]) == cursor
    assert page_request(5, f" {token} ", Listing.THINGS, [PARENT]) == PageRequest(5, cursor)


def test_a_token_is_url_safe_unpadded_and_names_its_listing() -> None:
    token = encode_page_token(Listing.THINGS, [PARENT], Cursor.at(NOW, ITEM))
    assert "=" not in token
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    body = body_of(token)
    assert body["l"] == "ListThings"
    assert (body["r"], body["k"]) == (Cursor.at(NOW, ITEM).rank, ITEM)
    # The scope is bound by a digest, not carried.
    assert PARENT not in json.dumps(body)
    assert isinstance(body["q"], str)
    assert len(body["q"]) == 16


@pytest.mark.parametrize(
    ("listing", "scope"),
    [
        (Listing.STEPS, [PARENT]),  # another RPC's token
        (Listing.THINGS, [OTHER_PARENT]),  # other request parameters
        (Listing.THINGS, [PARENT, OTHER_PARENT]),  # more parameters
        (Listing.THINGS, []),  # fewer parameters
    ],
    ids=["other listing", "other scope", "longer scope", "empty scope"],
)
def test_a_token_is_refused_for_another_listing_or_other_request_parameters(listing: Listing, scope: list[str]) -> None:
    token = encode_page_token(Listing.THINGS, [PARENT], Cursor.at(NOW, ITEM))
    error = refused(token, listing, scope)
    assert error.field == "page_token"
    assert (
        f"is not a page token from {listing.value} for these request parameters; pass the "
        "next_page_token of the previous page unchanged, or none for the first page"
    ) in str(error)


def test_the_scope_is_bound_in_order_and_without_ambiguous_joins() -> None:
    token = encode_page_token(Listing.THINGS, ["a", "b"], Cursor.at(NOW, ITEM))
    refused(token, Listing.THINGS, ["b", "a"])
    refused(token, Listing.THINGS, ["ab"])


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        "bm90IGpzb24",  # base64 of "not json"
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),  # not UTF-8
        forged([1, 2]),
        forged("a string"),
        "A" * (PAGE_TOKEN_MAX + 1),
    ],
    ids=["not base64", "not json", "not utf-8", "not an object", "a string", "too long"],
)
def test_malformed_tokens_are_invalid_arguments_not_crashes(token: str) -> None:
    assert refused(token, Listing.THINGS, [PARENT]).field == "page_token"


def test_token_values_are_type_checked_before_the_listing_sees_them() -> None:
    listing = Recording("ListThings", verdict=True)
    good = body_of(encode_page_token(listing, [PARENT], Cursor(1, ITEM)))
    for changes in ({"r": "1"}, {"r": True}, {"r": 1.5}, {"r": None}, {"k": 5}, {"k": None}):
        refused(forged({**good, **changes}), listing, [PARENT])
    for missing in ("r", "k", "l", "q"):
        refused(forged({name: value for name, value in good.items() if name != missing}), listing, [PARENT])
    assert listing.asked == []


def test_the_listing_decides_which_cursors_it_accepts() -> None:
    trusting, refusing = Recording("ListAnything", verdict=True), Recording("ListAnything", verdict=False)
    token = encode_page_token(trusting, [PARENT], Cursor(-5, "anything"))
    assert decode_page_token(token, trusting, [PARENT]) == Cursor(-5, "anything")
    assert trusting.asked == [Cursor(-5, "anything")]
    error = refused(token, refusing, [PARENT])
    assert error.field == "page_token"
    assert refusing.asked == [Cursor(-5, "anything")]


def test_listings_with_different_rules_refuse_each_others_cursors() -> None:
    step_token = encode_page_token(Listing.STEPS, [PARENT], Cursor(3))
    assert decode_page_token(step_token, Listing.STEPS, [PARENT]) == Cursor(3)
    good = body_of(step_token)
    for tampered in ({"r": 0}, {"k": ITEM}):
        refused(forged({**good, **tampered}), Listing.STEPS, [PARENT])
    thing = body_of(encode_page_token(Listing.THINGS, [PARENT], Cursor.at(NOW, ITEM)))
    for tampered in ({"k": "not-a-uuid"}, {"r": 10**30}):
        refused(forged({**thing, **tampered}), Listing.THINGS, [PARENT])


def test_tokens_longer_than_the_limit_are_refused_unread() -> None:
    listing = Recording("ListThings", verdict=True)
    body = json.dumps(body_of(encode_page_token(listing, [PARENT], Cursor.at(NOW, ITEM))))

    def padded(size: int) -> str:  # the same body, JSON-padded with spaces to `size` bytes
        return base64.urlsafe_b64encode((body + " " * (size - len(body))).encode()).decode().rstrip("=")

    at_limit, over = padded(PAGE_TOKEN_MAX * 3 // 4), padded(PAGE_TOKEN_MAX * 3 // 4 + 1)
    assert (len(at_limit), len(over)) == (PAGE_TOKEN_MAX, PAGE_TOKEN_MAX + 2)
    assert decode_page_token(at_limit, listing, [PARENT]) == Cursor.at(NOW, ITEM)
    refused(over, listing, [PARENT])
    assert listing.asked == [Cursor.at(NOW, ITEM)]


# ------------------------------------------------------------------ pages


def test_a_page_has_a_next_token_only_when_more_rows_exist() -> None:
    rows = [(NOW + timedelta(seconds=i), str(uuid.UUID(int=i))) for i in range(3)]
    request = PageRequest(2, None)
    page = page_of(rows, request, Listing.THINGS, [PARENT], lambda row: Cursor.at(*row))
    assert page.items == rows[:2]
    assert decode_page_token(page.next_page_token, Listing.THINGS, [PARENT]) == Cursor.at(*rows[1])
    assert page_of(rows[:2], request, Listing.THINGS, [PARENT], lambda row: Cursor.at(*row)) == Page(rows[:2], "")
    assert page_of([], request, Listing.THINGS, [PARENT], lambda row: Cursor.at(*row)) == Page([], "")


def test_paging_through_a_store_visits_every_item_once() -> None:
    stored = sorted((NOW + timedelta(microseconds=i // 3), str(uuid.UUID(int=i))) for i in range(17))

    def read(request: PageRequest) -> list[tuple[datetime, str]]:
        after = request.after
        rows = [row for row in stored if after is None or row > (after.moment, after.key)]
        return rows[: request.size + 1]

    seen: list[tuple[datetime, str]] = []
    token, pages = "", 0
    while True:
        request = page_request(5, token, Listing.THINGS, [PARENT])
        page = page_of(read(request), request, Listing.THINGS, [PARENT], lambda row: Cursor.at(*row))
        seen += page.items
        pages += 1
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert seen == stored
    assert pages == 4
