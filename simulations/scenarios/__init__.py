"""Scenarios: named, repeatable runs against the stack (`python -m simulations run NAME`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from simulations.endpoints import StackEndpoints
from simulations.rundir import StackState

Scenario = Callable[[StackEndpoints], Coroutine[Any, Any, int]]


def registry() -> dict[str, Scenario]:
    from simulations.scenarios.smoke import smoke

    return {"smoke": smoke}


def run_scenario(name: str, state: StackState, platform_secret: str = "") -> int:
    scenarios = registry()
    if name not in scenarios:
        print(f"unknown scenario {name!r}; known: {', '.join(sorted(scenarios))}")
        return 2
    return asyncio.run(scenarios[name](StackEndpoints(state, platform_secret)))
