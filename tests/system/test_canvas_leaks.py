"""No canvas route gives a non-member a node, a presence or a change of another space.

Alice is a viewer of space A only; both spaces' canvases hold nodes labelled with a marker of
their own. On every route (Envoy's three transports, and each canvas instance directly) she
reads A's canvas (the positive control: what the assertions search for does exist) and is
refused B's, with nothing of B in the refusal. In live sessions on A, on both instances, she
receives A's changes while the owner edits B and moves a cursor there, and nothing of B.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from clients.canvas import Collaborator, NodeChanged
from clients.transports import ALL_TRANSPORTS, NativeGrpc, Transport, transport_for
from fixtures.accounts import Account, sign_up
from fixtures.knowledge import VIEWER, add_member, create_space
from services.api.canvas.v1 import canvas_pb2
from simulations.endpoints import StackEndpoints

C = "canvas.v1.CanvasService"
INSTANCES = ("canvas", "canvas-2")


@dataclass
class World:
    owner: Account
    alice: Account
    space_a: str
    space_b: str
    marker_a: str
    marker_b: str


async def place(transport: Transport, account: Account, space_id: str, label: str) -> canvas_pb2.Node:
    request = canvas_pb2.PlaceNodeRequest(space_id=space_id, label=label, x=1, y=1)
    reply = (await transport.unary(f"{C}/PlaceNode", request, token=account.access_token)).unwrap()
    assert isinstance(reply, canvas_pb2.PlaceNodeResponse)
    return reply.node


@pytest.fixture(scope="module")
async def setup(stack: StackEndpoints) -> AsyncIterator[Transport]:
    transport = transport_for("grpc", stack.envoy_http, stack.envoy_grpc)
    yield transport
    await transport.aclose()


@pytest.fixture(scope="module")
async def world(setup: Transport) -> World:
    owner, alice = await sign_up(setup, "owner"), await sign_up(setup, "alice")
    space_a = (await create_space(setup, owner, "A")).space_id
    space_b = (await create_space(setup, owner, "B")).space_id
    await add_member(setup, owner, space_a, alice.user_id, VIEWER)
    marker_a, marker_b = f"harbour{uuid.uuid4().hex[:8]}", f"summit{uuid.uuid4().hex[:8]}"
    await place(setup, owner, space_a, f"{marker_a} plan")
    await place(setup, owner, space_b, f"{marker_b} plan")
    return World(owner, alice, space_a, space_b, marker_a, marker_b)


@pytest.fixture(scope="module", params=[*ALL_TRANSPORTS, *INSTANCES])
async def route(request: pytest.FixtureRequest, stack: StackEndpoints) -> AsyncIterator[Transport]:
    if request.param in INSTANCES:
        transport: Transport = NativeGrpc(stack.of(request.param)["grpc"])
    else:
        transport = transport_for(request.param, stack.envoy_http, stack.envoy_grpc)
    yield transport
    await transport.aclose()


async def test_reads_of_another_space_are_refused_and_reveal_nothing(world: World, route: Transport) -> None:
    mine = await route.unary(
        f"{C}/GetCanvas", canvas_pb2.GetCanvasRequest(space_id=world.space_a), token=world.alice.access_token
    )
    canvas = mine.unwrap()
    assert isinstance(canvas, canvas_pb2.GetCanvasResponse)
    assert any(world.marker_a in node.label for node in canvas.nodes)
    for method, request in (
        ("GetCanvas", canvas_pb2.GetCanvasRequest(space_id=world.space_b)),
        ("ListPresence", canvas_pb2.ListPresenceRequest(space_id=world.space_b)),
    ):
        refused = await route.unary(f"{C}/{method}", request, token=world.alice.access_token)
        assert refused.code == grpc.StatusCode.PERMISSION_DENIED, (method, refused.code)
        assert world.marker_b not in (refused.details or "")


async def test_live_sessions_carry_nothing_of_another_space(stack: StackEndpoints, world: World) -> None:
    channels = {instance: grpc.aio.insecure_channel(stack.of(instance)["grpc"]) for instance in INSTANCES}
    try:
        watching = [
            await Collaborator.join(channel, world.alice.access_token, world.space_a) for channel in channels.values()
        ]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await Collaborator.join(channels["canvas"], world.alice.access_token, world.space_b)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        editors = [
            await Collaborator.join(channel, world.owner.access_token, world.space_b) for channel in channels.values()
        ]
        for editor in editors:
            changed = await editor.outcome(await editor.place(f"{world.marker_b} secret", 5, 5))
            assert isinstance(changed, NodeChanged)
            await editor.cursor(9, 9)
        in_a = await Collaborator.join(channels["canvas-2"], world.owner.access_token, world.space_a)
        control = await in_a.outcome(await in_a.place(f"{world.marker_a} shared", 7, 7))
        assert isinstance(control, NodeChanged)
        for session in watching:
            await session.until_version(control.canvas_version)
        await asyncio.sleep(0.5)  # anything of B still in flight would have arrived by now
        for session in watching:
            received = [str(message) for message in session.messages]
            assert any(world.marker_a in text for text in received), "the control change did not arrive"
            assert not any(world.marker_b in text or world.space_b in text for text in received), received
            cursors = {(p.presence.cursor_x, p.presence.cursor_y) for p in session.presence}
            assert (9, 9) not in cursors, "a cursor moved in space B reached a session on A"
        for session in [*watching, *editors, in_a]:
            await session.close()
    finally:
        for channel in channels.values():
            await channel.close()
