"""Every test in tests/system runs against the stack (started once per test run)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from fixtures.postgres import scratch_database
from services.kit.db import create_engine
from services.kit.kafka import EventProducer, new_producer
from services.kit.outbox import kit_metadata
from simulations.endpoints import StackEndpoints


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/system" in str(item.path):
            item.add_marker(pytest.mark.system)


@pytest.fixture
async def kit_engine(stack: StackEndpoints) -> AsyncIterator[AsyncEngine]:
    """An engine on a scratch database holding the kit's tables (outbox, processed events)."""
    async with scratch_database(stack.postgres_dsn(), prefix="kit") as dsn:
        engine = create_engine(dsn.replace("postgresql://", "postgresql+asyncpg://"), pool_size=2)
        async with engine.begin() as connection:
            await connection.run_sync(kit_metadata.create_all)
        yield engine
        await engine.dispose()


@pytest.fixture
async def event_producer(stack: StackEndpoints) -> AsyncIterator[EventProducer]:
    kafka = new_producer(stack.kafka_bootstrap, client_id="kit-tests")
    await kafka.start()
    yield EventProducer(kafka)
    await kafka.stop()
