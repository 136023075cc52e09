"""Contract of canvas.v1.CanvasService: the unary RPCs (GetCanvas, PlaceNode, MoveNode,
RemoveNode, ListPresence) through Envoy over gRPC, gRPC-Web and JSON, for success and for each
documented error, with the canvas.node.* events; Collaborate, the live session, over native
gRPC through Envoy (snapshot, changes broadcast to every session, presence, per-action
`rejected` answers and the statuses that end the stream); and the WebSocket bridge
(/v1/canvas/ws through Envoy), which carries the same messages in their proto3 JSON form.

The stack runs two canvas instances behind Envoy, so sessions of one test may well be served by
different instances: what they see of each other crosses Redis, as it does in production.
Anything asynchronous (a change reaching a session, presence, events) is waited for with a
deadline; no test sleeps in place of an assertion."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import aiohttp
import grpc
import pytest

from clients.transports import Reply, Transport
from contracts.expect import (
    assert_canonical_id,
    assert_recent,
    expect_error,
    expect_invalid_field,
    expect_needs_a_valid_token,
    expect_ok,
    expect_outsiders_and_missing_spaces_denied,
)
from contracts.registry import contract
from contracts.values import BAD_TOKENS, MALFORMED_IDS, forged_token, moment, new_id
from fixtures.accounts import Account, sign_up
from fixtures.canvas import (
    GET_CANVAS,
    LIST_PRESENCE,
    MOVE_NODE,
    PLACE_NODE,
    REMOVE_NODE,
    CursorMoved,
    Join,
    MoveAction,
    PlaceAction,
    RemoveAction,
    Response,
    Session,
    collaborate,
    collaborate_over_websocket,
    fill_canvas,
    get_canvas,
    move_node,
    node_changes,
    place_node,
    remove_node,
)
from fixtures.documents import eventually, remove_member
from fixtures.events import EventLog, envelope_of
from fixtures.knowledge import create_document, create_space, new_team
from services.api.canvas.v1 import canvas_pb2
from services.api.events.v1 import events_pb2
from services.kit.events import EventEnvelope
from simulations.endpoints import StackEndpoints

PLACED = canvas_pb2.CHANGE_KIND_PLACED
MOVED = canvas_pb2.CHANGE_KIND_MOVED
REMOVED = canvas_pb2.CHANGE_KIND_REMOVED
DEFAULT_WIDTH, DEFAULT_HEIGHT = 200.0, 100.0
MAX_NODES = 5000
EVENTS_TOPIC = "canvas.events.v1"
# A member removed from a space loses their session within this long (the proto: "when the
# caller loses membership"; the service checks every second).
LOSS_OF_ACCESS_S = 5.0


# ----------------------------------------------------------------- helpers


def case(field: str, **changes: Any) -> Any:
    """A parametrize case: the field the refusal must name, and the request fields that break it."""
    shown = ",".join(f"{name}={value!r}"[:24] for name, value in changes.items())
    return pytest.param(field, changes, id=shown)


def fields_of(node: canvas_pb2.Node) -> tuple[Any, ...]:
    """What a node is, apart from its version, author and time."""
    return (node.node_id, node.space_id, node.document_id, node.label, node.x, node.y, node.width, node.height)


def expect_editor_needed(reply: Reply) -> None:
    """A viewer's node change: PERMISSION_DENIED saying the editor role is needed."""
    expect_error(reply, grpc.StatusCode.PERMISSION_DENIED, "editor")


async def canvas_unchanged(setup_transport: Transport, account: Account, before: canvas_pb2.GetCanvasResponse) -> None:
    after = await get_canvas(setup_transport, account, before.space_id)
    assert after == before, "a refused call changes nothing"


async def receive_change(session: Session, canvas_version: int) -> Response.NodeChanged:
    """The session's next node_changed, which must be the one making `canvas_version`."""
    message = await session.receive("node_changed")
    changed = message.node_changed
    assert changed.canvas_version == canvas_version, f"expected canvas version {canvas_version}: {changed}"
    return changed


async def receive_rejection(session: Session, client_request_id: str, code: str) -> Response.Rejected:
    """The session's next `rejected`, which must answer `client_request_id` with `code`."""
    rejected = (await session.receive("rejected")).rejected
    assert (rejected.client_request_id, rejected.code) == (client_request_id, code), rejected
    assert 1 <= len(rejected.message) <= 500, rejected
    return rejected


def presence_of(user_id: str, left: bool | None = None) -> Callable[[Response], bool]:
    """A presence_changed about this user (and, if given, leaving or not)."""

    def about(message: Response) -> bool:
        changed = message.presence_changed
        return changed.presence.user_id == user_id and (left is None or changed.left == left)

    return about


# ------------------------------------------------------------- GetCanvas


@contract("canvas.v1.CanvasService/GetCanvas")
async def test_get_canvas_returns_every_node_ordered_by_node_id_at_the_canvas_version(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    request = canvas_pb2.GetCanvasRequest(space_id=team.space_id)
    empty = expect_ok(
        await transport.unary(GET_CANVAS, request, token=team.viewer.access_token), canvas_pb2.GetCanvasResponse
    )
    assert (empty.space_id, list(empty.nodes), empty.canvas_version) == (team.space_id, [], 0), "never had a node"

    placed = [
        (await place_node(setup_transport, team.editor, team.space_id, f"Idea {n}", x=n * 300.0, y=n * 50.5)).node
        for n in range(4)
    ]
    moved = (await move_node(setup_transport, team.owner, placed[1], -40.0, 75.25)).node
    await remove_node(setup_transport, team.editor, placed[2])
    expected = sorted([placed[0], moved, placed[3]], key=lambda node: node.node_id)

    for account in (team.viewer, team.editor, team.owner):
        reply = await transport.unary(GET_CANVAS, request, token=account.access_token)
        canvas = expect_ok(reply, canvas_pb2.GetCanvasResponse)
        assert canvas.space_id == team.space_id
        assert list(canvas.nodes) == expected, "the nodes as they are now, ordered by node_id"
        assert canvas.canvas_version == 6, "4 placements, a move and a removal"


@contract("canvas.v1.CanvasService/GetCanvas", "INVALID_ARGUMENT")
@pytest.mark.parametrize("space_id", MALFORMED_IDS)
async def test_get_canvas_needs_a_uuid(transport: Transport, setup_transport: Transport, space_id: str) -> None:
    account = await sign_up(setup_transport)
    reply = await transport.unary(
        GET_CANVAS, canvas_pb2.GetCanvasRequest(space_id=space_id), token=account.access_token
    )
    expect_invalid_field(reply, "space_id")


@contract("canvas.v1.CanvasService/GetCanvas", "UNAUTHENTICATED")
async def test_get_canvas_needs_a_valid_token(transport: Transport) -> None:
    await expect_needs_a_valid_token(transport, GET_CANVAS, canvas_pb2.GetCanvasRequest(space_id=new_id()))


@contract("canvas.v1.CanvasService/GetCanvas", "PERMISSION_DENIED")
async def test_get_canvas_of_a_space_the_caller_is_not_in_or_that_does_not_exist_is_denied(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    await place_node(setup_transport, team.owner, team.space_id, "Private plan")
    await expect_outsiders_and_missing_spaces_denied(
        transport,
        GET_CANVAS,
        lambda space_id: canvas_pb2.GetCanvasRequest(space_id=space_id),
        team.outsider,
        team.space_id,
    )


# ------------------------------------------------------------- PlaceNode


@contract("canvas.v1.CanvasService/PlaceNode")
async def test_place_node_over_json_reads_no_body_and_nulls_as_defaults(
    stack: StackEndpoints, setup_transport: Transport
) -> None:
    """As the proto3 JSON mapping says and services/api/openapi.yaml documents (schemathesis
    found both accepted while the document refused them)."""
    team = await new_team(setup_transport)
    url = f"{stack.envoy_http}/v1/spaces/{team.space_id}/canvas/nodes"
    headers = {"authorization": f"Bearer {team.editor.access_token}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, headers=headers) as answer:
            assert answer.status == 200, await answer.text()
            no_body = (await answer.json())["node"]
        async with session.post(url, headers=headers, json={"label": None, "x": 5, "height": None}) as answer:
            assert answer.status == 200, await answer.text()
            nulls = (await answer.json())["node"]
    assert (no_body["label"], no_body["x"], no_body["width"], no_body["height"]) == ("", 0, 200, DEFAULT_HEIGHT)
    assert (nulls["label"], nulls["x"], nulls["height"]) == ("", 5, DEFAULT_HEIGHT)


@contract("canvas.v1.CanvasService/PlaceNode")
async def test_place_node_adds_a_node_at_version_1_and_bumps_the_canvas_version_by_one(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    document = await create_document(setup_transport, team.owner, team.space_id, "Roadmap")

    request = canvas_pb2.PlaceNodeRequest(space_id=team.space_id, label="Roadmap", x=-120.5, y=80.25)
    reply = await transport.unary(PLACE_NODE, request, token=team.editor.access_token)
    first = expect_ok(reply, canvas_pb2.PlaceNodeResponse)
    node = first.node
    assert_canonical_id(node.node_id)
    assert fields_of(node) == (node.node_id, team.space_id, "", "Roadmap", -120.5, 80.25, 200.0, 100.0), (
        "width and height 0 mean the default 200 × 100"
    )
    assert (node.version, node.updated_by) == (1, team.editor.user_id)
    assert_recent(node.updated_at)
    assert first.canvas_version == 1

    request = canvas_pb2.PlaceNodeRequest(
        space_id=team.space_id, document_id=document.document_id, label="Linked", x=10, y=20, width=320.5, height=0.5
    )
    second = expect_ok(
        await transport.unary(PLACE_NODE, request, token=team.owner.access_token), canvas_pb2.PlaceNodeResponse
    )
    assert fields_of(second.node)[2:] == (document.document_id, "Linked", 10.0, 20.0, 320.5, 0.5)
    assert (second.node.version, second.node.updated_by, second.canvas_version) == (1, team.owner.user_id, 2)

    request = canvas_pb2.PlaceNodeRequest(space_id=team.space_id, width=50, height=0)
    third = expect_ok(
        await transport.unary(PLACE_NODE, request, token=team.editor.access_token), canvas_pb2.PlaceNodeResponse
    )
    assert (third.node.label, third.node.width, third.node.height) == ("", 50.0, DEFAULT_HEIGHT), "each default alone"
    assert third.canvas_version == 3
    assert len({node.node_id, second.node.node_id, third.node.node_id}) == 3

    canvas = await get_canvas(setup_transport, team.viewer, team.space_id)
    assert list(canvas.nodes) == sorted([node, second.node, third.node], key=lambda n: n.node_id)
    assert canvas.canvas_version == 3


@contract("canvas.v1.CanvasService/PlaceNode")
async def test_place_node_accepts_values_at_their_limits(transport: Transport, setup_transport: Transport) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    label = "🚀" * 200  # 800 bytes: characters are what counts, after trimming
    for x, y, width, height in ((-1_000_000, 1_000_000, 100_000, 100_000), (1_000_000, -1_000_000, 1e-6, 1e-6)):
        request = canvas_pb2.PlaceNodeRequest(
            space_id=space.space_id, label=f" {label}\n", x=x, y=y, width=width, height=height
        )
        reply = await transport.unary(PLACE_NODE, request, token=owner.access_token)
        node = expect_ok(reply, canvas_pb2.PlaceNodeResponse).node
        assert (node.label.strip(), node.x, node.y, node.width, node.height) == (label, x, y, width, height)


@contract("canvas.v1.CanvasService/PlaceNode", "INVALID_ARGUMENT")
@pytest.mark.parametrize(
    ("field", "changes"),
    [
        *(case("space_id", space_id=malformed) for malformed in MALFORMED_IDS),
        *(case("document_id", document_id=malformed) for malformed in MALFORMED_IDS),
        case("label", label="l" * 201),
        case("label", label="🚀" * 201),
        case("x", x=math.nan),
        case("x", x=math.inf),
        case("x", x=-math.inf),
        case("x", x=1_000_000.5),
        case("x", x=-1_000_001),
        case("y", y=math.nan),
        case("y", y=-math.inf),
        case("y", y=10_000_000),
        case("width", width=-1),
        case("width", width=100_000.5),
        case("width", width=math.nan),
        case("width", width=math.inf),
        case("height", height=-0.001),
        case("height", height=100_001),
        case("height", height=math.inf),
    ],
)
async def test_place_node_rejects_an_id_label_coordinate_or_size_beyond_its_limit(
    transport: Transport, setup_transport: Transport, field: str, changes: dict[str, Any]
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    before = await get_canvas(setup_transport, owner, space.space_id)
    request = canvas_pb2.PlaceNodeRequest(**{"space_id": space.space_id, "label": "Fine", "x": 1, "y": 2, **changes})
    expect_invalid_field(await transport.unary(PLACE_NODE, request, token=owner.access_token), field)
    await canvas_unchanged(setup_transport, owner, before)


@contract("canvas.v1.CanvasService/PlaceNode", "UNAUTHENTICATED")
async def test_place_node_needs_a_valid_token(transport: Transport) -> None:
    await expect_needs_a_valid_token(
        transport, PLACE_NODE, canvas_pb2.PlaceNodeRequest(space_id=new_id(), label="Anonymous")
    )


@contract("canvas.v1.CanvasService/PlaceNode", "PERMISSION_DENIED")
async def test_place_node_needs_the_editor_role(transport: Transport, setup_transport: Transport) -> None:
    team = await new_team(setup_transport)
    before = await get_canvas(setup_transport, team.owner, team.space_id)

    request = canvas_pb2.PlaceNodeRequest(space_id=team.space_id, label="A viewer's idea")
    expect_editor_needed(await transport.unary(PLACE_NODE, request, token=team.viewer.access_token))
    await expect_outsiders_and_missing_spaces_denied(
        transport,
        PLACE_NODE,
        lambda space_id: canvas_pb2.PlaceNodeRequest(space_id=space_id, label="An outsider's idea"),
        team.outsider,
        team.space_id,
    )
    await canvas_unchanged(setup_transport, team.owner, before)


@contract("canvas.v1.CanvasService/PlaceNode", "FAILED_PRECONDITION")
async def test_place_node_on_a_canvas_holding_5000_nodes_fails_until_one_is_removed(
    transport: Transport, setup_transport: Transport, stack: StackEndpoints
) -> None:
    """The canvas is filled straight in the canvas table, not through 5000 PlaceNode calls:
    those would take minutes, flood the event topic and the logs, and prove nothing more. The
    items are written with the repository's own layout (node items and the space's counter at
    canvas version 5000 holding 5000 nodes), as 5000 placements would have left them; the
    removal and placements after it go through the API."""
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    node_ids = await fill_canvas(stack, space.space_id, owner.user_id, MAX_NODES)

    request = canvas_pb2.PlaceNodeRequest(space_id=space.space_id, label="One too many")
    full = await transport.unary(PLACE_NODE, request, token=owner.access_token)
    expect_error(full, grpc.StatusCode.FAILED_PRECONDITION, "5000")

    removal = canvas_pb2.RemoveNodeRequest(space_id=space.space_id, node_id=node_ids[0], expected_version=1)
    removed = expect_ok(
        await setup_transport.unary(REMOVE_NODE, removal, token=owner.access_token), canvas_pb2.RemoveNodeResponse
    )
    assert removed.canvas_version == MAX_NODES + 1
    room = expect_ok(await transport.unary(PLACE_NODE, request, token=owner.access_token), canvas_pb2.PlaceNodeResponse)
    assert (room.node.version, room.canvas_version) == (1, MAX_NODES + 2), "one place was free again"
    expect_error(
        await transport.unary(PLACE_NODE, request, token=owner.access_token), grpc.StatusCode.FAILED_PRECONDITION
    )


# -------------------------------------------------------------- MoveNode


@contract("canvas.v1.CanvasService/MoveNode")
async def test_move_node_sets_the_position_and_bumps_the_node_and_canvas_versions(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    node = (await place_node(setup_transport, team.owner, team.space_id, "Draft", 10, 20, 300, 150)).node
    other = (await place_node(setup_transport, team.owner, team.space_id, "Bystander")).node

    request = canvas_pb2.MoveNodeRequest(
        space_id=team.space_id, node_id=node.node_id, x=-500.5, y=999_999, expected_version=1
    )
    first = expect_ok(
        await transport.unary(MOVE_NODE, request, token=team.editor.access_token), canvas_pb2.MoveNodeResponse
    )
    moved = first.node
    assert fields_of(moved) == (*fields_of(node)[:4], -500.5, 999_999.0, *fields_of(node)[6:]), "only the position"
    assert (moved.version, moved.updated_by) == (2, team.editor.user_id)
    assert_recent(moved.updated_at)
    assert moment(moved.updated_at) >= moment(node.updated_at)
    assert first.canvas_version == 3

    request = canvas_pb2.MoveNodeRequest(
        space_id=team.space_id, node_id=node.node_id, x=1_000_000, y=-1_000_000, expected_version=2
    )
    second = expect_ok(
        await transport.unary(MOVE_NODE, request, token=team.owner.access_token), canvas_pb2.MoveNodeResponse
    )
    assert (second.node.x, second.node.y, second.node.version, second.node.updated_by) == (
        1_000_000,
        -1_000_000,
        3,
        team.owner.user_id,
    )
    assert second.canvas_version == 4

    canvas = await get_canvas(setup_transport, team.viewer, team.space_id)
    assert list(canvas.nodes) == sorted([second.node, other], key=lambda n: n.node_id)
    assert canvas.canvas_version == 4


@contract("canvas.v1.CanvasService/MoveNode", "INVALID_ARGUMENT")
@pytest.mark.parametrize(
    ("field", "changes"),
    [
        *(case("space_id", space_id=malformed) for malformed in MALFORMED_IDS),
        *(case("node_id", node_id=malformed) for malformed in MALFORMED_IDS),
        case("x", x=math.nan),
        case("x", x=math.inf),
        case("x", x=1_000_001),
        case("y", y=math.nan),
        case("y", y=-math.inf),
        case("y", y=-1_000_000.5),
        case("expected_version", expected_version=0),
        case("expected_version", expected_version=-1),
    ],
)
async def test_move_node_rejects_a_bad_id_position_or_expected_version(
    transport: Transport, setup_transport: Transport, field: str, changes: dict[str, Any]
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    node = (await place_node(setup_transport, owner, space.space_id)).node
    before = await get_canvas(setup_transport, owner, space.space_id)
    fields = {"space_id": space.space_id, "node_id": node.node_id, "x": 5, "y": 6, "expected_version": 1, **changes}
    reply = await transport.unary(MOVE_NODE, canvas_pb2.MoveNodeRequest(**fields), token=owner.access_token)
    expect_invalid_field(reply, field)
    await canvas_unchanged(setup_transport, owner, before)


@contract("canvas.v1.CanvasService/MoveNode", "UNAUTHENTICATED")
async def test_move_node_needs_a_valid_token(transport: Transport) -> None:
    request = canvas_pb2.MoveNodeRequest(space_id=new_id(), node_id=new_id(), x=1, y=1, expected_version=1)
    await expect_needs_a_valid_token(transport, MOVE_NODE, request)


@contract("canvas.v1.CanvasService/MoveNode", "PERMISSION_DENIED")
async def test_move_node_needs_the_editor_role(transport: Transport, setup_transport: Transport) -> None:
    team = await new_team(setup_transport)
    node = (await place_node(setup_transport, team.owner, team.space_id)).node
    before = await get_canvas(setup_transport, team.owner, team.space_id)

    def request_for(space_id: str) -> canvas_pb2.MoveNodeRequest:
        return canvas_pb2.MoveNodeRequest(space_id=space_id, node_id=node.node_id, x=7, y=8, expected_version=1)

    expect_editor_needed(await transport.unary(MOVE_NODE, request_for(team.space_id), token=team.viewer.access_token))
    await expect_outsiders_and_missing_spaces_denied(transport, MOVE_NODE, request_for, team.outsider, team.space_id)
    await canvas_unchanged(setup_transport, team.owner, before)


@contract("canvas.v1.CanvasService/MoveNode", "NOT_FOUND")
async def test_move_node_of_a_node_not_on_the_canvas_is_not_found(
    transport: Transport, setup_transport: Transport
) -> None:
    """Never placed, removed, or placed on another space's canvas."""
    owner = await sign_up(setup_transport)
    space, elsewhere = await create_space(setup_transport, owner), await create_space(setup_transport, owner, "Other")
    removed = (await place_node(setup_transport, owner, space.space_id, "Gone")).node
    await remove_node(setup_transport, owner, removed)
    foreign = (await place_node(setup_transport, owner, elsewhere.space_id, "Lives elsewhere")).node
    before = await get_canvas(setup_transport, owner, space.space_id)

    for node_id, version in ((new_id(), 1), (removed.node_id, 1), (removed.node_id, 2), (foreign.node_id, 1)):
        request = canvas_pb2.MoveNodeRequest(
            space_id=space.space_id, node_id=node_id, x=1, y=1, expected_version=version
        )
        reply = await transport.unary(MOVE_NODE, request, token=owner.access_token)
        expect_error(reply, grpc.StatusCode.NOT_FOUND, node_id)
    await canvas_unchanged(setup_transport, owner, before)
    assert list((await get_canvas(setup_transport, owner, elsewhere.space_id)).nodes) == [foreign]


@contract("canvas.v1.CanvasService/MoveNode", "ABORTED")
async def test_move_node_from_a_version_that_is_not_current_is_aborted(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    node = (await place_node(setup_transport, team.owner, team.space_id, "Contested")).node
    await move_node(setup_transport, team.owner, node, 100, 100)  # now at version 2
    before = await get_canvas(setup_transport, team.owner, team.space_id)

    for stale in (1, 3):
        request = canvas_pb2.MoveNodeRequest(
            space_id=team.space_id, node_id=node.node_id, x=-1, y=-1, expected_version=stale
        )
        reply = await transport.unary(MOVE_NODE, request, token=team.editor.access_token)
        expect_error(reply, grpc.StatusCode.ABORTED, node.node_id)
    await canvas_unchanged(setup_transport, team.owner, before)


# ------------------------------------------------------------ RemoveNode


@contract("canvas.v1.CanvasService/RemoveNode")
async def test_remove_node_deletes_it_and_bumps_the_canvas_version_by_one(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    kept = (await place_node(setup_transport, team.owner, team.space_id, "Kept")).node
    first = (await place_node(setup_transport, team.owner, team.space_id, "Removed at version 1")).node
    second = (await place_node(setup_transport, team.owner, team.space_id, "Removed at version 2")).node
    second = (await move_node(setup_transport, team.owner, second, 3, 4)).node  # canvas version 4

    for node, canvas_version, account in ((first, 5, team.editor), (second, 6, team.owner)):
        request = canvas_pb2.RemoveNodeRequest(
            space_id=team.space_id, node_id=node.node_id, expected_version=node.version
        )
        reply = await transport.unary(REMOVE_NODE, request, token=account.access_token)
        assert expect_ok(reply, canvas_pb2.RemoveNodeResponse).canvas_version == canvas_version

    canvas = await get_canvas(setup_transport, team.viewer, team.space_id)
    assert (list(canvas.nodes), canvas.canvas_version) == ([kept], 6), "the removed nodes are gone"


@contract("canvas.v1.CanvasService/RemoveNode", "INVALID_ARGUMENT")
@pytest.mark.parametrize(
    ("field", "changes"),
    [
        *(case("space_id", space_id=malformed) for malformed in MALFORMED_IDS),
        *(case("node_id", node_id=malformed) for malformed in MALFORMED_IDS),
        case("expected_version", expected_version=0),
        case("expected_version", expected_version=-1),
    ],
)
async def test_remove_node_rejects_a_bad_id_or_expected_version(
    transport: Transport, setup_transport: Transport, field: str, changes: dict[str, Any]
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    node = (await place_node(setup_transport, owner, space.space_id)).node
    before = await get_canvas(setup_transport, owner, space.space_id)
    fields = {"space_id": space.space_id, "node_id": node.node_id, "expected_version": 1, **changes}
    reply = await transport.unary(REMOVE_NODE, canvas_pb2.RemoveNodeRequest(**fields), token=owner.access_token)
    expect_invalid_field(reply, field)
    await canvas_unchanged(setup_transport, owner, before)


@contract("canvas.v1.CanvasService/RemoveNode", "UNAUTHENTICATED")
async def test_remove_node_needs_a_valid_token(transport: Transport) -> None:
    request = canvas_pb2.RemoveNodeRequest(space_id=new_id(), node_id=new_id(), expected_version=1)
    await expect_needs_a_valid_token(transport, REMOVE_NODE, request)


@contract("canvas.v1.CanvasService/RemoveNode", "PERMISSION_DENIED")
async def test_remove_node_needs_the_editor_role(transport: Transport, setup_transport: Transport) -> None:
    team = await new_team(setup_transport)
    node = (await place_node(setup_transport, team.owner, team.space_id)).node
    before = await get_canvas(setup_transport, team.owner, team.space_id)

    def request_for(space_id: str) -> canvas_pb2.RemoveNodeRequest:
        return canvas_pb2.RemoveNodeRequest(space_id=space_id, node_id=node.node_id, expected_version=1)

    reply = await transport.unary(REMOVE_NODE, request_for(team.space_id), token=team.viewer.access_token)
    expect_editor_needed(reply)
    await expect_outsiders_and_missing_spaces_denied(transport, REMOVE_NODE, request_for, team.outsider, team.space_id)
    await canvas_unchanged(setup_transport, team.owner, before)


@contract("canvas.v1.CanvasService/RemoveNode", "NOT_FOUND")
async def test_remove_node_of_a_node_never_placed_or_already_removed_is_not_found(
    transport: Transport, setup_transport: Transport
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    node = (await place_node(setup_transport, owner, space.space_id)).node
    request = canvas_pb2.RemoveNodeRequest(space_id=space.space_id, node_id=node.node_id, expected_version=1)
    expect_ok(await transport.unary(REMOVE_NODE, request, token=owner.access_token), canvas_pb2.RemoveNodeResponse)
    before = await get_canvas(setup_transport, owner, space.space_id)

    for node_id, version in ((node.node_id, 1), (node.node_id, 2), (new_id(), 1)):
        again = canvas_pb2.RemoveNodeRequest(space_id=space.space_id, node_id=node_id, expected_version=version)
        reply = await transport.unary(REMOVE_NODE, again, token=owner.access_token)
        expect_error(reply, grpc.StatusCode.NOT_FOUND, node_id)
    await canvas_unchanged(setup_transport, owner, before)


@contract("canvas.v1.CanvasService/RemoveNode", "ABORTED")
async def test_remove_node_from_a_version_that_is_not_current_is_aborted(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    node = (await place_node(setup_transport, team.owner, team.space_id, "Contested")).node
    await move_node(setup_transport, team.owner, node, 100, 100)  # now at version 2
    before = await get_canvas(setup_transport, team.owner, team.space_id)

    for stale in (1, 3):
        request = canvas_pb2.RemoveNodeRequest(space_id=team.space_id, node_id=node.node_id, expected_version=stale)
        reply = await transport.unary(REMOVE_NODE, request, token=team.editor.access_token)
        expect_error(reply, grpc.StatusCode.ABORTED, node.node_id)
    await canvas_unchanged(setup_transport, team.owner, before)


# ---------------------------------------------------------------- events


async def node_events(events: EventLog, space_id: str, node_id: str, last_type: str) -> list[EventEnvelope]:
    """The node's events once one of `last_type` arrived, one per event_id, in topic order."""
    subjects = {"space_id": space_id, "node_id": node_id}
    found = await events.wait_for(lambda e: e.event_type == last_type and dict(e.subject_ids) == subjects)
    assert found, f"no {last_type} event about {subjects}"
    distinct: dict[str, EventEnvelope] = {}
    for envelope in events.envelopes:
        if dict(envelope.subject_ids) == subjects:
            distinct.setdefault(envelope.event_id, envelope)
    return list(distinct.values())


def assert_canvas_envelope(events: EventLog, envelope: EventEnvelope, space_id: str, actor: Account) -> None:
    """The envelope every canvas event has, keyed in Kafka by its space."""
    assert events.topic == EVENTS_TOPIC
    assert_canonical_id(envelope.event_id)
    assert (envelope.producer, envelope.partition_key, envelope.schema_version) == ("canvas", space_id, 1)
    assert envelope.actor_user_id == actor.user_id
    assert_recent(envelope.occurred_at)
    assert len(envelope.trace.traceparent) == 55, "the request's trace context travels with the event"
    records = [
        record
        for record in events.records
        if (decoded := envelope_of(record)) is not None and decoded.event_id == envelope.event_id
    ]
    assert records
    assert {record.key for record in records} == {space_id.encode()}, "the record key is the partition key"


@contract("canvas.v1.CanvasService/PlaceNode")
@contract("canvas.v1.CanvasService/MoveNode")
@contract("canvas.v1.CanvasService/RemoveNode")
async def test_each_change_emits_one_canvas_node_event(
    transport: Transport, setup_transport: Transport, canvas_events: EventLog
) -> None:
    team = await new_team(setup_transport)
    document = await create_document(setup_transport, team.owner, team.space_id, "Spec")
    await place_node(setup_transport, team.owner, team.space_id, "Earlier")  # canvas version 1

    request = canvas_pb2.PlaceNodeRequest(
        space_id=team.space_id, document_id=document.document_id, label="Spec", x=1.5, y=-2.5, width=240, height=0
    )
    placed = expect_ok(
        await transport.unary(PLACE_NODE, request, token=team.editor.access_token), canvas_pb2.PlaceNodeResponse
    )
    node = placed.node
    move = canvas_pb2.MoveNodeRequest(space_id=team.space_id, node_id=node.node_id, x=30, y=40, expected_version=1)
    moved = expect_ok(
        await transport.unary(MOVE_NODE, move, token=team.owner.access_token), canvas_pb2.MoveNodeResponse
    )
    removal = canvas_pb2.RemoveNodeRequest(space_id=team.space_id, node_id=node.node_id, expected_version=2)
    removed = expect_ok(
        await transport.unary(REMOVE_NODE, removal, token=team.editor.access_token), canvas_pb2.RemoveNodeResponse
    )

    events = await node_events(canvas_events, team.space_id, node.node_id, "canvas.node.removed")
    assert [event.event_type for event in events] == [
        "canvas.node.placed",
        "canvas.node.moved",
        "canvas.node.removed",
    ], "one event per change, in the order of the changes"
    placed_event, moved_event, removed_event = events
    for event, actor in ((placed_event, team.editor), (moved_event, team.owner), (removed_event, team.editor)):
        assert_canvas_envelope(canvas_events, event, team.space_id, actor)

    assert events_pb2.NodePlaced.FromString(placed_event.payload) == events_pb2.NodePlaced(
        space_id=team.space_id,
        node_id=node.node_id,
        document_id=document.document_id,
        label="Spec",
        x=1.5,
        y=-2.5,
        width=240,
        height=DEFAULT_HEIGHT,
        version=1,
        canvas_version=placed.canvas_version,
    )
    assert events_pb2.NodeMoved.FromString(moved_event.payload) == events_pb2.NodeMoved(
        space_id=team.space_id,
        node_id=node.node_id,
        x=30,
        y=40,
        previous_x=1.5,
        previous_y=-2.5,
        version=2,
        canvas_version=moved.canvas_version,
    )
    assert events_pb2.NodeRemoved.FromString(removed_event.payload) == events_pb2.NodeRemoved(
        space_id=team.space_id,
        node_id=node.node_id,
        document_id=document.document_id,
        version=3,
        canvas_version=removed.canvas_version,
    )
    assert (placed.canvas_version, moved.canvas_version, removed.canvas_version) == (2, 3, 4)


@contract("canvas.v1.CanvasService/Collaborate")
async def test_a_change_made_in_a_session_emits_its_event_as_a_unary_one_does(
    setup_transport: Transport, stack: StackEndpoints, canvas_events: EventLog
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    async with collaborate(stack.envoy_grpc, owner.access_token) as session:
        await session.join(space.space_id)
        await session.send(client_request_id="p1", place_node=PlaceAction(label="Live", x=5, y=6))
        node = (await receive_change(session, 1)).node

    [event] = await node_events(canvas_events, space.space_id, node.node_id, "canvas.node.placed")
    assert_canvas_envelope(canvas_events, event, space.space_id, owner)
    payload = events_pb2.NodePlaced.FromString(event.payload)
    assert (payload.label, payload.x, payload.y, payload.version, payload.canvas_version) == ("Live", 5, 6, 1, 1)


# ---------------------------------------------------------- ListPresence


@contract("canvas.v1.CanvasService/ListPresence")
async def test_list_presence_lists_users_with_an_open_session_ordered_by_user_id(
    transport: Transport, setup_transport: Transport, stack: StackEndpoints
) -> None:
    team = await new_team(setup_transport)
    request = canvas_pb2.ListPresenceRequest(space_id=team.space_id)

    async def present() -> list[canvas_pb2.Presence]:
        reply = await transport.unary(LIST_PRESENCE, request, token=team.owner.access_token)
        return list(expect_ok(reply, canvas_pb2.ListPresenceResponse).presence)

    assert await present() == [], "nobody has joined yet"
    async with (
        collaborate(stack.envoy_grpc, team.viewer.access_token) as viewer_session,
        collaborate(stack.envoy_grpc, team.editor.access_token) as editor_session,
    ):
        await viewer_session.join(team.space_id)
        await editor_session.join(team.space_id)
        await editor_session.send(cursor_moved=CursorMoved(x=12.5, y=-7))

        async def with_the_editor_s_cursor() -> list[canvas_pb2.Presence] | None:
            listed = await present()
            cursors = {p.user_id: (p.cursor_x, p.cursor_y) for p in listed}
            return listed if cursors.get(team.editor.user_id) == (12.5, -7) else None

        listed = await eventually(with_the_editor_s_cursor, "the editor's cursor is not listed", timeout_s=10)
        assert [p.user_id for p in listed] == sorted([team.viewer.user_id, team.editor.user_id]), (
            "the two users in a session, ordered by user_id; not the owner, who only asks"
        )
        by_user = {p.user_id: p for p in listed}
        for account in (team.viewer, team.editor):
            assert by_user[account.user_id].display_name == account.display_name
            assert_recent(by_user[account.user_id].last_seen_at)
        viewer = by_user[team.viewer.user_id]
        assert (viewer.cursor_x, viewer.cursor_y) == (0, 0), "no cursor move yet"

        await viewer_session.done_writing()
        assert (await viewer_session.ended_with()).code == grpc.StatusCode.OK

        async def without_the_viewer() -> list[canvas_pb2.Presence] | None:
            listed = await present()
            return listed if team.viewer.user_id not in {p.user_id for p in listed} else None

        remaining = await eventually(without_the_viewer, "the viewer is listed after their session ended", 10)
        assert [p.user_id for p in remaining] == [team.editor.user_id]


@contract("canvas.v1.CanvasService/ListPresence", "INVALID_ARGUMENT")
@pytest.mark.parametrize("space_id", MALFORMED_IDS)
async def test_list_presence_needs_a_uuid(transport: Transport, setup_transport: Transport, space_id: str) -> None:
    account = await sign_up(setup_transport)
    request = canvas_pb2.ListPresenceRequest(space_id=space_id)
    expect_invalid_field(await transport.unary(LIST_PRESENCE, request, token=account.access_token), "space_id")


@contract("canvas.v1.CanvasService/ListPresence", "UNAUTHENTICATED")
async def test_list_presence_needs_a_valid_token(transport: Transport) -> None:
    await expect_needs_a_valid_token(transport, LIST_PRESENCE, canvas_pb2.ListPresenceRequest(space_id=new_id()))


@contract("canvas.v1.CanvasService/ListPresence", "PERMISSION_DENIED")
async def test_list_presence_of_a_space_the_caller_is_not_in_or_that_does_not_exist_is_denied(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    await expect_outsiders_and_missing_spaces_denied(
        transport,
        LIST_PRESENCE,
        lambda space_id: canvas_pb2.ListPresenceRequest(space_id=space_id),
        team.outsider,
        team.space_id,
    )


# ----------------------------------------------------------- Collaborate


@contract("canvas.v1.CanvasService/Collaborate")
async def test_join_is_answered_with_a_snapshot_of_the_nodes_the_present_users_and_the_canvas_version(
    setup_transport: Transport, stack: StackEndpoints
) -> None:
    team = await new_team(setup_transport)
    nodes = [(await place_node(setup_transport, team.editor, team.space_id, f"N{n}", n, n)).node for n in range(3)]
    await move_node(setup_transport, team.editor, nodes[0], 50, 60)
    canvas = await get_canvas(setup_transport, team.owner, team.space_id)
    assert canvas.canvas_version == 4

    async with (
        collaborate(stack.envoy_grpc, team.owner.access_token) as owner_session,
        collaborate(stack.envoy_grpc, team.viewer.access_token) as viewer_session,
    ):
        first = await owner_session.join(team.space_id)
        assert [p.user_id for p in first.presence] == [team.owner.user_id], "the caller is present"
        snapshot = await viewer_session.join(team.space_id)
        assert snapshot.space_id == team.space_id
        assert list(snapshot.nodes) == list(canvas.nodes), "every node, ordered by node_id"
        assert snapshot.canvas_version == 4
        assert [p.user_id for p in snapshot.presence] == sorted([team.owner.user_id, team.viewer.user_id])
        for presence in snapshot.presence:
            account = team.owner if presence.user_id == team.owner.user_id else team.viewer
            assert presence.display_name == account.display_name
            assert_recent(presence.last_seen_at)

    empty_space = await create_space(setup_transport, team.owner, "Blank")
    async with collaborate(stack.envoy_grpc, team.owner.access_token) as session:
        blank = await session.join(empty_space.space_id)
        assert (list(blank.nodes), blank.canvas_version) == ([], 0)
        assert [p.user_id for p in blank.presence] == [team.owner.user_id]


@contract("canvas.v1.CanvasService/Collaborate")
async def test_every_change_reaches_every_session_of_the_space_the_originating_one_included(
    setup_transport: Transport, stack: StackEndpoints
) -> None:
    team = await new_team(setup_transport)
    elsewhere = await create_space(setup_transport, team.editor, "Another canvas")
    async with (
        collaborate(stack.envoy_grpc, team.editor.access_token) as editor_session,
        collaborate(stack.envoy_grpc, team.owner.access_token) as owner_session,
        collaborate(stack.envoy_grpc, team.viewer.access_token) as viewer_session,
    ):
        sessions = (editor_session, owner_session, viewer_session)
        for session in sessions:
            assert (await session.join(team.space_id)).canvas_version == 0

        await editor_session.send(client_request_id="place-1", place_node=PlaceAction(label="Live", x=1, y=2))
        placements = [await receive_change(session, 1) for session in sessions]
        placed = placements[0]
        assert all(change == placed for change in placements), "every session gets the same change"
        assert (placed.change_kind, placed.actor_user_id, placed.client_request_id) == (
            PLACED,
            team.editor.user_id,
            "place-1",
        )
        node = placed.node
        assert_canonical_id(node.node_id)
        assert fields_of(node)[1:] == (team.space_id, "", "Live", 1.0, 2.0, DEFAULT_WIDTH, DEFAULT_HEIGHT)
        assert (node.version, node.updated_by) == (1, team.editor.user_id)

        await owner_session.send(
            client_request_id="move-1", move_node=MoveAction(node_id=node.node_id, x=30, y=40, expected_version=1)
        )
        moves = [await receive_change(session, 2) for session in sessions]
        assert all(change == moves[0] for change in moves)
        assert (moves[0].change_kind, moves[0].actor_user_id, moves[0].client_request_id) == (
            MOVED,
            team.owner.user_id,
            "move-1",
        )
        assert (moves[0].node.x, moves[0].node.y, moves[0].node.version) == (30, 40, 2)

        await place_node(setup_transport, team.editor, elsewhere.space_id, "Not on this canvas")
        removed = await remove_node(setup_transport, team.editor, moves[0].node)
        removals = [await receive_change(session, 3) for session in sessions]
        assert all(change == removals[0] for change in removals)
        removal = removals[0]
        assert (removal.change_kind, removal.actor_user_id, removal.client_request_id) == (
            REMOVED,
            team.editor.user_id,
            "",
        ), "a unary change carries no client_request_id"
        assert fields_of(removal.node) == fields_of(moves[0].node), "the removed node's last state"
        assert removal.node.version == 3, "its version bumped"
        assert removed.canvas_version == 3

        for session in sessions:
            assert [change.canvas_version for change in node_changes(session)] == [1, 2, 3], (
                "each change once, in order, and none from another space"
            )


@contract("canvas.v1.CanvasService/Collaborate")
async def test_sessions_are_told_who_arrives_moves_their_cursor_and_leaves(
    setup_transport: Transport, stack: StackEndpoints
) -> None:
    team = await new_team(setup_transport)
    async with collaborate(stack.envoy_grpc, team.owner.access_token) as owner_session:
        await owner_session.join(team.space_id)

        async with collaborate(stack.envoy_grpc, team.viewer.access_token) as viewer_session:
            await viewer_session.join(team.space_id)
            arrival = await owner_session.receive("presence_changed", presence_of(team.viewer.user_id))
            arrived = arrival.presence_changed
            assert not arrived.left
            assert (arrived.presence.display_name, arrived.presence.cursor_x, arrived.presence.cursor_y) == (
                team.viewer.display_name,
                0,
                0,
            )

            await viewer_session.send(cursor_moved=CursorMoved(x=250, y=-75.5))
            await owner_session.receive(
                "presence_changed",
                lambda m: (
                    presence_of(team.viewer.user_id, left=False)(m)
                    and (m.presence_changed.presence.cursor_x, m.presence_changed.presence.cursor_y) == (250, -75.5)
                ),
            )

            async with collaborate(stack.envoy_grpc, team.viewer.access_token) as second_viewer_session:
                await second_viewer_session.join(team.space_id)
                await viewer_session.done_writing()
                assert (await viewer_session.ended_with()).code == grpc.StatusCode.OK
                # The viewer still has a session: the next thing heard of them is their cursor, not a departure.
                await second_viewer_session.send(cursor_moved=CursorMoved(x=-1, y=-2))
                still_here = await owner_session.receive(
                    "presence_changed",
                    lambda m: (
                        presence_of(team.viewer.user_id)(m)
                        and (m.presence_changed.left or m.presence_changed.presence.cursor_x == -1)
                    ),
                )
                assert not still_here.presence_changed.left, "a user with a session left is not announced as gone"

                await second_viewer_session.done_writing()
                assert (await second_viewer_session.ended_with()).code == grpc.StatusCode.OK
                left = await owner_session.receive("presence_changed", presence_of(team.viewer.user_id, left=True))
                assert left.presence_changed.presence.display_name == team.viewer.display_name


@contract("canvas.v1.CanvasService/Collaborate")
async def test_a_refused_action_is_answered_with_rejected_to_its_sender_and_the_stream_stays_open(
    setup_transport: Transport, stack: StackEndpoints
) -> None:
    team = await new_team(setup_transport)
    node = (await place_node(setup_transport, team.owner, team.space_id, "Contested")).node
    node = (await move_node(setup_transport, team.owner, node, 10, 10)).node  # version 2, canvas version 2
    async with (
        collaborate(stack.envoy_grpc, team.editor.access_token) as editor_session,
        collaborate(stack.envoy_grpc, team.viewer.access_token) as viewer_session,
    ):
        await editor_session.join(team.space_id)
        await viewer_session.join(team.space_id)

        await viewer_session.send(client_request_id="viewer-place", place_node=PlaceAction(label="Mine"))
        denied = await receive_rejection(viewer_session, "viewer-place", "PERMISSION_DENIED")
        assert "editor" in denied.message, denied.message
        assert not denied.HasField("current_node")
        await viewer_session.send(
            client_request_id="viewer-remove", remove_node=RemoveAction(node_id=node.node_id, expected_version=2)
        )
        await receive_rejection(viewer_session, "viewer-remove", "PERMISSION_DENIED")

        for request_id, field, action in (
            ("long-label", "label", {"place_node": PlaceAction(label="l" * 201)}),
            ("nan-x", "x", {"move_node": MoveAction(node_id=node.node_id, x=math.nan, y=0, expected_version=2)}),
            ("huge-width", "width", {"place_node": PlaceAction(width=100_001)}),
            ("version-0", "expected_version", {"remove_node": RemoveAction(node_id=node.node_id)}),
            ("bad-id", "node_id", {"move_node": MoveAction(node_id="not-a-uuid", expected_version=2)}),
        ):
            await editor_session.send(client_request_id=request_id, **action)
            invalid = await receive_rejection(editor_session, request_id, "INVALID_ARGUMENT")
            assert field in invalid.message, f"{invalid.message!r} does not name {field}"

        ghost = new_id()
        await editor_session.send(
            client_request_id="ghost", move_node=MoveAction(node_id=ghost, x=1, y=1, expected_version=1)
        )
        assert ghost in (await receive_rejection(editor_session, "ghost", "NOT_FOUND")).message

        await editor_session.send(
            client_request_id="stale", move_node=MoveAction(node_id=node.node_id, x=1, y=1, expected_version=1)
        )
        stale = await receive_rejection(editor_session, "stale", "ABORTED")
        assert stale.current_node == node, "the node's current state, to rebase on"

        await editor_session.send(client_request_id="join-again", join=Join(space_id=team.space_id))
        await receive_rejection(editor_session, "join-again", "FAILED_PRECONDITION")

        await viewer_session.send(client_request_id="cursor", cursor_moved=CursorMoved(x=0, y=math.inf))
        assert "y" in (await receive_rejection(viewer_session, "cursor", "INVALID_ARGUMENT")).message
        await editor_session.send(client_request_id="r" * 65, place_node=PlaceAction(label="Too long an id"))
        too_long = (await editor_session.receive("rejected")).rejected
        assert too_long.code == "INVALID_ARGUMENT", too_long
        assert "client_request_id" in too_long.message, too_long.message
        assert len(too_long.client_request_id) <= 64

        # Still open, both of them: the next accepted change reaches each, and nothing else came before it.
        await editor_session.send(
            client_request_id="fine", move_node=MoveAction(node_id=node.node_id, x=2, y=3, expected_version=2)
        )
        for session in (editor_session, viewer_session):
            change = await receive_change(session, 3)
            assert (change.client_request_id, change.node.version) == ("fine", 3)
        assert [m.rejected.client_request_id for m in viewer_session.received if m.HasField("rejected")] == [
            "viewer-place",
            "viewer-remove",
            "cursor",
        ], "rejections go to their sender only"
        assert (await get_canvas(setup_transport, team.owner, team.space_id)).canvas_version == 3, (
            "no refused action changed the canvas"
        )


@contract("canvas.v1.CanvasService/Collaborate", "INVALID_ARGUMENT")
@pytest.mark.parametrize("space_id", MALFORMED_IDS)
async def test_a_join_whose_space_id_is_not_a_uuid_ends_the_stream(
    setup_transport: Transport, stack: StackEndpoints, space_id: str
) -> None:
    account = await sign_up(setup_transport)
    async with collaborate(stack.envoy_grpc, account.access_token) as session:
        await session.send(join=Join(space_id=space_id))
        ending = await session.ended_with()
        assert ending.code == grpc.StatusCode.INVALID_ARGUMENT, ending
        assert "join.space_id" in ending.details, ending.details
        assert session.received == []


@contract("canvas.v1.CanvasService/Collaborate", "UNAUTHENTICATED")
async def test_collaborate_needs_a_valid_token(stack: StackEndpoints) -> None:
    """Envoy refuses the stream at the edge, on its headers, before any message: the client
    need not (and, racing the refusal, could not reliably) write its join."""
    for token in (*BAD_TOKENS, forged_token()):
        async with collaborate(stack.envoy_grpc, token) as session:
            ending = await session.ended_with()
            assert ending.code == grpc.StatusCode.UNAUTHENTICATED, (token, ending)
            assert session.received == []


@contract("canvas.v1.CanvasService/Collaborate", "PERMISSION_DENIED")
async def test_joining_a_space_the_caller_is_not_in_or_that_does_not_exist_ends_the_stream(
    setup_transport: Transport, stack: StackEndpoints
) -> None:
    team = await new_team(setup_transport)
    for space_id in (team.space_id, new_id()):
        async with collaborate(stack.envoy_grpc, team.outsider.access_token) as session:
            await session.send(join=Join(space_id=space_id))
            ending = await session.ended_with()
            assert ending.code == grpc.StatusCode.PERMISSION_DENIED, ending
            assert f"space {space_id}" in ending.details, ending.details
            assert session.received == [], "no snapshot"


@contract("canvas.v1.CanvasService/Collaborate", "PERMISSION_DENIED")
async def test_a_member_removed_during_the_session_has_it_ended_within_seconds(
    setup_transport: Transport, stack: StackEndpoints
) -> None:
    team = await new_team(setup_transport)
    async with (
        collaborate(stack.envoy_grpc, team.owner.access_token) as owner_session,
        collaborate(stack.envoy_grpc, team.editor.access_token) as editor_session,
    ):
        await owner_session.join(team.space_id)
        await editor_session.join(team.space_id)
        await remove_member(setup_transport, team.owner, team.space_id, team.editor.user_id)

        ending = await editor_session.ended_with(timeout_s=LOSS_OF_ACCESS_S)
        assert ending.code == grpc.StatusCode.PERMISSION_DENIED, ending
        assert team.space_id in ending.details, ending.details
        await owner_session.receive("presence_changed", presence_of(team.editor.user_id, left=True))


@contract("canvas.v1.CanvasService/Collaborate", "FAILED_PRECONDITION")
@pytest.mark.parametrize(
    "first",
    [
        pytest.param({"heartbeat": canvas_pb2.CollaborateRequest.Heartbeat()}, id="heartbeat"),
        pytest.param({"cursor_moved": CursorMoved(x=1, y=1)}, id="cursor_moved"),
        pytest.param({"client_request_id": "p1", "place_node": PlaceAction(label="Early")}, id="place_node"),
    ],
)
async def test_a_session_whose_first_message_is_not_join_is_ended(
    setup_transport: Transport, stack: StackEndpoints, first: dict[str, Any]
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    async with collaborate(stack.envoy_grpc, owner.access_token) as session:
        await session.send(**first)
        ending = await session.ended_with()
        assert ending.code == grpc.StatusCode.FAILED_PRECONDITION, ending
        assert "join" in ending.details, ending.details
        assert session.received == []
    assert (await get_canvas(setup_transport, owner, space.space_id)).canvas_version == 0, "nothing was placed"


# ---------------------------------------------------------- the WebSocket


async def test_collaborate_over_the_websocket_through_envoy_shares_changes_with_grpc_sessions(
    setup_transport: Transport, stack: StackEndpoints
) -> None:
    team = await new_team(setup_transport)
    node = (await place_node(setup_transport, team.owner, team.space_id, "Existing", 5, 5)).node
    async with (
        collaborate_over_websocket(stack, team.editor.access_token, carried_in="header") as editor_socket,
        collaborate_over_websocket(stack, team.viewer.access_token, carried_in="subprotocol") as viewer_socket,
        collaborate(stack.envoy_grpc, team.owner.access_token) as owner_session,
    ):
        snapshot = await editor_socket.join(team.space_id)
        assert (snapshot.space_id, list(snapshot.nodes), snapshot.canvas_version) == (team.space_id, [node], 1)
        assert [p.user_id for p in snapshot.presence] == [team.editor.user_id]
        await viewer_socket.join(team.space_id)
        await owner_session.join(team.space_id)
        sessions: tuple[Session, ...] = (editor_socket, viewer_socket, owner_session)

        await editor_socket.send(client_request_id="ws-1", place_node=PlaceAction(label="From a browser", x=7, y=8))
        placements = [await receive_change(session, 2) for session in sessions]
        assert all(change == placements[0] for change in placements), "the same message over both carriers"
        assert (placements[0].change_kind, placements[0].client_request_id) == (PLACED, "ws-1")
        assert (placements[0].node.label, placements[0].actor_user_id) == ("From a browser", team.editor.user_id)

        await owner_session.send(
            client_request_id="grpc-1", move_node=MoveAction(node_id=node.node_id, x=9, y=9, expected_version=1)
        )
        moves = [await receive_change(session, 3) for session in sessions]
        assert all(change == moves[0] for change in moves)
        assert (moves[0].change_kind, moves[0].client_request_id, moves[0].node.version) == (MOVED, "grpc-1", 2)


async def test_the_websocket_answers_a_refused_action_or_a_bad_frame_with_rejected_and_stays_open(
    setup_transport: Transport, stack: StackEndpoints
) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    async with collaborate_over_websocket(stack, owner.access_token) as socket:
        await socket.join(space.space_id)
        ghost = new_id()
        await socket.send(client_request_id="ghost", remove_node=RemoveAction(node_id=ghost, expected_version=1))
        assert ghost in (await receive_rejection(socket, "ghost", "NOT_FOUND")).message
        await socket.send(client_request_id="far", place_node=PlaceAction(x=2_000_000))
        assert "x" in (await receive_rejection(socket, "far", "INVALID_ARGUMENT")).message

        for frame in ("this is not JSON", '{"shout": {}}'):
            await socket.send_raw(frame)
            await receive_rejection(socket, "", "INVALID_ARGUMENT")

        await socket.send(client_request_id="fine", place_node=PlaceAction(label="Still open"))
        assert (await receive_change(socket, 1)).client_request_id == "fine"


async def test_the_websocket_closes_with_4403_when_a_non_member_joins_or_a_member_is_removed(
    setup_transport: Transport, stack: StackEndpoints
) -> None:
    """The bridge closes the socket with 4000 + the HTTP status of the code that ends the gRPC
    stream, and the reason "<CODE>: <message>" (services/canvas/websocket.py)."""
    team = await new_team(setup_transport)
    for space_id in (team.space_id, new_id()):
        async with collaborate_over_websocket(stack, team.outsider.access_token) as socket:
            await socket.send(join=Join(space_id=space_id))
            closed = await socket.closed_with()
            assert closed.code == 4403, closed
            assert closed.reason.startswith("PERMISSION_DENIED"), closed.reason
            assert socket.received == []

    async with collaborate_over_websocket(stack, team.outsider.access_token) as socket:
        await socket.send(join=Join(space_id="not-a-uuid"))
        closed = await socket.closed_with()
        assert (closed.code, closed.reason.split(":")[0]) == (4400, "INVALID_ARGUMENT"), closed

    async with collaborate_over_websocket(stack, team.editor.access_token) as socket:
        await socket.join(team.space_id)
        await remove_member(setup_transport, team.owner, team.space_id, team.editor.user_id)
        closed = await socket.closed_with(timeout_s=LOSS_OF_ACCESS_S)
        assert closed.code == 4403, closed
        assert closed.reason.startswith("PERMISSION_DENIED"), closed.reason
