"""The coverage check of the contract suites.

For every RPC of every service the platform runs, there must be a contract test for success
("OK") and one for each error its proto documents; services not built yet are reported as
pending, by name.

    python -m contracts.coverage     prints the table; exits 1 when something is missing
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from dataclasses import dataclass, field

from contracts.registry import COVERED, documented_rpcs

SUITES_PACKAGE = "contracts.suites"


# --------------------------------------------------------------- coverage


@dataclass
class CoverageReport:
    missing: dict[str, set[str]] = field(default_factory=dict)  # rpc → outcomes without a test
    covered: dict[str, set[str]] = field(default_factory=dict)
    pending_services: list[str] = field(default_factory=list)  # not built yet

    @property
    def complete(self) -> bool:
        return not self.missing

    def render(self) -> str:
        lines = []
        for rpc in sorted({*self.covered, *self.missing}):
            gaps = self.missing.get(rpc, set())
            state = "ok " if not gaps else "GAP"
            detail = f"missing {', '.join(sorted(gaps))}" if gaps else ", ".join(sorted(self.covered.get(rpc, set())))
            lines.append(f"  {state} {rpc}: {detail}")
        lines.append(f"pending (not built yet): {', '.join(self.pending_services) or 'none'}")
        return "\n".join(lines)


def coverage(built_services: Iterable[str], covered: dict[str, set[str]]) -> CoverageReport:
    built = set(built_services)
    report = CoverageReport()
    services_in_contracts = {rpc.split("/")[0] for rpc in documented_rpcs()}
    report.pending_services = sorted(services_in_contracts - built)
    for rpc, outcomes in documented_rpcs().items():
        if rpc.split("/")[0] not in built:
            continue
        report.covered[rpc] = outcomes & covered.get(rpc, set())
        gaps = outcomes - covered.get(rpc, set())
        if gaps:
            report.missing[rpc] = gaps
    return report


def load_suites() -> dict[str, set[str]]:
    """Import every suite so its @contract declarations register."""
    package = importlib.import_module(SUITES_PACKAGE)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{SUITES_PACKAGE}.{module.name}")
    return COVERED


def built_grpc_services() -> list[str]:
    from simulations.platform import SERVICES

    return [name for service in SERVICES for name in service.grpc_services]


def main() -> int:
    report = coverage(built_grpc_services(), load_suites())
    print(report.render())
    return 0 if report.complete else 1


if __name__ == "__main__":
    raise SystemExit(main())
