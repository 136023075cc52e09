"""services.kit.ids: every service reads identifiers, and lists of them, the same way."""

from __future__ import annotations

import uuid

import pytest

from services.kit.errors import InvalidArgument
from services.kit.ids import parse_id, parse_ids

A, B = str(uuid.uuid4()), str(uuid.uuid4())


def test_an_id_is_canonical_lower_case() -> None:
    assert parse_id(f"  {A.upper()} ", "space_id") == A
    with pytest.raises(InvalidArgument, match="space_id: is required"):
        parse_id(" ", "space_id")
    with pytest.raises(InvalidArgument, match="36-character form"):
        parse_id(A.replace("-", ""), "space_id")


def test_a_list_of_ids_is_distinct_bounded_and_names_the_element_at_fault() -> None:
    assert parse_ids([B, A.upper()], "space_ids", 5) == (B, A)
    with pytest.raises(InvalidArgument) as repeated:
        parse_ids([A, B, A.upper()], "space_ids", 5)
    assert repeated.value.field == "space_ids[2]"
    with pytest.raises(InvalidArgument) as malformed:
        parse_ids([A, "x"], "space_ids", 5)
    assert malformed.value.field == "space_ids[1]"
    with pytest.raises(InvalidArgument, match="at most 1 ids, got 2"):
        parse_ids([A, B], "space_ids", 1)
