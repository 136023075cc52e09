"""Traces are user actions: a background loop makes no trace of its own.

On a stack of its own (auth and knowledge, the receiver), nothing happens for a while: the
outbox relay polls every 2 s and auth reloads its keys every 2 s, and no trace may come of it.
Then a burst of user actions (each a call with no trace of its caller's): exactly one root
trace each, which the events they write join. (Before, the relay's polling queries were
~3,600 root traces in 40 s of load, beside ~4,600 user traces.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from clients.transports import NativeGrpc
from fixtures.accounts import sign_up
from fixtures.knowledge import create_space
from observability.clickhouse import connect
from services.api.knowledge.v1 import knowledge_pb2
from simulations.launcher import isolated_stack
from simulations.profiles import profile

CREATE_DOCUMENT = "knowledge.v1.KnowledgeService/CreateDocument"
IDLE_S = 60.0  # a minute: long enough for every periodic loop of the stack to run (the slowest polls every 2 s)
BURST = 20


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[dict[str, dict[str, str]]]:
    async with isolated_stack(profile("quiet-traces")) as endpoints:
        yield endpoints


async def flushed(endpoints: dict[str, dict[str, str]]) -> None:
    """Everything the services exported so far is written (they export every 200 ms)."""
    await asyncio.sleep(1.0)
    async with aiohttp.ClientSession() as session, session.post(f"{endpoints['otlp']['http']}/flush") as response:
        assert response.status == 200


def roots_between(endpoints: dict[str, dict[str, str]], began_ns: int, ended_ns: int) -> list[tuple[str, str, str]]:
    """(service, span name, kind) of every root span that started in the window."""
    client = connect(endpoints["clickhouse"]["http"])
    try:
        rows = client.query(
            "SELECT ServiceName, SpanName, SpanKind FROM otel.otel_traces WHERE ParentSpanId = '' "
            "AND Timestamp >= fromUnixTimestamp64Nano(%(began)s) AND Timestamp < fromUnixTimestamp64Nano(%(ended)s)",
            parameters={"began": began_ns, "ended": ended_ns},
        ).result_rows
    finally:
        client.close()
    return [(str(service), str(name), str(kind)) for service, name, kind in rows]


@pytest.mark.xdist_group("lifecycle")
async def test_an_idle_stack_makes_no_traces_and_a_burst_makes_one_per_action(
    stack: dict[str, dict[str, str]],
) -> None:
    auth, knowledge = NativeGrpc(stack["auth"]["grpc"]), NativeGrpc(stack["knowledge"]["grpc"])
    try:
        owner = await sign_up(auth)
        space = await create_space(knowledge, owner, "Quiet")
        await flushed(stack)

        idle_began = time.time_ns()
        await asyncio.sleep(IDLE_S)
        idle_ended = time.time_ns()

        burst_began = time.time_ns()
        for n in range(BURST):
            request = knowledge_pb2.CreateDocumentRequest(space_id=space.space_id, title=f"Note {n}", content="x")
            assert (
                await knowledge.unary("knowledge.v1.KnowledgeService/CreateDocument", request, token=owner.access_token)
            ).ok
        await flushed(stack)
        burst_ended = time.time_ns()
    finally:
        await auth.aclose()
        await knowledge.aclose()

    idle = roots_between(stack, idle_began, idle_ended)
    burst = roots_between(stack, burst_began, burst_ended)
    print(f"root traces: {len(idle)} in {IDLE_S:.0f} idle seconds, {len(burst)} for a burst of {BURST} actions")
    assert idle == [], f"background loops made traces of their own: {idle[:5]}"
    assert len(burst) == BURST, f"one root per action, the events joining it: {burst}"
    assert {(service, kind) for service, _, kind in burst} == {("knowledge", "Server")}
