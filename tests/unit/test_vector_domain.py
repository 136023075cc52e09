"""The vector domain's rules (search limits, which spaces a search may see) and the access
cache (per-user answers, dropped on membership events, a fetch never resurrecting old data)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.kit.errors import InvalidArgument, PermissionDenied
from services.vector.access import AccessCache
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
        ("ok", 5, [A, A], "space_ids"),
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


class Fetcher:
    def __init__(self) -> None:
        self.answers = {"u": [A]}
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def __call__(self, user_id: str) -> list[str]:
        self.calls += 1
        answer = list(self.answers[user_id])
        if self.gate is not None:
            await self.gate.wait()
        return answer


async def test_answers_are_cached_until_a_membership_event_drops_them() -> None:
    fetcher = Fetcher()
    cache = AccessCache(fetcher, ttl_s=60)
    assert await cache.readable("u") == (A,)
    assert await cache.readable("u") == (A,)
    assert fetcher.calls == 1
    fetcher.answers["u"] = [A, B]
    cache.forget("u")
    assert await cache.readable("u") == tuple(sorted([A, B]))
    assert fetcher.calls == 2


async def test_entries_expire_as_a_backstop() -> None:
    now = [0.0]
    fetcher = Fetcher()
    cache = AccessCache(fetcher, ttl_s=30, clock=lambda: now[0])
    await cache.readable("u")
    now[0] = 31.0
    await cache.readable("u")
    assert fetcher.calls == 2


async def test_a_fetch_that_started_before_a_change_does_not_store_the_old_answer() -> None:
    fetcher = Fetcher()
    fetcher.gate = asyncio.Event()
    cache = AccessCache(fetcher, ttl_s=60)
    slow = asyncio.create_task(cache.readable("u"))
    await asyncio.sleep(0)
    fetcher.answers["u"] = []  # the user was removed while the fetch was in flight
    cache.forget("u")
    fetcher.gate.set()
    assert await slow == (A,)  # that caller sees what was true when it asked...
    fetcher.gate = None
    assert await cache.readable("u") == ()  # ...but the stale answer was not kept
