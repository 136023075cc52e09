"""services.knowledge.domain: input limits, role rules, the last-owner rule, document versions
and page tokens, each as knowledge.proto documents them."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.kit.errors import Conflict, FailedPrecondition, InvalidArgument, PermissionDenied
from services.kit.ids import parse_id
from services.kit.pagination import (
    PAGE_SIZE_DEFAULT,
    Cursor,
    PageRequest,
    decode_page_token,
    encode_page_token,
    page_of,
    page_request,
)
from services.knowledge.domain import (
    CONTENT_MAX_BYTES,
    Document,
    DocumentChanges,
    Listing,
    Role,
    check_content,
    check_current_version,
    check_expected_version,
    check_may_remove,
    check_space_keeps_an_owner,
    creation_time,
    document_changes,
    document_draft,
    has_access,
    lowest_role,
    new_document,
    new_space,
    next_version,
    normalize_description,
    normalize_space_name,
    normalize_tags,
    normalize_title,
    require_role,
    role_to_grant,
    snapshot,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
SPACE = "0b1e6c52-8d0f-4a4c-9a59-6f1f3a1c2d3e"
ALICE = "6a1d1f70-2f7e-4bb8-9d8c-1c2b3a4d5e6f"
BOB = "f3c2b1a0-9e8d-4c7b-8a69-5d4e3f2a1b0c"


def violated_field(error: pytest.ExceptionInfo[InvalidArgument]) -> str:
    return error.value.field


# ------------------------------------------------------------------ input


def test_ids_are_canonical_uuids_returned_in_lower_case() -> None:
    assert parse_id(f"  {SPACE.upper()} ", "space_id") == SPACE


@pytest.mark.parametrize("raw", ["", "   ", "not-a-uuid", SPACE.replace("-", ""), "{" + SPACE + "}", SPACE + "0"])
def test_malformed_ids_are_invalid_and_name_the_field(raw: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        parse_id(raw, "document_id")
    assert violated_field(error) == "document_id"


def test_space_name_is_trimmed_and_bounded_in_code_points() -> None:
    assert normalize_space_name("  Research  ") == "Research"
    assert normalize_space_name("é" * 100) == "é" * 100  # 100 code points, 200 bytes
    with pytest.raises(InvalidArgument, match="1–100") as error:
        normalize_space_name("x" * 101)
    assert violated_field(error) == "name"
    with pytest.raises(InvalidArgument, match="required"):
        normalize_space_name(" \t\n ")


def test_description_may_be_empty_but_not_longer_than_2000() -> None:
    assert normalize_description("   ") == ""
    assert len(normalize_description("d" * 2000)) == 2000
    with pytest.raises(InvalidArgument) as error:
        normalize_description("d" * 2001)
    assert violated_field(error) == "description"


def test_title_limits_and_nul_characters() -> None:
    assert normalize_title(" Plan ") == "Plan"
    with pytest.raises(InvalidArgument) as error:
        normalize_title("t" * 201)
    assert violated_field(error) == "title"
    with pytest.raises(InvalidArgument, match="U\\+0000"):
        normalize_title("a\x00b")


def test_content_is_kept_as_given_and_bounded_in_utf8_bytes() -> None:
    assert check_content("  padded \n") == "  padded \n"
    two_byte = "é" * (CONTENT_MAX_BYTES // 2)
    assert check_content(two_byte) == two_byte
    with pytest.raises(InvalidArgument, match=str(CONTENT_MAX_BYTES + 2)) as error:
        check_content(two_byte + "é")
    assert violated_field(error) == "content"
    with pytest.raises(InvalidArgument, match="UTF-8"):
        check_content("lone surrogate \ud800")


def test_tags_are_trimmed_distinct_bounded_and_keep_their_order() -> None:
    assert normalize_tags([" b ", "a"]) == ("b", "a")
    assert len(normalize_tags([f"t{i}" for i in range(20)])) == 20
    with pytest.raises(InvalidArgument, match="at most 20") as error:
        normalize_tags([f"t{i}" for i in range(21)])
    assert violated_field(error) == "tags"
    with pytest.raises(InvalidArgument, match="distinct") as error:
        normalize_tags(["a", " a"])
    assert violated_field(error) == "tags[1]"
    with pytest.raises(InvalidArgument) as error:
        normalize_tags(["ok", "x" * 41])
    assert violated_field(error) == "tags[1]"
    with pytest.raises(InvalidArgument) as error:
        normalize_tags(["  "], "tags.values")
    assert violated_field(error) == "tags.values[0]"


def test_expected_version_starts_at_one() -> None:
    assert check_expected_version(1) == 1
    with pytest.raises(InvalidArgument) as error:
        check_expected_version(0)
    assert violated_field(error) == "expected_version"


# ------------------------------------------------------------------ roles


def test_roles_are_ordered_and_use_the_proto_numbers() -> None:
    assert Role.VIEWER < Role.EDITOR < Role.OWNER
    assert [int(role) for role in Role] == [1, 2, 3]


@pytest.mark.parametrize("number", [0, 4, -1])
def test_a_granted_role_must_be_a_real_role(number: int) -> None:
    with pytest.raises(InvalidArgument, match="ROLE_VIEWER, ROLE_EDITOR or ROLE_OWNER") as error:
        role_to_grant(number)
    assert violated_field(error) == "role"


def test_an_unspecified_lowest_role_means_any_member() -> None:
    assert lowest_role(0, "required_role") is Role.VIEWER
    assert lowest_role(3, "required_role") is Role.OWNER
    with pytest.raises(InvalidArgument) as error:
        lowest_role(9, "minimum_role")
    assert violated_field(error) == "minimum_role"


def test_access_needs_a_role_at_least_the_required_one() -> None:
    assert has_access(Role.OWNER, Role.EDITOR)
    assert has_access(Role.EDITOR, Role.EDITOR)
    assert not has_access(Role.VIEWER, Role.EDITOR)
    assert not has_access(None, Role.VIEWER)


def test_non_members_and_missing_spaces_are_refused_alike() -> None:
    with pytest.raises(PermissionDenied, match="not a member") as refused:
        require_role(None, Role.VIEWER, "reading documents", SPACE)
    assert SPACE in refused.value.message


def test_a_low_role_is_told_which_role_is_needed() -> None:
    assert require_role(Role.OWNER, Role.EDITOR, "creating documents", SPACE) is Role.OWNER
    with pytest.raises(PermissionDenied, match=r"needs the editor role or higher.*your role is viewer"):
        require_role(Role.VIEWER, Role.EDITOR, "creating documents", SPACE)


def test_any_member_may_leave_but_only_owners_remove_others() -> None:
    check_may_remove(Role.VIEWER, ALICE, ALICE, SPACE)
    check_may_remove(Role.OWNER, ALICE, BOB, SPACE)
    with pytest.raises(PermissionDenied, match=r"needs the owner role in .*; your role is editor"):
        check_may_remove(Role.EDITOR, ALICE, BOB, SPACE)
    with pytest.raises(PermissionDenied, match="not a member"):
        check_may_remove(None, ALICE, ALICE, SPACE)


@pytest.mark.parametrize("new_role", [Role.EDITOR, Role.VIEWER, None])
def test_the_last_owner_can_be_neither_demoted_nor_removed(new_role: Role | None) -> None:
    with pytest.raises(FailedPrecondition, match="without an owner"):
        check_space_keeps_an_owner(1, Role.OWNER, new_role, ALICE, SPACE)
    check_space_keeps_an_owner(2, Role.OWNER, new_role, ALICE, SPACE)


def test_members_who_are_not_owners_never_trip_the_owner_rule() -> None:
    check_space_keeps_an_owner(1, Role.EDITOR, None, BOB, SPACE)
    check_space_keeps_an_owner(1, Role.VIEWER, Role.EDITOR, BOB, SPACE)
    check_space_keeps_an_owner(1, Role.OWNER, Role.OWNER, ALICE, SPACE)


def test_a_new_space_makes_its_creator_the_owner() -> None:
    space, owner = new_space(" Team ", "", ALICE, NOW)
    assert space.name == "Team"
    assert (owner.space_id, owner.user_id, owner.role, owner.added_by) == (space.space_id, ALICE, Role.OWNER, ALICE)
    assert owner.added_at == owner.updated_at == NOW


# -------------------------------------------------------------- documents


def a_document() -> Document:
    return new_document(document_draft(" Plan ", "body", ["a", "b"]), SPACE, ALICE, NOW)


def test_a_new_document_is_at_version_one_with_its_version_snapshot() -> None:
    document = a_document()
    assert (document.version, document.title, document.tags) == (1, "Plan", ("a", "b"))
    version = snapshot(document)
    assert (version.version, version.author_id, version.created_at, version.content) == (1, ALICE, NOW, "body")


def test_an_update_must_set_something() -> None:
    with pytest.raises(InvalidArgument, match="at least one"):
        document_changes(None, None, None)
    assert document_changes(None, "", None) == DocumentChanges(None, "", None)
    with pytest.raises(InvalidArgument) as error:
        document_changes(None, None, ["x", "x"])
    assert violated_field(error) == "tags.values[1]"


def test_the_next_version_replaces_set_fields_and_keeps_the_rest() -> None:
    document = a_document()
    later = NOW + timedelta(minutes=5)
    updated = next_version(document, document_changes(None, "", []), BOB, later)
    assert (updated.version, updated.title, updated.content, updated.tags) == (2, "Plan", "", ())
    assert (updated.created_by, updated.created_at, updated.updated_by, updated.updated_at) == (
        ALICE,
        NOW,
        BOB,
        later,
    )
    # Writing the same values still records a new version.
    assert next_version(updated, document_changes("Plan", None, None), BOB, later).version == 3


def test_a_stale_expected_version_is_a_conflict_naming_both_versions() -> None:
    document = next_version(a_document(), document_changes("v2", None, None), BOB, NOW)
    check_current_version(document, 2)
    with pytest.raises(Conflict, match="at version 2, not expected_version 1"):
        check_current_version(document, 1)


def test_creation_times_only_increase_within_a_space() -> None:
    assert creation_time(NOW, None) == NOW
    assert creation_time(NOW, NOW - timedelta(seconds=1)) == NOW
    assert creation_time(NOW, NOW) == NOW + timedelta(microseconds=1)
    behind = NOW + timedelta(seconds=3)  # the clock stepped back
    assert creation_time(NOW, behind) == behind + timedelta(microseconds=1)


# ------------------------------------------------------------------ pages


@pytest.mark.parametrize("size", [-1, 101])
def test_page_size_outside_1_to_100_is_invalid(size: int) -> None:
    with pytest.raises(InvalidArgument, match="1–100") as error:
        page_request(size, "", Listing.DOCUMENTS, [SPACE])
    assert violated_field(error) == "page_size"


def test_page_size_zero_means_the_default() -> None:
    assert page_request(0, "", Listing.DOCUMENTS, [SPACE]) == PageRequest(PAGE_SIZE_DEFAULT, None)


def test_cursor_times_round_trip_to_the_microsecond() -> None:
    cursor = Cursor.at(NOW, SPACE)
    assert cursor.moment == NOW
    assert Cursor.at(datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), SPACE).rank == -1


def test_a_page_token_round_trips_for_the_same_listing_and_parameters() -> None:
    cursor = Cursor.at(NOW, ALICE)
    token = encode_page_token(Listing.MEMBERS, [SPACE], cursor)
    assert page_request(5, token, Listing.MEMBERS, [SPACE]) == PageRequest(5, cursor)


@pytest.mark.parametrize(
    ("listing", "scope"),
    [(Listing.DOCUMENTS, [SPACE]), (Listing.MEMBERS, [BOB]), (Listing.SPACES, [SPACE])],
    ids=["other listing", "other space", "other caller"],
)
def test_a_page_token_is_refused_for_other_request_parameters(listing: Listing, scope: list[str]) -> None:
    token = encode_page_token(Listing.MEMBERS, [SPACE], Cursor.at(NOW, ALICE))
    with pytest.raises(InvalidArgument, match=listing.value) as error:
        decode_page_token(token, listing, scope)
    assert violated_field(error) == "page_token"


def forged(body: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


def honest_body(listing: Listing, scope: list[str]) -> dict[str, object]:
    token = encode_page_token(listing, scope, Cursor.at(NOW, ALICE) if listing is not Listing.VERSIONS else Cursor(3))
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    return decoded


@pytest.mark.parametrize(
    "token",
    [
        "!!!",
        "bm90IGpzb24",  # base64 of "not json"
        forged([1, 2]),
        forged({**honest_body(Listing.DOCUMENTS, [SPACE]), "k": "not-a-uuid"}),
        forged({**honest_body(Listing.DOCUMENTS, [SPACE]), "r": 10**30}),
        forged({**honest_body(Listing.DOCUMENTS, [SPACE]), "r": "12"}),
        forged({**honest_body(Listing.DOCUMENTS, [SPACE]), "r": True}),
        "A" * 600,
    ],
    ids=["not base64", "not json", "not an object", "bad key", "time overflow", "rank text", "rank bool", "too long"],
)
def test_malformed_or_tampered_page_tokens_are_invalid_not_crashes(token: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        page_request(10, token, Listing.DOCUMENTS, [SPACE])
    assert violated_field(error) == "page_token"


def test_version_tokens_carry_a_version_and_no_key() -> None:
    scope = [SPACE, ALICE]
    assert decode_page_token(forged(honest_body(Listing.VERSIONS, scope)), Listing.VERSIONS, scope) == Cursor(3)
    for tampered in ({"r": 0}, {"k": ALICE}):
        with pytest.raises(InvalidArgument):
            decode_page_token(forged({**honest_body(Listing.VERSIONS, scope), **tampered}), Listing.VERSIONS, scope)


def test_paging_visits_every_item_once_even_when_items_are_added_between_pages() -> None:
    """page_of over a cursor-ordered store: no item is skipped or repeated, and items created
    while paging (later creation times, per creation_time) show up on later pages."""
    stored: list[tuple[datetime, str]] = sorted(
        (NOW + timedelta(microseconds=i // 2), str(uuid.UUID(int=i))) for i in range(23)
    )

    def read(request: PageRequest) -> list[tuple[datetime, str]]:
        after = request.after
        rows = [row for row in sorted(stored) if after is None or (row[0], row[1]) > (after.moment, after.key)]
        return rows[: request.size + 1]

    seen: list[tuple[datetime, str]] = []
    token, pages = "", 0
    while True:
        request = page_request(4, token, Listing.DOCUMENTS, [SPACE])
        page = page_of(read(request), request, Listing.DOCUMENTS, [SPACE], lambda row: Cursor.at(row[0], row[1]))
        seen += page.items
        pages += 1
        if pages == 2:  # a document created while paging
            stored.append((creation_time(NOW, max(stored)[0]), str(uuid.UUID(int=999))))
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert seen == sorted(stored)
    assert pages == 6  # 24 items in pages of 4; the last full page reveals no extra row


def test_a_page_of_exactly_the_remaining_rows_is_the_last() -> None:
    request = PageRequest(2, None)
    assert page_of([1, 2], request, Listing.VERSIONS, [SPACE, ALICE], Cursor).next_page_token == ""
    page = page_of([3, 2, 1], request, Listing.VERSIONS, [SPACE, ALICE], Cursor)
    assert page.items == [3, 2]
    assert decode_page_token(page.next_page_token, Listing.VERSIONS, [SPACE, ALICE]) == Cursor(2)
