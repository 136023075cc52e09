"""Canvas values as protobuf messages: what gRPC and WebSocket clients receive, what travels
between instances over Redis, and the events on canvas.events.v1."""

from __future__ import annotations

from services.api.canvas.v1 import canvas_pb2
from services.api.events.v1 import events_pb2
from services.canvas.domain import Change, ChangeKind, Node
from services.kit.events import EventEnvelope, new_envelope
from services.kit.protos import timestamp

Response = canvas_pb2.CollaborateResponse


def node_message(node: Node) -> canvas_pb2.Node:
    return canvas_pb2.Node(
        node_id=node.node_id,
        space_id=node.space_id,
        document_id=node.document_id,
        label=node.label,
        x=node.x,
        y=node.y,
        width=node.width,
        height=node.height,
        version=node.version,
        updated_by=node.updated_by,
        updated_at=timestamp(node.updated_at),
    )


def node_changed(change: Change) -> Response:
    return Response(
        node_changed=Response.NodeChanged(
            node=node_message(change.node),
            change_kind=canvas_pb2.ChangeKind.ValueType(int(change.kind)),
            actor_user_id=change.actor_user_id,
            canvas_version=change.canvas_version,
            client_request_id=change.client_request_id,
        )
    )


def change_event(change: Change, previous: Node | None) -> EventEnvelope:
    """The canvas.node.* event of a change (`previous`: the node before a move)."""
    node = change.node
    payload: events_pb2.NodePlaced | events_pb2.NodeMoved | events_pb2.NodeRemoved
    if change.kind is ChangeKind.PLACED:
        payload = events_pb2.NodePlaced(
            space_id=node.space_id,
            node_id=node.node_id,
            document_id=node.document_id,
            label=node.label,
            x=node.x,
            y=node.y,
            width=node.width,
            height=node.height,
            version=node.version,
            canvas_version=change.canvas_version,
        )
    elif change.kind is ChangeKind.MOVED:
        payload = events_pb2.NodeMoved(
            space_id=node.space_id,
            node_id=node.node_id,
            x=node.x,
            y=node.y,
            previous_x=previous.x if previous else 0.0,
            previous_y=previous.y if previous else 0.0,
            version=node.version,
            canvas_version=change.canvas_version,
        )
    else:
        payload = events_pb2.NodeRemoved(
            space_id=node.space_id,
            node_id=node.node_id,
            document_id=node.document_id,
            version=node.version,
            canvas_version=change.canvas_version,
        )
    return new_envelope(
        event_type=change.kind.event_type,
        payload=payload,
        producer="canvas",
        partition_key=node.space_id,
        subject_ids={"space_id": node.space_id, "node_id": node.node_id},
        actor_user_id=change.actor_user_id,
        occurred_at=node.updated_at,
    )
