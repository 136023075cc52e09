"""Which spaces a user can read: the knowledge service's answer, cached per user.

Search asks this for every query, so the answer is cached. The knowledge service stays the
authority: an entry is dropped as soon as the vector service consumes a membership event
about that user (member added, role changed, removed) — in practice well under a second after
the change commits — and entries expire after `ttl_s` as a backstop (for example while Kafka
is unreachable). That is the documented bound on how long a removed member can still find a
space's chunks: the event's delivery, at most `ttl_s`.

A fetch that started before a membership change must not put the old answer back after the
change dropped it: each user has a generation, bumped by `forget`, and a fetch only stores its
answer if the generation is still the one it started with.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

FetchReadable = Callable[[str], Awaitable[list[str]]]


@dataclass(frozen=True)
class CachedAccess:
    space_ids: tuple[str, ...]
    fetched_at: float


class AccessCache:
    def __init__(self, fetch: FetchReadable, ttl_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.fetch = fetch
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: dict[str, CachedAccess] = {}
        self._generations: dict[str, int] = {}
        self.hits = 0
        self.misses = 0

    async def readable(self, user_id: str) -> tuple[str, ...]:
        entry = self._entries.get(user_id)
        if entry is not None and self.clock() - entry.fetched_at < self.ttl_s:
            self.hits += 1
            return entry.space_ids
        self.misses += 1
        generation = self._generations.get(user_id, 0)
        space_ids = tuple(sorted(await self.fetch(user_id)))
        if self._generations.get(user_id, 0) == generation:
            self._entries[user_id] = CachedAccess(space_ids, self.clock())
        return space_ids

    def forget(self, user_id: str) -> None:
        """The user's memberships changed: the next search asks the knowledge service again."""
        self._generations[user_id] = self._generations.get(user_id, 0) + 1
        self._entries.pop(user_id, None)
