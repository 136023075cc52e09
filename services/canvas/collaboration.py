"""Collaborate sessions, and the hub that feeds them on one instance.

A `Session` is one client's live edit of one canvas, whatever carries it (a gRPC stream or a
WebSocket): the transport hands it each client message (`handle`) and sends what it queues
(`responses`), then ends the stream with the session's outcome (`ended`).

Delivery: after the snapshot, every accepted change of the space once, in canvas-version
order. Changes reach an instance through the space's Redis channel (services.canvas.live),
whichever instance accepted them; each session keeps the canvas version it has delivered up
to (`Sequencer`): it drops what it has already sent, and when a change arrives ahead of the
next one it reads the missing ones from the store first. The hub's tick also compares each
space's canvas version with what its sessions delivered, so a change whose broadcast was
lost (Redis restarting, an instance dying between commit and publish) arrives within a tick.

A session never slows another: the hub hands messages over without waiting, and a session
with more than `max_queued` messages waiting for its client is ended (RESOURCE_EXHAUSTED: join
again for a fresh snapshot).

Each tick also ends sessions whose token expired (UNAUTHENTICATED) or whose user is no longer
a member of the space (PERMISSION_DENIED; the access cache's epochs make a removal visible at
the next tick), and sweeps presence: users not heard from within the timeout are announced as
gone by exactly one instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc
import redis.asyncio as aioredis
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from redis.exceptions import RedisError

from services.api.canvas.v1 import canvas_pb2
from services.canvas.domain import (
    Change,
    CursorThrottle,
    Role,
    Sequencer,
    StaleVersion,
    check_client_request_id,
    check_coordinate,
    require_role,
)
from services.canvas.live import Presence, Seen, channel, frame, space_of_channel, unframe
from services.canvas.repository import CanvasRepository
from services.canvas.service import CanvasService
from services.canvas.wire import node_changed, node_message
from services.kit.access import AccessCache
from services.kit.auth import Principal
from services.kit.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    status_for,
)
from services.kit.ids import parse_id
from services.kit.telemetry import untraced

log = logging.getLogger("services.canvas.collaboration")
_tracer = trace.get_tracer("services.canvas.collaboration")

Request = canvas_pb2.CollaborateRequest
Response = canvas_pb2.CollaborateResponse

MAX_QUEUED = 1000  # messages waiting for one client before its session is ended
TICK_S = 1.0
PRESENCE_TOUCH_S = 1.0  # a session's presence is refreshed in Redis at most this often


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


def fell_behind(waiting: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"this session fell behind: {waiting} messages were waiting for the client; join again for a fresh snapshot"
    )


def rejected(client_request_id: str, error: DomainError) -> Response:
    reply = status_for(error)
    current = node_message(error.current) if isinstance(error, StaleVersion) else None
    return Response(
        rejected=Response.Rejected(
            client_request_id=client_request_id, code=reply.code.name, message=reply.message[:500], current_node=current
        )
    )


def presence_changed(seen: Seen, left: bool = False) -> Response:
    return Response(presence_changed=Response.PresenceChanged(presence=seen.message(), left=left))


@dataclass
class _End:
    """The sentinel that ends `responses`."""

    error: BaseException | None


class Session:
    def __init__(
        self, hub: Hub, service: CanvasService, principal: Principal, leeway_s: int, max_queued: int = MAX_QUEUED
    ) -> None:
        self.hub = hub
        self.service = service
        self.principal = principal
        self.leeway_s = leeway_s
        self.max_queued = max_queued
        self.session_id = uuid.uuid4().hex
        self.space_id = ""
        self.sequencer: Sequencer | None = None  # set once the snapshot is queued
        self.ended: BaseException | None = None
        self.cursor = (0.0, 0.0)
        self.throttle = CursorThrottle()
        self.last_touch = float("-inf")
        self._outbound: asyncio.Queue[Response | _End] = asyncio.Queue()
        self._changes: asyncio.Queue[Response | int] = asyncio.Queue()  # node_changed, or a version to reach
        self._deliverer: asyncio.Task[None] | None = None
        self._cursor_flush: asyncio.TimerHandle | None = None
        self._touch_later: asyncio.TimerHandle | None = None

    @property
    def user_id(self) -> str:
        return self.principal.user_id

    @property
    def seen(self) -> Seen:
        return Seen(self.user_id, self.principal.name or self.user_id, *self.cursor, time.time())

    # -- the transport's side ----------------------------------------------------------

    async def run(self, requests: AsyncIterator[Request]) -> None:
        """Handle the client's messages until it stops sending or the session ends."""
        try:
            async for request in requests:
                if self.ended is not None:
                    return
                await self.handle(request)
            self.end(None)
        except DomainError as error:
            self.end(error)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("collaboration session failed")
            self.end(error)

    async def responses(self) -> AsyncIterator[Response]:
        """What to send to the client, until the session ends."""
        while True:
            item = await self._outbound.get()
            if isinstance(item, _End):
                return
            yield item

    async def close(self) -> None:
        """The transport is done with the session (the client went away, or it ended)."""
        if self.ended is None:
            self.ended = asyncio.CancelledError()
        if self._deliverer is not None:
            self._deliverer.cancel()
        for timer in (self._cursor_flush, self._touch_later):
            if timer is not None:
                timer.cancel()
        if self.space_id:
            self.hub.detach(self)
            with (
                _tracer.start_as_current_span("canvas leave", attributes={"canvas.space_id": self.space_id}),
                contextlib.suppress(RedisError, OSError),
            ):
                if await self.service.presence.leave(self.space_id, self.user_id, self.session_id):
                    await self.hub.announce(self.space_id, presence_changed(self.seen, left=True))

    def end(self, error: BaseException | None) -> None:
        """End the session: with a status (`error`) or normally (None). Queued messages are
        still sent first, except after falling behind or losing access."""
        if self.ended is not None:
            return
        self.ended = error or asyncio.CancelledError()
        if self.space_id:
            self.hub.detach(self)  # nothing more is handed to it
        if isinstance(error, ResourceExhausted | PermissionDenied | Unauthenticated):
            # The stream ends with the status as soon as the client takes what its transport
            # already holds (a client that does not read at all cannot be told anything).
            self._drop_queued()
        self._outbound.put_nowait(_End(error))

    def failure(self) -> BaseException | None:
        """The status the stream ends with (None: OK)."""
        return None if isinstance(self.ended, asyncio.CancelledError) else self.ended

    # -- client messages ---------------------------------------------------------------

    async def handle(self, request: Request) -> None:
        action = request.WhichOneof("action")
        if not self.space_id:
            if action != "join":
                raise FailedPrecondition("the first message of a Collaborate session must be `join`")
            # Its own span, as every message has: over WebSocket there is no stream span above.
            with _tracer.start_as_current_span(
                "canvas join", attributes={"canvas.space_id": request.join.space_id}, set_status_on_exception=False
            ) as span:
                try:
                    await self.join(request.join.space_id)
                except DomainError:
                    raise  # a refusal, not a failure of the service
                except Exception as error:
                    span.set_status(Status(StatusCode.ERROR, repr(error)))
                    raise
            return
        with _tracer.start_as_current_span(
            f"canvas {action or 'empty message'}", attributes={"canvas.space_id": self.space_id}
        ):
            try:
                request_id = check_client_request_id(request.client_request_id)
                try:
                    await self._act(action, request, request_id)
                except DomainError as error:
                    self.emit(rejected(request_id, error))
            except InvalidArgument as error:
                self.emit(rejected("", error))
            await self._touch()  # any message keeps the user present (after a cursor move: there)

    async def _act(self, action: str | None, request: Request, request_id: str) -> None:
        caller, space = self.user_id, self.space_id
        if action == "join":
            raise FailedPrecondition(f"this session already joined space {space}; open another session for another")
        if action == "place_node":
            place = request.place_node
            await self.service.place_node(
                caller, space, place.document_id, place.label, place.x, place.y, place.width, place.height, request_id
            )
        elif action == "move_node":
            move = request.move_node
            await self.service.move_node(caller, space, move.node_id, move.x, move.y, move.expected_version, request_id)
        elif action == "remove_node":
            remove = request.remove_node
            await self.service.remove_node(caller, space, remove.node_id, remove.expected_version, request_id)
        elif action == "cursor_moved":
            self.cursor = (check_coordinate(request.cursor_moved.x, "x"), check_coordinate(request.cursor_moved.y, "y"))
            self._cursor_moved()
        elif action is None:
            raise InvalidArgument(
                "action",
                "exactly one of join, place_node, move_node, remove_node, cursor_moved or heartbeat must be set",
            )

    async def join(self, raw_space_id: str) -> None:
        space_id = parse_id(raw_space_id, "join.space_id")
        await self.service.require(self.user_id, space_id, Role.VIEWER, "joining the canvas")
        self.space_id = space_id
        try:
            await self._open(space_id)
        except (RedisError, OSError) as error:
            raise Unavailable(
                "live collaboration needs Redis, which is not answering; join again in a moment"
            ) from error

    async def _open(self, space_id: str) -> None:
        await self.hub.attach(self)  # subscribed before the snapshot: no change falls between
        canvas = await self.service.snapshot(space_id)
        await self._touch(force=True)
        present = await self.service.presence.present(space_id)
        snapshot = Response.Snapshot(
            space_id=space_id,
            nodes=[node_message(node) for node in canvas.ordered_nodes()],
            presence=[seen.message() for seen in present],
            canvas_version=canvas.canvas_version,
        )
        self.emit(Response(snapshot=snapshot))
        self.sequencer = Sequencer(canvas.canvas_version)
        self._deliverer = asyncio.create_task(self._deliver_forever(), name=f"canvas session {self.session_id}")
        await self.hub.announce(space_id, presence_changed(self.seen), origin=self.session_id)

    async def _touch(self, force: bool = False) -> None:
        """Refresh presence (at most once a second; a refresh skipped for that happens at the
        end of the second, so the stored cursor is never more than a second old); announce
        the user when they had gone."""
        now = time.monotonic()
        wait = self.last_touch + PRESENCE_TOUCH_S - now
        if not force and wait > 0:
            if self._touch_later is None:
                self._touch_later = asyncio.get_running_loop().call_later(wait, self._touch_soon)
            return
        self.last_touch = now
        try:
            arrived = await self.service.presence.touch(self.space_id, self.session_id, self.seen)
            if arrived and not force:
                await self.hub.announce(self.space_id, presence_changed(self.seen), origin=self.session_id)
        except (RedisError, OSError):
            # Presence waits for Redis; edits and their delivery (read from the store) go on.
            if force:
                raise

    def _touch_soon(self) -> None:
        self._touch_later = None
        if self.ended is None:
            self.hub.soon(self._touch())

    def _cursor_moved(self) -> None:
        """Broadcast the cursor now, or once the throttle allows (the latest position then)."""
        if self._cursor_flush is not None:
            return
        wait = self.throttle.wait_s(time.monotonic())
        if wait == 0:
            self._send_cursor()
        else:
            self._cursor_flush = asyncio.get_running_loop().call_later(wait, self._send_cursor)

    def _send_cursor(self) -> None:
        self._cursor_flush = None
        if self.ended is not None:
            return
        self.throttle.sent(time.monotonic())
        self.hub.announce_soon(self.space_id, presence_changed(self.seen), origin=self.session_id)

    # -- delivery ----------------------------------------------------------------------

    def emit(self, message: Response) -> None:
        if self.ended is not None:
            return
        if self._outbound.qsize() >= self.max_queued:
            self.end(fell_behind(self._outbound.qsize()))
            return
        self._outbound.put_nowait(message)

    def offer_change(self, message: Response) -> None:
        """A node_changed from the hub (any order, maybe twice)."""
        if self.ended is None:
            self._changes.put_nowait(message)
            if self._changes.qsize() > self.max_queued:
                self.end(fell_behind(self._changes.qsize()))

    def offer_version(self, canvas_version: int) -> None:
        """The space is at this canvas version: deliver whatever is missing up to it."""
        if self.sequencer is not None and self.sequencer.delivered < canvas_version and self._changes.empty():
            self._changes.put_nowait(canvas_version)

    async def _deliver_forever(self) -> None:
        assert self.sequencer is not None
        sequencer = self.sequencer
        while True:
            item = await self._changes.get()
            target = item if isinstance(item, int) else item.node_changed.canvas_version
            verdict = sequencer.classify(target)
            if verdict == "old":
                continue
            if verdict == "gap" or isinstance(item, int):
                await self._fill(sequencer, target if isinstance(item, int) else target - 1)
            if isinstance(item, Response) and sequencer.classify(target) == "next":
                self.emit(item)
                sequencer.delivered = target

    async def _fill(self, sequencer: Sequencer, through: int) -> None:
        """Deliver the changes after what was delivered, through `through`, from the store."""
        for change in await self.service.repository.changes(self.space_id, sequencer.delivered, through):
            if change.canvas_version == sequencer.delivered + 1:
                self.emit(node_changed(change))
                sequencer.delivered = change.canvas_version

    def _drop_queued(self) -> None:
        while not self._outbound.empty():
            self._outbound.get_nowait()

    # -- the hub's checks ----------------------------------------------------------------

    def check_access(self, role: int) -> None:
        """End the session when the token expired or the user's role in the space (asked
        once per user by the hub's tick) no longer lets them in."""
        if time.time() >= self.principal.expires_at + self.leeway_s:
            self.end(Unauthenticated("the access token expired; reconnect with a fresh token and join again"))
            return
        try:
            require_role(role, Role.VIEWER, "collaborating on the canvas", self.space_id)
        except PermissionDenied as error:
            self.end(PermissionDenied(f"you lost access to space {self.space_id}: {error.message}"))


class Hub:
    """The sessions of one instance, by space, and the space channels they listen to."""

    def __init__(
        self,
        redis: aioredis.Redis,
        repository: CanvasRepository,
        presence: Presence,
        access: AccessCache,
        instance: str = "",
    ) -> None:
        self.redis = redis
        self.instance = instance  # named on delivery spans: which instance handed a change on
        self.repository = repository
        self.presence = presence
        self.access = access
        self.spaces: dict[str, set[Session]] = {}
        self.pubsub = redis.pubsub(ignore_subscribe_messages=True)
        self._subscribed = asyncio.Event()
        self._pending: set[asyncio.Task[None]] = set()

    async def attach(self, session: Session) -> None:
        sessions = self.spaces.setdefault(session.space_id, set())
        sessions.add(session)
        if len(sessions) == 1:
            await self.pubsub.subscribe(channel(session.space_id))
            self._subscribed.set()

    def detach(self, session: Session) -> None:
        sessions = self.spaces.get(session.space_id)
        if sessions is None:
            return
        sessions.discard(session)
        if not sessions:
            del self.spaces[session.space_id]
            self.soon(self._unsubscribe(session.space_id))

    async def _unsubscribe(self, space_id: str) -> None:
        if space_id not in self.spaces:
            with contextlib.suppress(RedisError, OSError):
                await self.pubsub.unsubscribe(channel(space_id))

    # -- out ---------------------------------------------------------------------------

    async def publish_change(self, change: Change) -> None:
        """An accepted change, to every session of its space on every instance."""
        await self.redis.publish(channel(change.node.space_id), frame(node_changed(change)))

    async def announce(self, space_id: str, message: Response, origin: str = "") -> None:
        """A presence change to every session of the space but `origin`'s."""
        await self.redis.publish(channel(space_id), frame(message, origin))

    def announce_soon(self, space_id: str, message: Response, origin: str = "") -> None:
        self.soon(self.announce(space_id, message, origin))

    def soon(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # -- in ----------------------------------------------------------------------------

    async def listen(self) -> None:
        """Hand every message of the subscribed channels to the space's sessions."""
        while True:
            if not self.pubsub.subscribed:
                self._subscribed.clear()
                await self._subscribed.wait()
            try:
                message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except (RedisError, OSError):
                log.warning("the canvas channels lost Redis; listening again in 0.5 s")
                await asyncio.sleep(0.5)
                continue
            if message is None or message.get("type") != "message":
                continue
            self.dispatch(space_of_channel(_text(message["channel"])), message["data"])

    def dispatch(self, space_id: str, data: bytes) -> None:
        carrier, origin, response = unframe(data)
        sessions = self.spaces.get(space_id)
        if not sessions:
            return
        parent = propagate.extract(carrier)
        with _tracer.start_as_current_span(
            f"canvas deliver {response.WhichOneof('event')}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "canvas.space_id": space_id,
                "canvas.sessions": len(sessions),
                "canvas.instance": self.instance,
            },
        ):
            for session in list(sessions):
                if response.HasField("node_changed"):
                    session.offer_change(response)
                elif session.session_id != origin and session.sequencer is not None:
                    session.emit(response)  # presence, once the session has its snapshot

    async def tick_forever(self, interval_s: float = TICK_S) -> None:
        while True:
            await asyncio.sleep(interval_s)
            with untraced():
                for space_id in list(self.spaces):
                    try:
                        await self.tick(space_id)
                    except (RedisError, OSError) as error:
                        log.warning("canvas tick of space %s: Redis: %s", space_id, error)
                    except Exception:
                        log.exception("canvas tick of space %s failed", space_id)

    async def tick(self, space_id: str) -> None:
        sessions = list(self.spaces.get(space_id, ()))
        version, _ = await self.repository.counter(space_id)
        roles = {user_id: await self.access.role(user_id, space_id) for user_id in {s.user_id for s in sessions}}
        for session in sessions:
            session.offer_version(version)
            session.check_access(roles[session.user_id])
        for gone in await self.presence.sweep(space_id):
            await self.announce(space_id, presence_changed(gone, left=True))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
