"""services.kit.access.AccessCache: answers per user, kept only at the epoch they were fetched
at, dropped on membership events, expiring as a backstop, never trusted when the epoch is
unknown. (AccessEpochs itself is checked against the stack's Redis in tests/system.)"""

from __future__ import annotations

import asyncio
import uuid

from services.kit.access import AccessCache

A, B = str(uuid.uuid4()), str(uuid.uuid4())
VIEWER, EDITOR = 1, 2


class Fetcher:
    """The knowledge service's ListAccessibleSpaces, as the cache sees it."""

    def __init__(self) -> None:
        self.answers = {"u": [A]}
        self.editor_of: dict[str, int] = {}
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def __call__(self, user_id: str) -> dict[str, int]:
        self.calls += 1
        answer = dict.fromkeys(self.answers[user_id], VIEWER)
        answer.update(self.editor_of)
        if self.gate is not None:
            await self.gate.wait()
        return answer


class Epochs:
    """What Redis would answer for each user's epoch (None: Redis unreachable)."""

    def __init__(self) -> None:
        self.values: dict[str, int | None] = {}

    async def current(self, user_id: str) -> int | None:
        return self.values.get(user_id, 0)

    def bump(self, user_id: str) -> None:
        self.values[user_id] = (self.values.get(user_id) or 0) + 1


async def test_answers_are_kept_while_the_epoch_stays() -> None:
    fetcher, epochs = Fetcher(), Epochs()
    cache = AccessCache(fetcher, epochs, ttl_s=60)
    assert await cache.readable("u") == (A,)
    assert await cache.readable("u") == (A,)
    assert (fetcher.calls, cache.hits, cache.misses) == (1, 1, 1)


async def test_a_bumped_epoch_makes_the_next_lookup_ask_again() -> None:
    fetcher, epochs = Fetcher(), Epochs()
    cache = AccessCache(fetcher, epochs, ttl_s=60)
    await cache.readable("u")
    fetcher.answers["u"] = []  # removed; the event has not arrived, nothing was forgotten
    epochs.bump("u")
    assert await cache.readable("u") == ()
    assert fetcher.calls == 2


async def test_a_membership_event_drops_the_entry_too() -> None:
    fetcher, epochs = Fetcher(), Epochs()
    cache = AccessCache(fetcher, epochs, ttl_s=60)
    await cache.readable("u")
    fetcher.answers["u"] = [A, B]
    cache.forget("u")
    assert await cache.readable("u") == tuple(sorted([A, B]))


async def test_entries_expire_as_a_backstop() -> None:
    now = [0.0]
    fetcher = Fetcher()
    cache = AccessCache(fetcher, Epochs(), ttl_s=30, clock=lambda: now[0])
    await cache.readable("u")
    now[0] = 31.0
    await cache.readable("u")
    assert fetcher.calls == 2


async def test_without_an_epoch_nothing_is_cached() -> None:
    fetcher, epochs = Fetcher(), Epochs()
    epochs.values["u"] = None
    cache = AccessCache(fetcher, epochs, ttl_s=60)
    for _ in range(3):
        assert await cache.readable("u") == (A,)
    assert fetcher.calls == 3, "Redis unreadable: every lookup asks the authority"


async def test_a_fetch_that_raced_a_change_is_not_trusted_afterwards() -> None:
    fetcher, epochs = Fetcher(), Epochs()
    fetcher.gate = asyncio.Event()
    cache = AccessCache(fetcher, epochs, ttl_s=60)
    slow = asyncio.create_task(cache.readable("u"))
    await asyncio.sleep(0)
    fetcher.answers["u"] = []  # the user was removed while the fetch was in flight
    epochs.bump("u")
    fetcher.gate.set()
    assert await slow == (A,)  # that caller sees what was true when it asked...
    fetcher.gate = None
    assert await cache.readable("u") == ()  # ...but the answer was stored at the old epoch


async def test_roles_are_cached_with_the_spaces() -> None:
    fetcher, epochs = Fetcher(), Epochs()
    fetcher.editor_of = {B: EDITOR}
    cache = AccessCache(fetcher, epochs, ttl_s=60)
    assert (await cache.role("u", A), await cache.role("u", B), await cache.role("u", "elsewhere")) == (
        VIEWER,
        EDITOR,
        0,
    )
    assert await cache.readable("u") == tuple(sorted([A, B]))
    assert fetcher.calls == 1
    fetcher.editor_of = {}  # demoted out of B...
    epochs.bump("u")  # ...which bumps the epoch
    assert await cache.role("u", B) == 0
