"""Fixtures of the contract suites: the three transports through Envoy, a transport for
set-up steps, accounts, and logs of the events each service emits."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from clients.transports import ALL_TRANSPORTS, NATIVE_GRPC, Transport, transport_for
from fixtures.events import EventLog
from services.kit.events import topic_for
from simulations.endpoints import StackEndpoints


@pytest.fixture(scope="session", params=ALL_TRANSPORTS)
async def transport(request: pytest.FixtureRequest, stack: StackEndpoints) -> AsyncIterator[Transport]:
    """Each contract test runs once per transport: native gRPC, gRPC-Web and JSON via Envoy."""
    chosen = transport_for(request.param, stack.envoy_http, stack.envoy_grpc)
    yield chosen
    await chosen.aclose()


@pytest.fixture(scope="session")
async def setup_transport(stack: StackEndpoints) -> AsyncIterator[Transport]:
    """For arranging a test (sign-ups, spaces): native gRPC through Envoy."""
    chosen = transport_for(NATIVE_GRPC, stack.envoy_http, stack.envoy_grpc)
    yield chosen
    await chosen.aclose()


async def _event_log(stack: StackEndpoints, producer: str) -> AsyncIterator[EventLog]:
    log = EventLog(stack.kafka_bootstrap, topic_for(producer))
    await log.start()
    yield log
    await log.stop()


@pytest.fixture(scope="session")
async def auth_events(stack: StackEndpoints) -> AsyncIterator[EventLog]:
    async for log in _event_log(stack, "auth"):
        yield log


@pytest.fixture(scope="session")
async def knowledge_events(stack: StackEndpoints) -> AsyncIterator[EventLog]:
    async for log in _event_log(stack, "knowledge"):
        yield log


@pytest.fixture(scope="session")
async def chat_events(stack: StackEndpoints) -> AsyncIterator[EventLog]:
    async for log in _event_log(stack, "chat"):
        yield log


@pytest.fixture(scope="session")
async def canvas_events(stack: StackEndpoints) -> AsyncIterator[EventLog]:
    async for log in _event_log(stack, "canvas"):
        yield log


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "contracts/suites" in str(item.path):
            item.add_marker(pytest.mark.system)
