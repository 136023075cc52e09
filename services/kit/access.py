"""Which spaces a user can read, and with which role: the knowledge service's answer, cached
per user, and never stale once a membership change has returned.

The knowledge service is the authority (ListAccessibleSpaces); services that filter by space
on every request (search, and later canvas, activity, notifications) cache its answer here.

Read-your-writes for access. Every membership change bumps the user's access epoch in Redis
(`AccessEpochs.bump`) after it commits and before the RPC returns. A lookup reads the epoch
(one GET) and uses a cached answer only if it was fetched at that same epoch, so once
RemoveMember has returned no cache anywhere answers with the old membership, however far
behind the caching service's event consumer is. A fetch that raced the change stored the
epoch it started with, so it is refetched next time. Membership events drop entries early,
and entries expire after `ttl_s` as a backstop: the longest a removed member keeps access if
the knowledge service could not reach Redis at all. When Redis cannot be read the cache asks
the knowledge service every time: it fails closed, not open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import grpc
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.api.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc

log = logging.getLogger("services.kit.access")

# A user's spaces and their role in each (the knowledge proto's Role numbers: viewer 1,
# editor 2, owner 3), as ListAccessibleSpaces answers with minimum_role viewer.
FetchRoles = Callable[[str], Awaitable[Mapping[str, int]]]

EPOCH_KEY = "access-epoch:{user_id}"
# Far longer than any cached answer lives: an epoch key that expired can only make a cache refetch.
EPOCH_TTL_S = 24 * 3600


class AccessEpochs:
    """Per-user counters of membership changes, in Redis (written by the knowledge service)."""

    def __init__(self, redis: aioredis.Redis, attempts: int = 3) -> None:
        self.redis = redis
        self.attempts = attempts

    async def current(self, user_id: str) -> int | None:
        """The user's epoch (0 before any change), or None when Redis cannot say."""
        try:
            value = await self.redis.get(EPOCH_KEY.format(user_id=user_id))
        except (RedisError, OSError):
            return None
        return int(value) if value is not None else 0

    async def bump(self, user_ids: Iterable[str]) -> bool:
        """Make every cached answer about these users stale; False when Redis never took it
        (the change still holds: caches learn it from its event, or when their entries expire)."""
        keys = [EPOCH_KEY.format(user_id=user_id) for user_id in user_ids]
        for attempt in range(self.attempts):
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.incr(key)
                        pipe.expire(key, EPOCH_TTL_S)
                    await pipe.execute()
                return True
            except (RedisError, OSError):
                await asyncio.sleep(0.05 * 2**attempt)
        log.error("access epochs of %d user(s) could not be bumped; caches catch up by event or expiry", len(keys))
        return False


class EpochSource(Protocol):
    async def current(self, user_id: str) -> int | None:
        """The user's access epoch, or None when it cannot be known."""
        ...


@dataclass(frozen=True)
class CachedAccess:
    roles: Mapping[str, int]
    space_ids: tuple[str, ...]  # the keys of `roles`, sorted
    epoch: int
    fetched_at: float


def roles_in_knowledge(channel: grpc.aio.Channel) -> FetchRoles:
    """The fetch of an access cache: the knowledge service's internal ListAccessibleSpaces,
    over a service channel (one that shows this service's identity)."""
    stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)

    async def fetch(user_id: str) -> dict[str, int]:
        request = knowledge_pb2.ListAccessibleSpacesRequest(user_id=user_id, minimum_role=knowledge_pb2.ROLE_VIEWER)
        return {space.space_id: space.role for space in (await stub.ListAccessibleSpaces(request)).spaces}

    return fetch


class AccessCache:
    def __init__(
        self,
        fetch: FetchRoles,
        epochs: EpochSource,
        ttl_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fetch = fetch
        self.epochs = epochs
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: dict[str, CachedAccess] = {}
        self.hits = 0
        self.misses = 0

    async def readable(self, user_id: str) -> tuple[str, ...]:
        """The spaces the user can read, sorted."""
        return (await self._entry(user_id)).space_ids

    async def role(self, user_id: str, space_id: str) -> int:
        """The user's role in the space (Role numbers), 0 when they are not a member."""
        return (await self._entry(user_id)).roles.get(space_id, 0)

    async def _entry(self, user_id: str) -> CachedAccess:
        epoch = await self.epochs.current(user_id)
        entry = self._entries.get(user_id)
        if entry is not None and entry.epoch == epoch and self.clock() - entry.fetched_at < self.ttl_s:
            self.hits += 1
            return entry
        self.misses += 1
        roles = dict(await self.fetch(user_id))
        fetched = CachedAccess(roles, tuple(sorted(roles)), epoch or 0, self.clock())
        if epoch is None:
            self._entries.pop(user_id, None)  # unverifiable: not kept
        else:
            self._entries[user_id] = fetched
        return fetched

    def forget(self, user_id: str) -> None:
        """A membership event about the user: drop the entry without waiting for a lookup."""
        self._entries.pop(user_id, None)
