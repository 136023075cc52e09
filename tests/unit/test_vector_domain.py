"""The vector domain's rules: search limits, which spaces a search may see."""

from __future__ import annotations

import uuid

import pytest

from services.kit.errors import InvalidArgument, PermissionDenied
from services.vector.domain import clip_snippet, search_query, searchable_spaces

A, B, C = (str(uuid.uuid4()) for _ in range(3))


def test_a_search_is_trimmed_and_defaults_to_ten_hits() -> None:
    query = search_query("  onboarding checklist ", 0, [A.upper()])
    assert (query.text, query.top_k, query.space_ids) == ("onboarding checklist", 10, (A,))


@pytest.mark.parametrize(
    ("text", "top_k", "spaces", "field"),
    [
        ("   ", 5, [], "query"),
        ("x" * 1001, 5, [], "query"),
        ("ok", 51, [], "top_k"),
        ("ok", -1, [], "top_k"),
        ("ok", 5, ["not-a-uuid"], "space_ids[0]"),
        ("ok", 5, [A, A], "space_ids[1]"),
        ("ok", 5, [str(uuid.uuid4()) for _ in range(101)], "space_ids"),
    ],
)
def test_search_limits_name_the_field(text: str, top_k: int, spaces: list[str], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        search_query(text, top_k, spaces)
    assert caught.value.field == field


def test_no_filter_searches_every_readable_space() -> None:
    assert searchable_spaces([], [B, A]) == sorted([A, B])


def test_a_filter_may_only_name_readable_spaces() -> None:
    assert searchable_spaces([A], [A, B]) == [A]
    with pytest.raises(PermissionDenied, match=C):
        searchable_spaces([A, C], [A, B])


def test_snippets_stay_within_the_contract() -> None:
    assert clip_snippet("  text  ") == "text"
    assert len(clip_snippet("y" * 5000)) == 1000
    assert clip_snippet("   ") == "…"
