"""The vector domain: what a valid search is, which spaces it may see, and which index change
a document event asks for. Pure rules, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from services.kit.errors import InvalidArgument, PermissionDenied
from services.kit.ids import parse_ids
from services.kit.text import trimmed_text

QUERY_LENGTH = (1, 1000)
TOP_K_RANGE = (1, 50)
DEFAULT_TOP_K = 10
MAX_SPACE_FILTER = 100


@dataclass(frozen=True)
class SearchQuery:
    text: str
    top_k: int
    space_ids: tuple[str, ...]  # requested filter; empty = every readable space


def search_query(text: str, top_k: int, space_ids: Sequence[str]) -> SearchQuery:
    query = trimmed_text(text, "query", *QUERY_LENGTH)
    wanted = top_k or DEFAULT_TOP_K
    if not TOP_K_RANGE[0] <= wanted <= TOP_K_RANGE[1]:
        raise InvalidArgument(
            "top_k", f"must be {TOP_K_RANGE[0]}–{TOP_K_RANGE[1]} (0 means {DEFAULT_TOP_K}), got {top_k}"
        )
    return SearchQuery(query, wanted, parse_ids(space_ids, "space_ids", MAX_SPACE_FILTER))


def searchable_spaces(requested: Sequence[str], readable: Iterable[str]) -> list[str]:
    """The spaces a search may look in: the requested ones, each of which the caller must be
    able to read, or (none requested) every space the caller can read."""
    allowed = set(readable)
    if not requested:
        return sorted(allowed)
    for space_id in requested:
        if space_id not in allowed:
            raise PermissionDenied(f"space {space_id} does not exist or you are not a member of it")
    return list(requested)


def clip_snippet(text: str, limit: int = 1000) -> str:
    """A hit's snippet: 1–1000 characters (the contract)."""
    clipped = text.strip()[:limit]
    return clipped or "…"
