"""A move made in one session and delivered to sessions on both canvas instances is one
connected trace: the client → Envoy → canvas (the session's stream, the move) → DynamoDB's
transaction and Redis's publish → the delivery on each instance, the other one included."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from clients.canvas import Collaborator, NodeChanged
from clients.transports import Transport, transport_for
from fixtures.accounts import sign_up
from fixtures.knowledge import create_space
from observability.testing import TraceCapture, assert_connected, assert_no_errors, assert_path
from observability.traces import span
from services.api.canvas.v1 import canvas_pb2
from simulations.endpoints import StackEndpoints


@pytest.fixture
async def transport(stack: StackEndpoints) -> AsyncIterator[Transport]:
    chosen = transport_for("grpc", stack.envoy_http, stack.envoy_grpc)
    yield chosen
    await chosen.aclose()


async def test_a_move_delivered_on_the_other_instance_is_one_connected_trace(
    stack: StackEndpoints, traces: TraceCapture, transport: Transport
) -> None:
    account = await sign_up(transport)
    space_id = (await create_space(transport, account, "Traced canvas")).space_id
    placed = await transport.unary(
        "canvas.v1.CanvasService/PlaceNode",
        canvas_pb2.PlaceNodeRequest(space_id=space_id, label="Follow me", x=1, y=2),
        token=account.access_token,
    )
    node = placed.unwrap()
    assert isinstance(node, canvas_pb2.PlaceNodeResponse)
    channels = [
        grpc.aio.insecure_channel(address)
        for address in (stack.envoy_grpc, *(stack.of(i)["grpc"] for i in ("canvas", "canvas-2")))
    ]
    edge_channel, *instance_channels = channels
    watchers = [await Collaborator.join(channel, account.access_token, space_id) for channel in instance_channels]
    try:
        async with traces.action("move a node") as action:
            mover = await Collaborator.join(edge_channel, account.access_token, space_id, metadata=action.metadata())
            outcome = await mover.outcome(await mover.move(node.node.node_id, 30, 40, expected_version=1))
            assert isinstance(outcome, NodeChanged), outcome
            for watcher in watchers:
                await watcher.until_version(outcome.canvas_version)
            await mover.close()
    finally:
        for watcher in watchers:
            await watcher.close()
        for channel in channels:
            await channel.close()

    edge = span("envoy", kind="Server", name="^canvas ")
    stream = span("canvas", kind="Server", name="Collaborate")
    move = span("canvas", name="^canvas move_node$")
    write = span("canvas", name="dynamodb.TransactWriteItems")
    publish = span("canvas", name="PUBLISH")
    delivered_on = {
        instance: span("canvas", name="canvas deliver node_changed", **{"canvas.instance": instance})
        for instance in ("canvas", "canvas-2")
    }
    tree = await action.trace(edge, stream, move, write, publish, *delivered_on.values(), timeout_s=30)
    assert_path(tree, edge, stream, move, write)
    assert_path(tree, edge, stream, move, publish)
    for delivery in delivered_on.values():
        assert_path(tree, edge, stream, move, delivery)
    assert_connected(tree)
    assert_no_errors(tree)
