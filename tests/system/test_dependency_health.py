"""Health follows hard dependencies, on a stack of its own: stopping PostgreSQL turns the
knowledge service NOT_SERVING while the vector service (which does not use PostgreSQL) keeps
serving; stopping Redis turns both NOT_SERVING (both keep access epochs there); each comes back to SERVING by
itself once the store is back, with no restart of the service. A peer is not a hard
dependency: with the knowledge service stopped the vector service keeps serving, and a search
that needs knowledge's answer is UNAVAILABLE (retry later), not an internal error."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.transports import NativeGrpc
from fixtures.accounts import sign_up
from fixtures.documents import eventually
from services.api.vector.v1 import vector_pb2
from simulations.launcher import Launcher, isolated_launcher
from simulations.profiles import profile

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# The monitor probes every second with a one-second timeout; a change shows within a few.
CHANGE_WITHIN_S = 15.0


async def health_of(launcher: Launcher, service: str) -> int:
    target = launcher.running[service].component.endpoints()["grpc"]
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(reply.status)


async def becomes(launcher: Launcher, service: str, status: int) -> None:
    async def reached() -> bool | None:
        return (await health_of(launcher, service) == status) or None

    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    await eventually(reached, f"{service} became {name}", timeout_s=CHANGE_WITHIN_S)


@pytest.mark.xdist_group("lifecycle")
async def test_health_is_not_serving_only_while_a_hard_dependency_is_down() -> None:
    async with isolated_launcher(profile("vector-restart")) as launcher:
        assert await health_of(launcher, "knowledge") == SERVING
        assert await health_of(launcher, "vector") == SERVING

        await launcher.stop_component("postgres")
        await becomes(launcher, "knowledge", NOT_SERVING)
        assert await health_of(launcher, "vector") == SERVING, "PostgreSQL is not the vector service's to need"
        await launcher.restart_component("postgres")
        await becomes(launcher, "knowledge", SERVING)

        await launcher.stop_component("redis")  # both keep access epochs there
        await becomes(launcher, "vector", NOT_SERVING)
        await becomes(launcher, "knowledge", NOT_SERVING)
        await launcher.restart_component("redis")
        await becomes(launcher, "vector", SERVING)
        await becomes(launcher, "knowledge", SERVING)


@pytest.mark.xdist_group("lifecycle")
async def test_a_peer_that_is_down_makes_calls_unavailable_and_its_callers_keep_serving() -> None:
    async with isolated_launcher(profile("vector-restart")) as launcher:
        auth = NativeGrpc(launcher.running["auth"].component.endpoints()["grpc"])
        vector = NativeGrpc(launcher.running["vector"].component.endpoints()["grpc"])
        try:
            reader = await sign_up(auth, "reader")  # never searched: the vector service must ask knowledge
            search = vector_pb2.SearchRequest(query="anything at all", top_k=5)
            await launcher.stop_component("knowledge")
            reply = await vector.unary("vector.v1.VectorService/Search", search, token=reader.access_token)
            assert reply.code == grpc.StatusCode.UNAVAILABLE, (reply.code, reply.details)
            assert reply.details == "a service this call needs is not answering right now; try again in a moment"
            assert await health_of(launcher, "vector") == SERVING, "a peer is not a hard dependency"

            await launcher.restart_component("knowledge")

            async def answered() -> bool | None:
                reply = await vector.unary("vector.v1.VectorService/Search", search, token=reader.access_token)
                return reply.ok or None

            await eventually(answered, "the search was answered once knowledge was back", timeout_s=CHANGE_WITHIN_S)
        finally:
            await auth.aclose()
            await vector.aclose()
