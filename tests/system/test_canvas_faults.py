"""Collaboration through faults, on a stack of its own (profile canvas-faults):

- kill -9 of one canvas instance mid-session: its sessions end, their clients join again
  through Envoy (onto the instance that is left), nothing accepted is lost, and the sessions
  on the other instance go on receiving every change in order;
- a Redis restart: changes keep committing meanwhile, and every session ends up with every
  change once and in order (missed broadcasts are read back from the store);
- a client that stops reading does not hold up the others: they receive every change
  without waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest

from clients.canvas import Collaborator, NodeChanged
from clients.transports import NativeGrpc, Transport
from fixtures.accounts import Account, sign_up
from fixtures.knowledge import create_space
from services.api.canvas.v1 import canvas_pb2, canvas_pb2_grpc
from simulations.launcher import Launcher, isolated_launcher
from simulations.profiles import profile

GET_CANVAS = "canvas.v1.CanvasService/GetCanvas"
STALLED_CHANGES = 100


@dataclass
class Stage:
    launcher: Launcher
    envoy: Transport
    owner: Account
    space_id: str
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)

    def channel(self, component: str) -> grpc.aio.Channel:
        """A channel to Envoy ("envoy") or to one canvas instance directly."""
        if component not in self.channels:
            endpoints = self.launcher.running[component].component.endpoints()
            self.channels[component] = grpc.aio.insecure_channel(endpoints["grpc"])
        return self.channels[component]

    async def join(self, component: str) -> Collaborator:
        return await Collaborator.join(self.channel(component), self.owner.access_token, self.space_id)

    async def canvas(self) -> canvas_pb2.GetCanvasResponse:
        reply = (
            await self.envoy.unary(
                GET_CANVAS, canvas_pb2.GetCanvasRequest(space_id=self.space_id), token=self.owner.access_token
            )
        ).unwrap()
        assert isinstance(reply, canvas_pb2.GetCanvasResponse)
        return reply


@pytest.fixture(scope="module")
async def launcher() -> AsyncIterator[Launcher]:
    async with isolated_launcher(profile("canvas-faults")) as running:
        yield running


@pytest.fixture
async def stage(launcher: Launcher) -> AsyncIterator[Stage]:
    envoy = NativeGrpc(launcher.running["envoy"].component.endpoints()["grpc"])
    owner = await sign_up(envoy, "owner")
    space_id = (await create_space(envoy, owner, "Faults")).space_id
    stage = Stage(launcher, envoy, owner, space_id)
    yield stage
    await envoy.aclose()
    for channel in stage.channels.values():
        await channel.close()


async def keep_editing(session: Collaborator, accepted: list[int], until: float, rng: random.Random) -> None:
    """Place and move nodes, one action at a time, recording the canvas versions accepted,
    until the time is up or the session ends."""
    while time.monotonic() < until and session.status is None:
        nodes = list(session.nodes.values())
        try:
            if not nodes or rng.random() < 0.2:
                request_id = await session.place("note", rng.uniform(0, 100), rng.uniform(0, 100))
            else:
                node = rng.choice(nodes)
                request_id = await session.move(node.node_id, rng.uniform(0, 100), rng.uniform(0, 100), node.version)
            outcome = await session.outcome(request_id, timeout_s=5)
        except (TimeoutError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return  # the session's instance went away mid-action: its outcome is unknown
        if isinstance(outcome, NodeChanged):
            accepted.append(outcome.canvas_version)
        await asyncio.sleep(rng.uniform(0.02, 0.08))


def assert_every_change_once_in_order(session: Collaborator, through: int, name: str) -> None:
    received = [arrival.canvas_version for arrival in session.arrivals]
    assert received == list(range(session.snapshot_version + 1, through + 1)), f"{name}: {received}"


@pytest.mark.xdist_group("lifecycle")
async def test_a_killed_instance_loses_nothing_accepted_and_its_clients_come_back(stage: Stage) -> None:
    survivors = [await stage.join("canvas-2") for _ in range(2)]
    doomed = [await stage.join("canvas") for _ in range(2)]
    accepted: list[int] = []
    until = time.monotonic() + 6
    editors = [
        asyncio.create_task(keep_editing(session, accepted, until, random.Random(n)))
        for n, session in enumerate([*survivors, *doomed])
    ]
    await asyncio.sleep(2)
    process = stage.launcher.running["canvas"].process
    process.kill()  # SIGKILL: no drain, no goodbye
    process.wait(timeout=10)

    # The killed instance's clients see their streams end, and join again through Envoy,
    # which now finds only the instance that is left.
    for session in doomed:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await session.close()
        assert session.status is not None
    rejoined = []
    for _ in doomed:
        deadline = time.monotonic() + 20
        while True:
            try:
                rejoined.append(await stage.join("envoy"))
                break
            except (AssertionError, grpc.aio.AioRpcError):
                assert time.monotonic() < deadline, "no instance took the session back within 20 s"
                await asyncio.sleep(0.2)
    editors += [
        asyncio.create_task(keep_editing(session, accepted, until + 2, random.Random(10 + n)))
        for n, session in enumerate(rejoined)
    ]
    await asyncio.gather(*editors)

    canvas = await stage.canvas()
    for session in [*survivors, *rejoined]:
        await session.until_version(canvas.canvas_version)
    assert set(accepted) <= set(range(1, canvas.canvas_version + 1))
    assert len(accepted) == len(set(accepted)), "two changes were accepted at one canvas version"
    for n, session in enumerate(survivors):
        assert_every_change_once_in_order(session, canvas.canvas_version, f"survivor {n}")
    for n, session in enumerate(rejoined):
        assert_every_change_once_in_order(session, canvas.canvas_version, f"rejoined {n}")
        assert session.nodes == {node.node_id: node for node in canvas.nodes}
    for session in [*survivors, *rejoined]:
        await session.close()
    await stage.launcher.stop_component("canvas")
    await stage.launcher.restart_component("canvas")


@pytest.mark.xdist_group("lifecycle")
async def test_sessions_get_every_change_across_a_redis_restart(stage: Stage) -> None:
    sessions = [await stage.join(instance) for instance in ("canvas", "canvas-2", "canvas", "canvas-2")]
    accepted: list[int] = []
    until = time.monotonic() + 8
    editors = [
        asyncio.create_task(keep_editing(session, accepted, until, random.Random(20 + n)))
        for n, session in enumerate(sessions)
    ]
    await asyncio.sleep(2)
    await stage.launcher.stop_component("redis")
    await asyncio.sleep(2)
    await stage.launcher.restart_component("redis")
    await asyncio.gather(*editors)

    canvas = await stage.canvas()
    assert len(accepted) >= 20, f"only {len(accepted)} changes were accepted around the restart"
    for n, session in enumerate(sessions):
        assert session.status is None, f"session {n} ended: {session.status} {session.details}"
        await session.until_version(canvas.canvas_version, timeout_s=15)
        assert_every_change_once_in_order(session, canvas.canvas_version, f"session {n}")
        assert session.nodes == {node.node_id: node for node in canvas.nodes}
        await session.close()


@pytest.mark.xdist_group("lifecycle")
async def test_a_client_that_stops_reading_slows_no_one(stage: Stage) -> None:
    """One client joins and never reads again; meanwhile every change still reaches a
    session on the other instance promptly. (Its transport absorbs what it is sent until its
    window is full; then its session's queue fills and the session is ended, as
    tests/unit/test_canvas_sessions.py shows.)"""
    stub = canvas_pb2_grpc.CanvasServiceStub(stage.channel("canvas"))
    stalled = stub.Collaborate(metadata=[("authorization", f"Bearer {stage.owner.access_token}")])
    await stalled.write(canvas_pb2.CollaborateRequest(join=canvas_pb2.CollaborateRequest.Join(space_id=stage.space_id)))
    readers = [await stage.join(instance) for instance in ("canvas", "canvas-2")]
    placed = await readers[0].outcome(await readers[0].place("x" * 200, 1, 1))
    assert isinstance(placed, NodeChanged)
    latest, delays = placed.node, []
    for step in range(STALLED_CHANGES):
        began = time.monotonic()
        outcome = await readers[0].outcome(await readers[0].move(latest.node_id, step, step, latest.version))
        assert isinstance(outcome, NodeChanged)
        latest = outcome.node
        await readers[1].until_version(outcome.canvas_version, timeout_s=5)
        delays.append(time.monotonic() - began)
    stalled.cancel()
    delays.sort()
    assert delays[len(delays) // 2] < 0.5, f"median {delays[len(delays) // 2]:.2f} s to reach the other instance"
    assert delays[-1] < 2.0, f"a change took {delays[-1]:.2f} s to reach the other instance's session"
    for session in readers:
        assert session.status is None
        await session.close()
