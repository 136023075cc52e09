"""The canvas domain: nodes, their limits and versions, changes, and the rules a session
follows to deliver every change once and in order. Pure: no I/O.

Two versions keep collaborators consistent (see canvas.proto): each node's own version, for
optimistic concurrency (`expected_version`), and the canvas version, +1 on every accepted
change in the space, with no gaps, so a session can tell a missed change from a duplicate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import IntEnum

from services.kit.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.kit.text import reject_nul, trimmed_text

MAX_NODES = 5000
COORDINATE_LIMIT = 1_000_000.0
SIZE_LIMIT = 100_000.0
DEFAULT_WIDTH, DEFAULT_HEIGHT = 200.0, 100.0
LABEL_MAX = 200
CLIENT_REQUEST_ID_MAX = 64
# Presence: a session that sent nothing for this long no longer makes its user present.
PRESENCE_TIMEOUT_S = 30.0
# Cursor moves broadcast per session, at most (the rest are coalesced into the latest).
CURSOR_MOVES_PER_S = 20


class Role(IntEnum):
    """The knowledge proto's Role numbers (the access cache's answer)."""

    VIEWER = 1
    EDITOR = 2
    OWNER = 3


class ChangeKind(IntEnum):
    """canvas.v1.ChangeKind's numbers."""

    PLACED = 1
    MOVED = 2
    REMOVED = 3

    @property
    def event_type(self) -> str:
        return f"canvas.node.{self.name.lower()}"


@dataclass(frozen=True)
class Node:
    node_id: str
    space_id: str
    document_id: str
    label: str
    x: float
    y: float
    width: float
    height: float
    version: int
    updated_by: str
    updated_at: datetime


@dataclass(frozen=True)
class Change:
    """An accepted change: the node after it (for a removal its last state, version bumped)."""

    node: Node
    kind: ChangeKind
    actor_user_id: str
    canvas_version: int
    client_request_id: str = ""


@dataclass(frozen=True)
class Canvas:
    """A space's nodes at one canvas version."""

    space_id: str
    nodes: Mapping[str, Node]
    canvas_version: int

    def ordered_nodes(self) -> list[Node]:
        return [self.nodes[node_id] for node_id in sorted(self.nodes)]


# ------------------------------------------------------------------ limits


def check_coordinate(value: float, field: str) -> float:
    if not math.isfinite(value) or abs(value) > COORDINATE_LIMIT:
        raise InvalidArgument(field, f"must be a finite number in -1000000..1000000, got {value}")
    return float(value)


def check_size(value: float, field: str, default: float) -> float:
    """A width or height: 0 means the default, otherwise greater than 0 and at most 100000."""
    if value == 0:
        return default
    if not math.isfinite(value) or not 0 < value <= SIZE_LIMIT:
        raise InvalidArgument(field, f"must be greater than 0 and at most 100000 (0 for the default), got {value}")
    return float(value)


def check_label(raw: str) -> str:
    return trimmed_text(raw, "label", 0, LABEL_MAX)


def check_expected_version(value: int) -> int:
    if value < 1:
        raise InvalidArgument("expected_version", f"must be ≥ 1 (the node version you last saw), got {value}")
    return value


def check_client_request_id(value: str) -> str:
    """0–64 characters, not trimmed (the client's own token, echoed as it was sent)."""
    reject_nul(value, "client_request_id")
    if len(value) > CLIENT_REQUEST_ID_MAX:
        raise InvalidArgument(
            "client_request_id", f"must be at most {CLIENT_REQUEST_ID_MAX} characters, got {len(value)}"
        )
    return value


@dataclass(frozen=True)
class Placement:
    """A node to place, checked."""

    document_id: str
    label: str
    x: float
    y: float
    width: float
    height: float


def placement(document_id: str, label: str, x: float, y: float, width: float, height: float) -> Placement:
    """`document_id` arrives already parsed (or empty)."""
    return Placement(
        document_id=document_id,
        label=check_label(label),
        x=check_coordinate(x, "x"),
        y=check_coordinate(y, "y"),
        width=check_size(width, "width", DEFAULT_WIDTH),
        height=check_size(height, "height", DEFAULT_HEIGHT),
    )


# ------------------------------------------------------------------ rules


def require_role(role: int, needed: Role, action: str, space_id: str) -> None:
    """A non-member and a space that does not exist get the same answer."""
    if role < Role.VIEWER:
        raise PermissionDenied(
            f"you are not a member of space {space_id}, or it does not exist; ask one of its owners to add you"
        )
    if role < needed:
        raise PermissionDenied(
            f"{action} needs the editor role or higher in space {space_id}; your role is {Role(role).name.lower()}"
        )


def check_room(node_count: int) -> None:
    if node_count >= MAX_NODES:
        raise FailedPrecondition(f"the canvas already holds {MAX_NODES} nodes, its maximum; remove some first")


def no_such_node(node_id: str, space_id: str) -> NotFound:
    return NotFound(f"no node {node_id} on the canvas of space {space_id} (never placed, or removed)")


class StaleVersion(Conflict):
    """expected_version is not the node's current version; carries the node as it is."""

    def __init__(self, current: Node, expected_version: int) -> None:
        super().__init__(
            f"node {current.node_id} is at version {current.version}, not {expected_version}: "
            "someone changed it; apply their change and retry"
        )
        self.current = current


def check_current(node: Node | None, node_id: str, space_id: str, expected_version: int) -> Node:
    if node is None:
        raise no_such_node(node_id, space_id)
    if node.version != expected_version:
        raise StaleVersion(node, expected_version)
    return node


def placed(spot: Placement, space_id: str, node_id: str, actor: str, now: datetime) -> Node:
    return Node(
        node_id=node_id,
        space_id=space_id,
        document_id=spot.document_id,
        label=spot.label,
        x=spot.x,
        y=spot.y,
        width=spot.width,
        height=spot.height,
        version=1,
        updated_by=actor,
        updated_at=now,
    )


def moved(node: Node, x: float, y: float, actor: str, now: datetime) -> Node:
    return replace(node, x=x, y=y, version=node.version + 1, updated_by=actor, updated_at=now)


def removed(node: Node, actor: str, now: datetime) -> Node:
    """The node's last state, its version bumped (what the removal reports)."""
    return replace(node, version=node.version + 1, updated_by=actor, updated_at=now)


# ------------------------------------------------------------------ consistency


def apply(nodes: dict[str, Node], change: Change) -> None:
    """Apply a change to a map of nodes unless the map already holds that node's state or a
    later one (node versions only grow, and a removed node's id never returns)."""
    current = nodes.get(change.node.node_id)
    if current is not None and current.version >= change.node.version:
        return
    if change.kind is ChangeKind.REMOVED:
        nodes.pop(change.node.node_id, None)
    elif current is not None or change.kind is ChangeKind.PLACED:
        nodes[change.node.node_id] = change.node


def rolled_forward(space_id: str, read: Iterable[Node], at: int, changes: Iterable[Change]) -> Canvas:
    """A consistent canvas at version `at` from nodes read while changes were committing.

    Every change the read saw is ≤ `at` (the counter was read after the nodes), and `changes`
    holds every change since the counter read before the nodes; applying them by node version
    gives exactly the state at `at` (a node read before its removal committed goes: the
    removal carries a higher version than the read's copy)."""
    nodes = {node.node_id: node for node in read}
    for change in sorted(changes, key=lambda change: change.canvas_version):
        apply(nodes, change)
    return Canvas(space_id, nodes, at)


@dataclass
class Sequencer:
    """A session's place in the space's change stream: what to do with the next change."""

    delivered: int  # the canvas version the session has seen up to

    def classify(self, canvas_version: int) -> str:
        """ "next" (deliver it), "old" (already delivered: drop it) or "gap" (fetch the
        missing ones, `delivered + 1` .. `canvas_version - 1`, first)."""
        if canvas_version <= self.delivered:
            return "old"
        if canvas_version == self.delivered + 1:
            return "next"
        return "gap"


@dataclass
class CursorThrottle:
    """At most `per_second` cursor broadcasts per session; moves in between are coalesced
    into the latest, which goes out when the interval ends."""

    per_second: float = CURSOR_MOVES_PER_S
    last_sent_at: float = float("-inf")

    @property
    def interval_s(self) -> float:
        return 1.0 / self.per_second

    def wait_s(self, now: float) -> float:
        """0 when a move may go out now; else how long until one may."""
        return max(0.0, self.last_sent_at + self.interval_s - now)

    def sent(self, now: float) -> None:
        self.last_sent_at = now
