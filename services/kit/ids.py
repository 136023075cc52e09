"""Identifiers on the wire: UUIDs in the canonical 36-character hyphenated form (every proto's
convention), read the same way by every service."""

from __future__ import annotations

import re
from collections.abc import Sequence

from services.kit.errors import InvalidArgument

CANONICAL_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
UUID_EXAMPLE = "123e4567-e89b-12d3-a456-426614174000"


def parse_id(raw: str, field: str) -> str:
    """A UUID in the canonical 36-character hyphenated form, returned in lower case (surrounding
    spaces and upper case are forgiven; other spellings are not)."""
    text = raw.strip().lower()
    if not text:
        raise InvalidArgument(field, f"is required: a UUID like {UUID_EXAMPLE}")
    if not CANONICAL_UUID.match(text):
        shown = raw if len(raw) <= 40 else raw[:40] + "…"
        raise InvalidArgument(field, f"must be a UUID in the 36-character form like {UUID_EXAMPLE}, got {shown!r}")
    return text


def parse_ids(raw: Sequence[str], field: str, maximum: int) -> tuple[str, ...]:
    """0–`maximum` distinct UUIDs (each read as `parse_id` reads one), in the order given; an
    error names the element at fault, e.g. `space_ids[2]`."""
    if len(raw) > maximum:
        raise InvalidArgument(field, f"must hold at most {maximum} ids, got {len(raw)}")
    parsed: list[str] = []
    for index, value in enumerate(raw):
        identifier = parse_id(value, f"{field}[{index}]")
        if identifier in parsed:
            raise InvalidArgument(f"{field}[{index}]", f"repeats {identifier}; the ids must be distinct")
        parsed.append(identifier)
    return tuple(parsed)
