"""Serving health from hard dependencies: NOT_SERVING only while one of them is down.

A service names its hard dependencies (the stores it cannot answer without: its PostgreSQL
database, Redis where access or idempotency lives there) with a probe each. Peers and Kafka are
not among them: a peer is asked when a call needs it (its absence answers that call UNAVAILABLE
and the next call asks again), and Kafka's absence delays events (the outbox keeps them)
without failing calls. `DependencyMonitor` probes every `interval_s`; a
dependency is down when its probe fails or takes longer than `timeout_s`, and the service's
health follows: NOT_SERVING while any is down, SERVING again when all answer. Each change is
logged once, naming what is down. Probes make no spans: an idle service makes no traces.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.telemetry import untraced

log = logging.getLogger("services.kit.health")


@dataclass(frozen=True)
class Dependency:
    """A store the service cannot answer without, and how to ask it whether it is there."""

    name: str
    probe: Callable[[], Awaitable[object]]


def postgres_dependency(engine: AsyncEngine, name: str = "postgres") -> Dependency:
    async def probe() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    return Dependency(name, probe)


def redis_dependency(redis: aioredis.Redis, name: str = "redis") -> Dependency:
    async def probe() -> None:
        await redis.ping()

    return Dependency(name, probe)


async def unavailable(dependencies: Sequence[Dependency], timeout_s: float) -> list[str]:
    """Names of the dependencies whose probe fails or does not answer within `timeout_s`."""

    async def answers(dependency: Dependency) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await dependency.probe()
        except Exception:
            return False
        return True

    results = await asyncio.gather(*(answers(dependency) for dependency in dependencies))
    return [dependency.name for dependency, ok in zip(dependencies, results, strict=True) if not ok]


class DependencyMonitor:
    """Probes the dependencies and calls `on_change(all_up)` when the answer changes."""

    def __init__(
        self,
        dependencies: Sequence[Dependency],
        on_change: Callable[[bool], Awaitable[None]],
        *,
        interval_s: float = 1.0,
        timeout_s: float = 1.0,
    ) -> None:
        self.dependencies = list(dependencies)
        self.on_change = on_change
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.down: list[str] = []

    async def check(self) -> None:
        """Probe once; report a change of state."""
        with untraced():
            down = await unavailable(self.dependencies, self.timeout_s)
        changed = bool(down) != bool(self.down)
        self.down = down
        if not changed:
            return
        if down:
            log.warning("NOT_SERVING: %s unavailable", ", ".join(down))
        else:
            log.warning("SERVING again: every hard dependency answers")
        await self.on_change(not down)

    async def run(self) -> None:
        """Check every `interval_s` until cancelled."""
        if not self.dependencies:
            return
        while True:
            await self.check()
            await asyncio.sleep(self.interval_s)
