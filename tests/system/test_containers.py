"""The compose stack, brought up by testcontainers, passes the same component checks as the
native one. Needs a Docker engine; without one it skips and says so."""

from __future__ import annotations

import pytest

from simulations.checks import CHECKS, run_check
from simulations.containers import compose_stack, docker_unavailable
from simulations.topology import PORT_OFFSET_ENV

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(docker_unavailable() is not None, reason=docker_unavailable() or ""),
]


async def test_compose_stack_serves_every_component() -> None:
    moved = {"KP_KAFKA_BROKER_PORT": "29092", PORT_OFFSET_ENV: "2000"}
    with compose_stack(moved) as stack:
        results = [await run_check(name, check, stack) for name, check in CHECKS.items() if stack.has(name)]
    failures = [f"{r.name}: {r.detail}" for r in results if not r.ok]
    assert failures == []
