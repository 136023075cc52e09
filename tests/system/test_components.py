"""Every component of the stack answers a real client over its own protocol: one test per
row of the checks table (adding a component adds a row, and so a test)."""

from __future__ import annotations

import pytest

from simulations.checks import CHECKS, run_check
from simulations.endpoints import StackEndpoints


@pytest.mark.parametrize("component", list(CHECKS))
async def test_component_serves_a_real_client(stack: StackEndpoints, component: str) -> None:
    result = await run_check(component, CHECKS[component], stack)
    assert result.ok, f"{component}: {result.detail}"
