"""services.kit.health: a dependency is down when its probe fails or is slow, and the monitor
reports each change of state once."""

from __future__ import annotations

import asyncio

from services.kit.health import Dependency, DependencyMonitor, unavailable

NAMES = ("postgres", "redis", "index")


class Switch:
    """A probe that answers, fails or hangs as told."""

    def __init__(self) -> None:
        self.state = "up"
        self.calls = 0

    async def probe(self) -> None:
        self.calls += 1
        if self.state == "down":
            raise ConnectionRefusedError("connection refused")
        if self.state == "hung":
            await asyncio.sleep(60)


async def test_a_failing_or_slow_probe_names_its_dependency() -> None:
    postgres, redis, index = Switch(), Switch(), Switch()
    dependencies = [
        Dependency("postgres", postgres.probe),
        Dependency("redis", redis.probe),
        Dependency("index", index.probe),
    ]
    assert await unavailable(dependencies, timeout_s=0.05) == []
    postgres.state, index.state = "down", "hung"
    assert await unavailable(dependencies, timeout_s=0.05) == ["postgres", "index"]


async def test_the_monitor_reports_each_change_once() -> None:
    postgres, redis = Switch(), Switch()
    changes: list[bool] = []

    async def on_change(up: bool) -> None:
        changes.append(up)

    monitor = DependencyMonitor(
        [Dependency("postgres", postgres.probe), Dependency("redis", redis.probe)], on_change, timeout_s=0.05
    )
    await monitor.check()
    assert changes == [], "all up from the start: nothing to report"
    postgres.state = "down"
    await monitor.check()
    redis.state = "hung"
    await monitor.check()
    assert changes == [False]
    assert monitor.down == ["postgres", "redis"]
    postgres.state = "up"
    await monitor.check()
    assert changes == [False], "redis is still down"
    redis.state = "up"
    await monitor.check()
    assert changes == [False, True]
    assert monitor.down == []


async def test_a_service_without_hard_dependencies_runs_no_probes() -> None:
    async def on_change(up: bool) -> None:
        raise AssertionError("nothing to report")

    await asyncio.wait_for(DependencyMonitor([], on_change).run(), timeout=1)
