"""A Collaborate session as a client keeps it: the canvas mirrored from the snapshot and each
node_changed, the answer to each of its own actions, and what it received, in order.

Used by the convergence and fault tests and by the canvas benchmark; over native gRPC (to
Envoy or to one instance directly).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from services.api.canvas.v1 import canvas_pb2, canvas_pb2_grpc

Request = canvas_pb2.CollaborateRequest
Response = canvas_pb2.CollaborateResponse
NodeChanged = Response.NodeChanged
Rejected = Response.Rejected
Outcome = NodeChanged | Rejected


@dataclass
class Arrival:
    """A node_changed as it arrived: its canvas version and when (time.time())."""

    canvas_version: int
    received_at: float
    accepted_at: float  # the node's updated_at: when the server accepted the change


@dataclass
class Collaborator:
    call: grpc.aio.StreamStreamCall[Request, Response]
    space_id: str
    snapshot_version: int = 0
    canvas_version: int = 0
    nodes: dict[str, canvas_pb2.Node] = field(default_factory=dict)
    arrivals: list[Arrival] = field(default_factory=list)
    presence: list[Response.PresenceChanged] = field(default_factory=list)
    messages: list[Response] = field(default_factory=list)  # everything after the snapshot
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    status: grpc.StatusCode | None = None
    details: str = ""
    _waiting: dict[str, asyncio.Future[Outcome]] = field(default_factory=dict)
    _reader: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def join(
        cls, channel: grpc.aio.Channel, token: str, space_id: str, metadata: Sequence[tuple[str, str]] = ()
    ) -> Collaborator:
        """Open a session (with `metadata` beside the token, e.g. trace context), join the
        space and wait for the snapshot."""
        stub = canvas_pb2_grpc.CanvasServiceStub(channel)
        call: grpc.aio.StreamStreamCall[Request, Response] = stub.Collaborate(
            metadata=[("authorization", f"Bearer {token}"), *metadata]
        )
        await call.write(Request(join=Request.Join(space_id=space_id)))
        first = await call.read()
        if not isinstance(first, Response) or not first.HasField("snapshot"):
            raise AssertionError(f"expected a snapshot, got {first!r}: {await call.code()} {await call.details()}")
        session = cls(call, space_id)
        session.snapshot_version = session.canvas_version = first.snapshot.canvas_version
        session.nodes = {node.node_id: node for node in first.snapshot.nodes}
        session._reader = asyncio.create_task(session._read())
        return session

    # -- actions ---------------------------------------------------------------------------

    async def place(self, label: str, x: float, y: float) -> str:
        return await self._send(Request(place_node=Request.PlaceNode(label=label, x=x, y=y)))

    async def move(self, node_id: str, x: float, y: float, expected_version: int) -> str:
        return await self._send(
            Request(move_node=Request.MoveNode(node_id=node_id, x=x, y=y, expected_version=expected_version))
        )

    async def remove(self, node_id: str, expected_version: int) -> str:
        return await self._send(
            Request(remove_node=Request.RemoveNode(node_id=node_id, expected_version=expected_version))
        )

    async def cursor(self, x: float, y: float) -> None:
        await self.call.write(Request(cursor_moved=Request.CursorMoved(x=x, y=y)))

    async def _send(self, request: Request) -> str:
        request_id = uuid.uuid4().hex[:16]
        request.client_request_id = request_id
        self._waiting[request_id] = asyncio.get_running_loop().create_future()
        await self.call.write(request)
        return request_id

    async def outcome(self, request_id: str, timeout_s: float = 10.0) -> Outcome:
        """The node_changed or rejected that answered one of this session's actions."""
        return await asyncio.wait_for(asyncio.shield(self._waiting[request_id]), timeout_s)

    async def until_version(self, canvas_version: int, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.canvas_version < canvas_version:
            if self.status is not None:
                raise AssertionError(f"the session ended ({self.status.name} {self.details}) at {self.canvas_version}")
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"session at canvas version {self.canvas_version}, not {canvas_version}")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue

    async def close(self) -> grpc.StatusCode | None:
        """End the session from the client side; the status it ended with."""
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self.call.done_writing()
        if self._reader is not None:
            await self._reader
        return self.status

    # -- receiving ---------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while isinstance(message := await self.call.read(), Response):
                self._receive(message)
        except grpc.aio.AioRpcError:
            pass
        self.status = await self.call.code()
        self.details = await self.call.details() or ""
        self._changed.set()

    def _receive(self, message: Response) -> None:
        self.messages.append(message)
        event = message.WhichOneof("event")
        if event == "node_changed":
            changed = message.node_changed
            node = changed.node
            self.arrivals.append(Arrival(changed.canvas_version, time.time(), node.updated_at.ToNanoseconds() / 1e9))
            self.canvas_version = changed.canvas_version
            if changed.change_kind == canvas_pb2.CHANGE_KIND_REMOVED:
                self.nodes.pop(node.node_id, None)
            else:
                self.nodes[node.node_id] = node
            self._answer(changed.client_request_id, changed)
            self._changed.set()
        elif event == "rejected":
            self._answer(message.rejected.client_request_id, message.rejected)
        elif event == "presence_changed":
            self.presence.append(message.presence_changed)

    def _answer(self, request_id: str, outcome: Outcome) -> None:
        waiting = self._waiting.get(request_id)
        if waiting is not None and not waiting.done():
            self.outcomes[request_id] = outcome
            waiting.set_result(outcome)
