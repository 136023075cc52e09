"""Collaboration converges: 20 sessions, half on each canvas instance, place, move and remove
nodes at random for 10 s, often on the same nodes at once.

Traffic runs once (module fixture); then each assertion reads what it recorded:
- every session's canvas equals GetCanvas, at the same canvas version;
- every session received every accepted change once, in canvas-version order, from its
  snapshot on (the instance that accepted a change is not the one that delivered it to half
  of them: Redis carries it across);
- every action got exactly one answer: its node_changed, or `rejected`; an ABORTED one holds
  the node as it was then, at a newer version than the stale one sent;
- the canvas version equals the number of accepted changes (no gaps, nothing counted twice).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest

from clients.canvas import Collaborator, Outcome, Rejected
from clients.transports import Transport, transport_for
from fixtures.accounts import Account, sign_up
from fixtures.knowledge import EDITOR, add_member, create_space
from services.api.canvas.v1 import canvas_pb2
from simulations.endpoints import StackEndpoints

SESSIONS = 20
SECONDS = 10.0
INSTANCES = ("canvas", "canvas-2")


@dataclass
class Sent:
    session: int
    kind: str
    node_id: str
    expected_version: int
    outcome: Outcome | None = None


@dataclass
class Run:
    space_id: str
    sessions: list[Collaborator]
    sent: list[Sent] = field(default_factory=list)
    canvas: canvas_pb2.GetCanvasResponse | None = None


async def act(index: int, session: Collaborator, run: Run, until: float, rng: random.Random) -> None:
    """A user at work: one action at a time, on whatever this session currently sees."""
    while time.monotonic() < until:
        nodes = list(session.nodes.values())
        roll = rng.random()
        if not nodes or (roll < 0.2 and len(nodes) < 30):
            request_id = await session.place(f"idea {index}", rng.uniform(-500, 500), rng.uniform(-500, 500))
            sent = Sent(index, "place", "", 0)
        else:
            node = rng.choice(nodes)
            # Sometimes deliberately stale: a version this session already saw pass.
            version = node.version - 1 if node.version > 1 and rng.random() < 0.1 else node.version
            if roll < 0.85:
                request_id = await session.move(node.node_id, rng.uniform(-500, 500), rng.uniform(-500, 500), version)
                sent = Sent(index, "move", node.node_id, version)
            else:
                request_id = await session.remove(node.node_id, version)
                sent = Sent(index, "remove", node.node_id, version)
        sent.outcome = await session.outcome(request_id)
        run.sent.append(sent)
        await asyncio.sleep(rng.uniform(0.02, 0.1))


@pytest.fixture(scope="module")
async def setup(stack: StackEndpoints) -> AsyncIterator[Transport]:
    transport = transport_for("grpc", stack.envoy_http, stack.envoy_grpc)
    yield transport
    await transport.aclose()


@pytest.fixture(scope="module")
async def run(stack: StackEndpoints, setup: Transport) -> AsyncIterator[Run]:
    owner = await sign_up(setup, "owner")
    space_id = (await create_space(setup, owner, "Whiteboard")).space_id
    editors: list[Account] = [owner]
    for _ in range(4):
        editor = await sign_up(setup, "editor")
        await add_member(setup, owner, space_id, editor.user_id, EDITOR)
        editors.append(editor)
    channels = [grpc.aio.insecure_channel(stack.of(instance)["grpc"]) for instance in INSTANCES]
    sessions = [
        await Collaborator.join(channels[index % 2], editors[index % len(editors)].access_token, space_id)
        for index in range(SESSIONS)
    ]
    recorded = Run(space_id, sessions)
    until = time.monotonic() + SECONDS
    await asyncio.gather(*(act(n, s, recorded, until, random.Random(n)) for n, s in enumerate(sessions)))
    reply = await setup.unary(
        "canvas.v1.CanvasService/GetCanvas", canvas_pb2.GetCanvasRequest(space_id=space_id), token=owner.access_token
    )
    canvas = reply.unwrap()
    assert isinstance(canvas, canvas_pb2.GetCanvasResponse)
    recorded.canvas = canvas
    await asyncio.gather(*(session.until_version(canvas.canvas_version) for session in sessions))
    yield recorded
    for session in sessions:
        await session.close()
    for channel in channels:
        await channel.close()


def accepted(run: Run) -> list[Sent]:
    return [sent for sent in run.sent if not isinstance(sent.outcome, Rejected)]


def test_the_run_had_traffic_and_conflicts(run: Run) -> None:
    """The positive control: enough changes went through, and enough collided, for the
    assertions below to mean something."""
    refused = [sent for sent in run.sent if isinstance(sent.outcome, Rejected)]
    assert len(accepted(run)) >= 100, f"only {len(accepted(run))} changes were accepted in {SECONDS:.0f} s"
    assert {r.outcome.code for r in refused if isinstance(r.outcome, Rejected)} >= {"ABORTED"}


def test_every_session_ends_with_the_stored_canvas(run: Run) -> None:
    assert run.canvas is not None
    stored = {node.node_id: node for node in run.canvas.nodes}
    for index, session in enumerate(run.sessions):
        assert session.canvas_version == run.canvas.canvas_version, f"session {index}"
        assert session.nodes == stored, f"session {index} differs from GetCanvas"


def test_every_session_received_every_change_once_and_in_order(run: Run) -> None:
    assert run.canvas is not None
    for index, session in enumerate(run.sessions):
        received = [arrival.canvas_version for arrival in session.arrivals]
        expected = list(range(session.snapshot_version + 1, run.canvas.canvas_version + 1))
        assert received == expected, f"session {index}: {len(received)} changes, not the {len(expected)} in order"


def test_every_refused_action_was_told_why_with_the_current_node(run: Run) -> None:
    for sent in run.sent:
        outcome = sent.outcome
        if not isinstance(outcome, Rejected):
            continue
        assert outcome.code in ("ABORTED", "NOT_FOUND"), f"{sent.kind}: {outcome.code} {outcome.message}"
        if outcome.code == "ABORTED":
            assert outcome.current_node.node_id == sent.node_id
            assert outcome.current_node.version > sent.expected_version


def test_the_canvas_version_counts_the_accepted_changes(run: Run) -> None:
    assert run.canvas is not None
    assert run.canvas.canvas_version == len(accepted(run))
    assert sorted(sent.outcome.canvas_version for sent in accepted(run)) == list(  # type: ignore[union-attr]
        range(1, run.canvas.canvas_version + 1)
    )
