"""The smoke scenario: every component of the running stack exercised with a real client,
then a summary of what happened."""

from __future__ import annotations

from simulations.checks import CHECKS, CheckResult, run_check
from simulations.endpoints import StackEndpoints


async def smoke(stack: StackEndpoints) -> int:
    results = []
    for name, check in CHECKS.items():
        if stack.has(name):
            results.append(await run_check(name, check, stack))
    print(summary(results))
    return 0 if all(result.ok for result in results) else 1


def summary(results: list[CheckResult]) -> str:
    width = max(len(result.name) for result in results)
    lines = ["smoke: every component, through its own protocol"]
    for result in results:
        mark = "ok  " if result.ok else "FAIL"
        lines.append(f"  {mark} {result.name.ljust(width)}  {result.seconds * 1000:7.0f} ms  {result.detail}")
    passed = sum(result.ok for result in results)
    lines.append(f"{passed}/{len(results)} components passed")
    return "\n".join(lines)
