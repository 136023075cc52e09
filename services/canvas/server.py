"""The gRPC adapter of the canvas service: proto in, use case, proto out; and Collaborate's
stream around a session (services.canvas.collaboration)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from services.api.canvas.v1 import canvas_pb2, canvas_pb2_grpc
from services.canvas.collaboration import Session
from services.canvas.service import CanvasService
from services.canvas.wire import node_message
from services.kit.auth import Principal, current_principal

SERVICE_NAME = "canvas.v1.CanvasService"


def caller_id() -> str:
    return current_principal().user_id


class CanvasServer(canvas_pb2_grpc.CanvasServiceServicer):
    def __init__(self, service: CanvasService, new_session: Callable[[Principal], Session]) -> None:
        self.service = service
        self.new_session = new_session

    async def GetCanvas(self, request: canvas_pb2.GetCanvasRequest, context: Any) -> canvas_pb2.GetCanvasResponse:
        canvas = await self.service.get_canvas(caller_id(), request.space_id)
        return canvas_pb2.GetCanvasResponse(
            space_id=canvas.space_id,
            nodes=[node_message(node) for node in canvas.ordered_nodes()],
            canvas_version=canvas.canvas_version,
        )

    async def PlaceNode(self, request: canvas_pb2.PlaceNodeRequest, context: Any) -> canvas_pb2.PlaceNodeResponse:
        change = await self.service.place_node(
            caller_id(),
            request.space_id,
            request.document_id,
            request.label,
            request.x,
            request.y,
            request.width,
            request.height,
        )
        return canvas_pb2.PlaceNodeResponse(node=node_message(change.node), canvas_version=change.canvas_version)

    async def MoveNode(self, request: canvas_pb2.MoveNodeRequest, context: Any) -> canvas_pb2.MoveNodeResponse:
        change = await self.service.move_node(
            caller_id(), request.space_id, request.node_id, request.x, request.y, request.expected_version
        )
        return canvas_pb2.MoveNodeResponse(node=node_message(change.node), canvas_version=change.canvas_version)

    async def RemoveNode(self, request: canvas_pb2.RemoveNodeRequest, context: Any) -> canvas_pb2.RemoveNodeResponse:
        change = await self.service.remove_node(
            caller_id(), request.space_id, request.node_id, request.expected_version
        )
        return canvas_pb2.RemoveNodeResponse(canvas_version=change.canvas_version)

    async def ListPresence(
        self, request: canvas_pb2.ListPresenceRequest, context: Any
    ) -> canvas_pb2.ListPresenceResponse:
        present = await self.service.list_presence(caller_id(), request.space_id)
        return canvas_pb2.ListPresenceResponse(presence=[seen.message() for seen in present])

    async def Collaborate(
        self, request_iterator: AsyncIterator[canvas_pb2.CollaborateRequest], context: Any
    ) -> AsyncIterator[canvas_pb2.CollaborateResponse]:
        session = self.new_session(current_principal())
        reader = asyncio.create_task(session.run(request_iterator))
        try:
            async for response in session.responses():
                yield response
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await session.close()
        failure = session.failure()
        if failure is not None:
            raise failure
