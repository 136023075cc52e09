"""The canvas use cases: read a canvas, place, move and remove nodes, list who is present.

Every change is computed from what the store holds now and committed with conditions
(services.canvas.repository): when another change in the space won the race for the next
canvas version the change is simply computed again; when the node itself changed, the caller
is told (ABORTED with the node as it is, or NOT_FOUND). Within one instance the changes of a
space are committed one at a time: every change of a space contends for its one counter, and
letting all of an instance's sessions race for it makes most attempts fail and retry, until
the store does little but refuse them. So only the instances race, and rarely. An accepted change is then broadcast to
every session of the space (services.canvas.collaboration) and its event leaves through the
outbox. Changes made here and through a Collaborate session are the same code.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
import weakref
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from services.canvas.domain import (
    Canvas,
    Change,
    ChangeKind,
    Node,
    Role,
    check_client_request_id,
    check_coordinate,
    check_current,
    check_expected_version,
    check_room,
    moved,
    placed,
    placement,
    removed,
    require_role,
    rolled_forward,
)
from services.canvas.live import Presence, Seen
from services.canvas.repository import CanvasMoved, CanvasRepository, NodeChangedMeanwhile
from services.canvas.wire import change_event
from services.kit.access import AccessCache
from services.kit.errors import Unavailable
from services.kit.ids import parse_id

log = logging.getLogger("services.canvas")

# Attempts at one change while other changes of the space keep winning the next version.
MAX_ATTEMPTS = 50


class CanvasService:
    def __init__(
        self,
        repository: CanvasRepository,
        access: AccessCache,
        presence: Presence,
        broadcast: Callable[[Change], Awaitable[None]],
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.repository = repository
        self.access = access
        self.presence = presence
        self.broadcast = broadcast
        self.on_commit = on_commit
        self.clock = clock
        self._writing: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def require(self, caller_id: str, space_id: str, needed: Role, action: str) -> int:
        """The caller's role in the space, when it is at least `needed`."""
        role = await self.access.role(caller_id, space_id)
        require_role(role, needed, action, space_id)
        return role

    # -- reads ---------------------------------------------------------------------------

    async def get_canvas(self, caller_id: str, space_id: str) -> Canvas:
        space_id = parse_id(space_id, "space_id")
        await self.require(caller_id, space_id, Role.VIEWER, "reading the canvas")
        return await self.snapshot(space_id)

    async def snapshot(self, space_id: str) -> Canvas:
        """Every node at one canvas version, read while changes may be committing."""
        before, _ = await self.repository.counter(space_id)
        nodes = await self.repository.nodes(space_id)
        after, _ = await self.repository.counter(space_id)
        return rolled_forward(space_id, nodes, after, await self.repository.changes(space_id, before, after))

    async def list_presence(self, caller_id: str, space_id: str) -> list[Seen]:
        space_id = parse_id(space_id, "space_id")
        await self.require(caller_id, space_id, Role.VIEWER, "seeing who is on the canvas")
        return await self.presence.present(space_id)

    # -- changes -------------------------------------------------------------------------

    async def place_node(
        self,
        caller_id: str,
        space_id: str,
        document_id: str,
        label: str,
        x: float,
        y: float,
        width: float,
        height: float,
        client_request_id: str = "",
    ) -> Change:
        space_id = parse_id(space_id, "space_id")
        document_id = parse_id(document_id, "document_id") if document_id.strip() else ""
        spot = placement(document_id, label, x, y, width, height)
        request_id = check_client_request_id(client_request_id)
        await self.require(caller_id, space_id, Role.EDITOR, "placing nodes")
        node_id = str(uuid.uuid4())

        async def attempt() -> Change:
            version, count = await self.repository.counter(space_id)
            check_room(count)
            node = placed(spot, space_id, node_id, caller_id, self.clock())
            change = Change(node, ChangeKind.PLACED, caller_id, version + 1, request_id)
            await self.repository.commit(change, (version, count), None, change_event(change, None))
            return change

        return await self._committed(space_id, attempt)

    async def move_node(
        self,
        caller_id: str,
        space_id: str,
        node_id: str,
        x: float,
        y: float,
        expected_version: int,
        client_request_id: str = "",
    ) -> Change:
        space_id, node_id = parse_id(space_id, "space_id"), parse_id(node_id, "node_id")
        x, y = check_coordinate(x, "x"), check_coordinate(y, "y")
        expected = check_expected_version(expected_version)
        request_id = check_client_request_id(client_request_id)
        await self.require(caller_id, space_id, Role.EDITOR, "moving nodes")

        async def attempt() -> Change:
            version, count, current = await self.repository.counter_and_node(space_id, node_id)
            node = check_current(current, node_id, space_id, expected)
            change = Change(
                moved(node, x, y, caller_id, self.clock()), ChangeKind.MOVED, caller_id, version + 1, request_id
            )
            await self.repository.commit(change, (version, count), expected, change_event(change, node))
            return change

        return await self._committed(space_id, attempt)

    async def remove_node(
        self, caller_id: str, space_id: str, node_id: str, expected_version: int, client_request_id: str = ""
    ) -> Change:
        space_id, node_id = parse_id(space_id, "space_id"), parse_id(node_id, "node_id")
        expected = check_expected_version(expected_version)
        request_id = check_client_request_id(client_request_id)
        await self.require(caller_id, space_id, Role.EDITOR, "removing nodes")

        async def attempt() -> Change:
            version, count, current = await self.repository.counter_and_node(space_id, node_id)
            node: Node = check_current(current, node_id, space_id, expected)
            change = Change(
                removed(node, caller_id, self.clock()), ChangeKind.REMOVED, caller_id, version + 1, request_id
            )
            await self.repository.commit(change, (version, count), expected, change_event(change, None))
            return change

        return await self._committed(space_id, attempt)

    async def _committed(self, space_id: str, attempt: Callable[[], Awaitable[Change]]) -> Change:
        """Run `attempt` until it commits, one change of the space at a time here; a lost race
        (with another instance) for the canvas version or for the node is computed again from
        what the store holds then."""
        lock = self._writing.get(space_id)
        if lock is None:
            lock = self._writing[space_id] = asyncio.Lock()
        async with lock:
            change = await self._retried(attempt)
            self.on_commit()
            try:
                # Still in turn: this instance publishes a space's changes in their order.
                await self.broadcast(change)
            except Exception:
                # Committed all the same: sessions find the change by its canvas version.
                log.warning("change %d of space %s not broadcast", change.canvas_version, space_id)
        return change

    async def _retried(self, attempt: Callable[[], Awaitable[Change]]) -> Change:
        for tries in range(MAX_ATTEMPTS):
            try:
                return await attempt()
            except (CanvasMoved, NodeChangedMeanwhile):
                # Exponential backoff with full jitter: racing instances do not collide again at once.
                await asyncio.sleep(random.uniform(0, min(0.05, 0.002 * 2**tries)))
        raise Unavailable(
            f"the canvas is changing too fast to apply this change after {MAX_ATTEMPTS} attempts; try again"
        )
