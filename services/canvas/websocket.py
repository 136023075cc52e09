"""The canvas service's WebSocket endpoint: Collaborate for browsers.

`ws://<host>:<ws_port>/v1/canvas/ws` (through Envoy: the same path on the edge listener),
served by the kit's bridge (services.kit.websocket: authentication by header, by the offered
subprotocol `access_token.<token>` beside `kp.canvas.v1`, or by the `access_token` query
parameter; keepalive; frame limits; a bounded send queue, closing a client that falls behind
with 1008).

Every frame is one message of canvas.proto in its proto3 JSON form: the client sends
CollaborateRequest messages (`{"join": {"spaceId": "..."}}`, `{"clientRequestId": "m1",
"moveNode": {...}}`, ...) and receives CollaborateResponse messages, with exactly the
semantics of the gRPC Collaborate stream (the same session code serves both). A frame that is
not a valid CollaborateRequest is answered with `rejected` (INVALID_ARGUMENT) once the session
has joined; before that, it ends the session like a bad `join`. Where the gRPC stream ends
with a status, the socket closes with 4000 + the HTTP status of that code (4400 bad join,
4401 token expired, 4403 not or no longer a member, 4429 fell behind) and the reason
"<CODE>: <message>".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

from services.api.canvas.v1 import canvas_pb2
from services.canvas.collaboration import Session, rejected
from services.kit.auth import Principal, set_principal
from services.kit.errors import InvalidArgument, status_for
from services.kit.websocket import Socket, close_code_for, parse_proto_frame, proto_frame

WS_PATH = "/v1/canvas/ws"
CANVAS_SUBPROTOCOL = "kp.canvas.v1"
CLOSE_NORMAL = 1000


class FrameCache:
    """The JSON text of recent messages. The hub hands one message object to every session of
    its space on this instance, so its text is made once, not once per socket (the JSON
    mapping costs more than sending it). Entries hold their message, so an id is not reused
    while it is cached."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._texts: OrderedDict[int, tuple[canvas_pb2.CollaborateResponse, str]] = OrderedDict()

    def text(self, message: canvas_pb2.CollaborateResponse) -> str:
        cached = self._texts.get(id(message))
        if cached is not None and cached[0] is message:
            return cached[1]
        text = proto_frame(message)
        self._texts[id(message)] = (message, text)
        if len(self._texts) > self.size:
            self._texts.popitem(last=False)
        return text


class CanvasProtocol:
    """The canvas protocol, as the kit's WebSocket bridge serves it."""

    path = WS_PATH
    subprotocol = CANVAS_SUBPROTOCOL

    def __init__(self, new_session: Callable[[Principal], Session]) -> None:
        self.new_session = new_session
        self.frames = FrameCache()

    async def session(self, socket: Socket, principal: Principal) -> None:
        set_principal(principal)
        session = self.new_session(principal)
        sender = asyncio.create_task(send_all(session, socket, self.frames))
        try:
            await session.run(requests(socket, session))
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            await session.close()


async def requests(socket: Socket, session: Session) -> AsyncIterator[canvas_pb2.CollaborateRequest]:
    """The client's frames as requests; a malformed one is rejected once the session joined."""
    async for raw in socket.frames():
        try:
            yield parse_proto_frame(raw, canvas_pb2.CollaborateRequest)
        except InvalidArgument as error:
            if not session.space_id:
                raise
            session.emit(rejected("", error))


async def send_all(session: Session, socket: Socket, frames: FrameCache) -> None:
    """Send the session's messages; close the socket the way the session ended."""
    async for response in session.responses():
        socket.send(frames.text(response))
    await socket.drain()
    failure = session.failure()
    if failure is None:
        await socket.close(CLOSE_NORMAL, "the session ended")
        return
    reply = status_for(failure)
    await socket.close(close_code_for(reply.code), f"{reply.code.name}: {reply.message}")
