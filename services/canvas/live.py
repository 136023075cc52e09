"""What instances share live, in Redis: the space's channel and who is present.

Channel `canvas:live:<space_id>`: every accepted change and presence change of the space, as a
CollaborateResponse, published by the instance that made it and received by every instance
with a session on the space. Pub/sub may drop a message (a subscriber reconnecting, an
instance dying between commit and publish); sessions notice the gap by canvas version and
read the missing changes from the store, so a lost message delays a change, never loses it.
Each frame carries the trace context it was published in, so the delivery on another instance
joins the trace of the change.

Presence: `canvas:sessions:<space_id>` is a sorted set of "<user_id>/<session_id>" scored by
the time the session last sent something, and `canvas:presence:<space_id>` a hash of each
present user's display name, cursor and last-seen time. A user is present while one of their
sessions was heard from within PRESENCE_TIMEOUT_S; sessions of an instance that died age out
on their own, and the sweep that removes them (`sweep`) announces who left exactly once
(ZREM tells one caller that it removed the entry).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis
from opentelemetry import propagate

from services.api.canvas.v1 import canvas_pb2
from services.canvas.domain import PRESENCE_TIMEOUT_S
from services.kit.protos import timestamp

Response = canvas_pb2.CollaborateResponse
# Keys outlive the presence they hold; a space nobody visits again leaves nothing behind.
KEY_TTL_S = int(PRESENCE_TIMEOUT_S * 4)


def channel(space_id: str) -> str:
    return f"canvas:live:{space_id}"


def space_of_channel(name: str) -> str:
    return name.removeprefix("canvas:live:")


def sessions_key(space_id: str) -> str:
    return f"canvas:sessions:{space_id}"


def presence_key(space_id: str) -> str:
    return f"canvas:presence:{space_id}"


# ------------------------------------------------------------------ frames


def frame(message: Response, origin: str = "") -> bytes:
    """A message for the channel: the current trace context and the session it comes from
    (if it must not be echoed to it), each on a line, then the message."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return f"{carrier.get('traceparent', '')}\n{origin}\n".encode() + message.SerializeToString()


def unframe(data: bytes) -> tuple[dict[str, str], str, Response]:
    """(trace carrier, origin session, message) of a channel message."""
    traceparent, _, rest = data.partition(b"\n")
    origin, _, body = rest.partition(b"\n")
    carrier = {"traceparent": traceparent.decode()} if traceparent else {}
    return carrier, origin.decode(), Response.FromString(body)


# ------------------------------------------------------------------ presence


@dataclass(frozen=True)
class Seen:
    """One user's presence as stored."""

    user_id: str
    display_name: str
    cursor_x: float
    cursor_y: float
    last_seen_at: float  # epoch seconds

    def message(self) -> canvas_pb2.Presence:
        return canvas_pb2.Presence(
            user_id=self.user_id,
            display_name=self.display_name,
            cursor_x=self.cursor_x,
            cursor_y=self.cursor_y,
            last_seen_at=timestamp(datetime.fromtimestamp(self.last_seen_at, UTC)),
        )

    def encoded(self) -> str:
        return json.dumps([self.display_name, self.cursor_x, self.cursor_y, self.last_seen_at])

    @classmethod
    def decoded(cls, user_id: str, raw: bytes | str) -> Seen:
        name, x, y, seen = json.loads(raw)
        return cls(user_id, name, float(x), float(y), float(seen))


def member(user_id: str, session_id: str) -> str:
    return f"{user_id}/{session_id}"


def user_of(member_name: bytes | str) -> str:
    text = member_name.decode() if isinstance(member_name, bytes) else member_name
    return text.partition("/")[0]


class Presence:
    """Presence of users on canvases, in Redis, shared by every instance."""

    def __init__(self, redis: aioredis.Redis, timeout_s: float = PRESENCE_TIMEOUT_S) -> None:
        self.redis = redis
        self.timeout_s = timeout_s

    async def touch(self, space_id: str, session_id: str, seen: Seen) -> bool:
        """The session was heard from (with the user's latest cursor); True when it was not
        present before (new, or swept after a silence)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(sessions_key(space_id), {member(seen.user_id, session_id): seen.last_seen_at})
            pipe.hset(presence_key(space_id), seen.user_id, seen.encoded())
            pipe.expire(sessions_key(space_id), KEY_TTL_S)
            pipe.expire(presence_key(space_id), KEY_TTL_S)
            added, *_ = await pipe.execute()
        return bool(added)

    async def present(self, space_id: str) -> list[Seen]:
        """Users with a session heard from within the timeout, ordered by user_id."""
        users = sorted({user_of(name) for name in await self._live(space_id)})
        if not users:
            return []
        stored = await self.redis.hmget(presence_key(space_id), users)
        return [Seen.decoded(user, raw) for user, raw in zip(users, stored, strict=True) if raw is not None]

    async def leave(self, space_id: str, user_id: str, session_id: str) -> bool:
        """The session ended; True when it was the user's last one here (they left)."""
        removed = await self.redis.zrem(sessions_key(space_id), member(user_id, session_id))
        return bool(removed) and await self._forget_if_gone(space_id, user_id) is not None

    async def sweep(self, space_id: str) -> list[Seen]:
        """Remove sessions not heard from within the timeout; the users who thereby left, as
        last seen. Of instances sweeping at once, one removes each session (and reports it)."""
        stale = await self._members(space_id, "-inf", f"({time.time() - self.timeout_s}")
        left: list[Seen] = []
        for name in stale:
            if await self.redis.zrem(sessions_key(space_id), name):
                gone = await self._forget_if_gone(space_id, user_of(name))
                if gone is not None:
                    left.append(gone)
        return left

    async def _live(self, space_id: str) -> list[bytes]:
        return await self._members(space_id, time.time() - self.timeout_s, "+inf")

    async def _members(self, space_id: str, low: float | str, high: float | str) -> list[bytes]:
        found: list[bytes] = await self.redis.zrangebyscore(sessions_key(space_id), low, high)  # type: ignore[assignment]
        return found

    async def _forget_if_gone(self, space_id: str, user_id: str) -> Seen | None:
        """Drop the user's presence unless another of their sessions is live; what it was."""
        if any(user_of(name) == user_id for name in await self._live(space_id)):
            return None
        raw = await self.redis.hget(presence_key(space_id), user_id)
        await self.redis.hdel(presence_key(space_id), user_id)
        return Seen.decoded(user_id, raw) if raw is not None else Seen(user_id, user_id, 0.0, 0.0, time.time())
