"""services.chat.domain: input limits, the spaces a question searches, message order, the limits
every streamed answer keeps, and page tokens, each as chat.proto documents them."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.chat.domain import (
    ANSWER_MAX,
    CITATIONS_MAX,
    DELTA_MAX,
    SNIPPET_MAX,
    AnswerDelta,
    AnswerDraft,
    Citation,
    InvalidAnswer,
    Listing,
    cited_document_ids,
    message_time,
    new_conversation,
    no_such_conversation,
    normalize_question,
    normalize_space_ids,
    normalize_title,
    spaces_to_search,
    split_delta,
)
from services.kit.errors import InvalidArgument, NotFound
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

NOW = datetime(2025, 7, 26, 12, 0, tzinfo=UTC)
SPACE_A = "0a1b2c3d-0000-4000-8000-00000000000a"
SPACE_B = "0a1b2c3d-0000-4000-8000-00000000000b"
SPACE_C = "0a1b2c3d-0000-4000-8000-00000000000c"


def invalid(error: pytest.ExceptionInfo[InvalidArgument]) -> tuple[str, str]:
    return error.value.field, error.value.problem


def citation(document_id: str = "doc-1", snippet: str = "A passage.", score: float = 0.5, **changes: int) -> Citation:
    return Citation(
        document_id=document_id,
        space_id=SPACE_A,
        chunk_index=changes.get("chunk_index", 0),
        document_version=changes.get("document_version", 1),
        snippet=snippet,
        score=score,
    )


# ------------------------------------------------------------------ input


def test_ids_are_canonical_uuids_returned_in_lower_case() -> None:
    assert parse_id(f"  {SPACE_A.upper()} ", "conversation_id") == SPACE_A
    with pytest.raises(InvalidArgument) as caught:
        parse_id("not-a-uuid", "conversation_id")
    assert caught.value.field == "conversation_id"
    with pytest.raises(InvalidArgument, match="is required"):
        parse_id("  ", "conversation_id")
    with pytest.raises(InvalidArgument):
        parse_id(SPACE_A.replace("-", ""), "conversation_id")  # the 32-character form is not accepted


@pytest.mark.parametrize(("raw", "expected"), [("  Trip plans ", "Trip plans"), ("x" * 200, "x" * 200)])
def test_title_is_trimmed_and_1_to_200_characters(raw: str, expected: str) -> None:
    assert normalize_title(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "x" * 201, "a\x00b"])
def test_title_outside_its_limits_names_the_field(raw: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        normalize_title(raw)
    assert caught.value.field == "title"


def test_title_length_counts_code_points_not_bytes() -> None:
    assert normalize_title("é" * 200) == "é" * 200


def test_question_is_1_to_2000_characters_after_trimming() -> None:
    assert normalize_question("  How do refunds work?\n") == "How do refunds work?"
    assert normalize_question("q" * 2000) == "q" * 2000
    for raw in ("", " \n ", "q" * 2001):
        with pytest.raises(InvalidArgument) as caught:
            normalize_question(raw)
        assert caught.value.field == "question"


def test_space_ids_are_distinct_uuids_kept_in_order() -> None:
    assert normalize_space_ids([SPACE_B, SPACE_A.upper()]) == (SPACE_B, SPACE_A)
    assert normalize_space_ids([]) == ()


def test_space_ids_problems_name_the_offending_entry() -> None:
    with pytest.raises(InvalidArgument) as caught:
        normalize_space_ids([SPACE_A, "nope"])
    assert caught.value.field == "space_ids[1]"
    with pytest.raises(InvalidArgument) as caught:
        normalize_space_ids([SPACE_A, SPACE_B, SPACE_A.upper()])
    assert invalid(caught)[0] == "space_ids[2]"
    assert "distinct" in caught.value.problem


def test_at_most_100_space_ids() -> None:
    hundred = [str(uuid.uuid4()) for _ in range(100)]
    assert len(normalize_space_ids(hundred)) == 100
    with pytest.raises(InvalidArgument) as caught:
        normalize_space_ids([*hundred, str(uuid.uuid4())])
    assert caught.value.field == "space_ids"


# ------------------------------------------------------------ conversations


def test_a_new_conversation_is_empty_so_updated_at_equals_created_at() -> None:
    conversation = new_conversation("owner", "Title", (SPACE_A,), NOW)
    assert conversation.created_at == conversation.updated_at == NOW
    assert conversation.space_ids == (SPACE_A,)
    assert uuid.UUID(conversation.conversation_id).version == 4


def test_missing_and_foreign_conversations_get_the_same_answer() -> None:
    error = no_such_conversation(SPACE_A)
    assert isinstance(error, NotFound)
    assert SPACE_A in error.message


def test_scoped_search_keeps_the_scope_order_and_skips_lost_spaces_silently() -> None:
    assert spaces_to_search([SPACE_C, SPACE_A, SPACE_B], {SPACE_A, SPACE_C}) == [SPACE_C, SPACE_A]
    assert spaces_to_search([SPACE_A], set()) == []


def test_an_empty_scope_searches_every_readable_space() -> None:
    assert spaces_to_search([], {SPACE_B, SPACE_A}) == [SPACE_A, SPACE_B]
    assert spaces_to_search([], set()) == []


def test_messages_get_strictly_increasing_times_even_if_the_clock_steps_back() -> None:
    assert message_time(NOW, NOW - timedelta(seconds=1)) == NOW
    assert message_time(NOW, NOW) == NOW + timedelta(microseconds=1)
    assert message_time(NOW - timedelta(seconds=5), NOW) == NOW + timedelta(microseconds=1)


def test_cited_documents_are_distinct_in_first_citation_order() -> None:
    citations = [citation("b"), citation("a"), citation("b", chunk_index=2), citation("c")]
    assert cited_document_ids(citations) == ["b", "a", "c"]


# -------------------------------------------------------------- answers


def test_split_delta_keeps_every_fragment_within_2000_characters() -> None:
    text = "x" * (2 * DELTA_MAX + 5)
    pieces = split_delta(text)
    assert [len(piece) for piece in pieces] == [DELTA_MAX, DELTA_MAX, 5]
    assert "".join(pieces) == text
    assert split_delta("") == []


def test_draft_text_is_the_concatenation_of_the_deltas_sent() -> None:
    draft = AnswerDraft()
    sent = draft.add_text("From your documents:") + draft.add_text("") + draft.add_text("\n> " + "y" * 2500)
    assert all(1 <= len(delta.text) <= DELTA_MAX for delta in sent)
    assert "".join(delta.text for delta in sent) == draft.text
    assert isinstance(sent[0], AnswerDelta)


def test_draft_drops_nul_characters_postgresql_cannot_store() -> None:
    draft = AnswerDraft()
    [delta] = draft.add_text("a\x00b")
    kept = draft.add_citation(citation(snippet="x\x00y"))
    assert delta.text == draft.text == "ab"
    assert kept.snippet == "xy"


def test_draft_is_empty_until_it_has_text_or_citations() -> None:
    draft = AnswerDraft()
    draft.add_text("")
    assert draft.is_empty
    draft.add_text("text")
    assert not draft.is_empty


def test_draft_refuses_an_answer_over_20000_characters() -> None:
    draft = AnswerDraft()
    draft.add_text("x" * ANSWER_MAX)
    with pytest.raises(InvalidAnswer):
        draft.add_text("x")


def test_draft_refuses_more_than_20_citations() -> None:
    draft = AnswerDraft()
    for index in range(CITATIONS_MAX):
        draft.add_citation(citation(chunk_index=index))
    with pytest.raises(InvalidAnswer):
        draft.add_citation(citation(chunk_index=99))
    assert len(draft.citations) == CITATIONS_MAX


def test_draft_keeps_citations_within_the_contract() -> None:
    draft = AnswerDraft()
    kept = draft.add_citation(citation(snippet=" " + "s" * (SNIPPET_MAX + 50), score=1.0000001))
    assert kept.snippet == "s" * SNIPPET_MAX
    assert kept.score == 1.0
    for bad in (citation(snippet="  "), citation(chunk_index=-1), citation(document_version=0)):
        with pytest.raises(InvalidAnswer):
            draft.add_citation(bad)


# ------------------------------------------------------------------ pages


def test_page_size_defaults_to_20_and_is_bounded() -> None:
    assert page_request(0, "", Listing.CONVERSATIONS, ["me"]) == PageRequest(PAGE_SIZE_DEFAULT, None)
    assert page_request(100, "", Listing.CONVERSATIONS, ["me"]).size == 100
    for size in (-1, 101):
        with pytest.raises(InvalidArgument) as caught:
            page_request(size, "", Listing.CONVERSATIONS, ["me"])
        assert caught.value.field == "page_size"


def test_a_token_round_trips_for_the_same_listing_and_scope() -> None:
    cursor = Cursor.at(NOW, SPACE_A)
    token = encode_page_token(Listing.MESSAGES, [SPACE_B], cursor)
    assert decode_page_token(token, Listing.MESSAGES, [SPACE_B]) == cursor
    assert cursor.moment == NOW
    assert page_request(5, token, Listing.MESSAGES, [SPACE_B]) == PageRequest(5, cursor)


@pytest.mark.parametrize(
    ("listing", "scope"),
    [
        (Listing.CONVERSATIONS, [SPACE_B]),  # another RPC's token
        (Listing.MESSAGES, [SPACE_C]),  # another conversation's token
    ],
)
def test_a_token_is_refused_elsewhere(listing: Listing, scope: list[str]) -> None:
    token = encode_page_token(Listing.MESSAGES, [SPACE_B], Cursor.at(NOW, SPACE_A))
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(token, listing, scope)
    assert caught.value.field == "page_token"


def forged(body: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        "x" * 600,
        forged(["not", "an", "object"]),
        forged({"l": "ListMessages", "q": "0" * 16, "r": 1, "k": SPACE_A}),  # wrong scope digest
    ],
)
def test_malformed_tokens_are_invalid_arguments(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(token, Listing.MESSAGES, [SPACE_B])
    assert caught.value.field == "page_token"


def test_token_values_are_checked_before_they_reach_a_query() -> None:
    good = json.loads(
        base64.urlsafe_b64decode(encode_page_token(Listing.MESSAGES, [SPACE_B], Cursor(1, SPACE_A)) + "==")
    )
    for changes in ({"r": "1"}, {"r": True}, {"r": 10**20}, {"k": "x' OR 1=1"}, {"k": 5}):
        with pytest.raises(InvalidArgument):
            decode_page_token(forged({**good, **changes}), Listing.MESSAGES, [SPACE_B])


def test_a_page_has_a_next_token_only_when_more_rows_exist() -> None:
    rows = [(NOW + timedelta(seconds=i), str(uuid.uuid4())) for i in range(3)]
    request = PageRequest(2, None)
    page = page_of(rows, request, Listing.MESSAGES, [SPACE_B], lambda row: Cursor.at(*row))
    assert page.items == rows[:2]
    assert decode_page_token(page.next_page_token, Listing.MESSAGES, [SPACE_B]) == Cursor.at(*rows[1])
    last = page_of(rows[:2], request, Listing.MESSAGES, [SPACE_B], lambda row: Cursor.at(*row))
    assert last.items == rows[:2]
    assert last.next_page_token == ""
