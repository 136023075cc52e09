"""Which RPCs the contract suites cover, against what the protos document.

Every contract test declares the RPC it exercises and the outcome it checks:

    @contract("knowledge.v1.KnowledgeService/UpdateDocument", "ABORTED")
    async def test_a_stale_version_is_a_conflict(transport, ...): ...

The descriptor set (with source comments) says, for each RPC, the errors its comment lists
under "Errors:". The coverage check requires, for every RPC of every service the platform
runs, a test for success ("OK") and one for each documented error; services not built yet
are reported as pending, by name.

    python -m contracts.coverage     prints the table; exits 1 when something is missing
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import descriptor_pb2

from contracts.generate import DESCRIPTOR_NAME, OUTPUT_DIR

SUITES_PACKAGE = "contracts.suites"
STATUS_NAMES = frozenset(code.name for code in grpc.StatusCode)
ERRORS_BLOCK = re.compile(r"Errors:(.*)", re.DOTALL)
ERROR_LINE = re.compile(r"^\s*([A-Z][A-Z_]+)\s*(?:/[^:]*)?:", re.MULTILINE)

# "auth.v1.AuthService/SignUp" → statuses checked by some test
COVERED: dict[str, set[str]] = defaultdict(set)

F = TypeVar("F", bound=Callable[..., Any])


def contract(rpc: str, *statuses: str) -> Callable[[F], F]:
    """Mark a test as the contract test of `rpc` for the given outcomes (default "OK")."""
    checked = statuses or ("OK",)
    unknown = [status for status in checked if status not in STATUS_NAMES]
    if unknown:
        raise ValueError(f"{rpc}: {unknown} are not gRPC status names")
    if rpc not in documented_rpcs():
        raise ValueError(f"{rpc} is not an RPC of the contracts (service/Method, e.g. auth.v1.AuthService/Login)")
    COVERED[rpc].update(checked)

    def mark(test: F) -> F:
        marked: F = pytest.mark.contract(rpc=rpc, statuses=checked)(test)
        return marked

    return mark


# ------------------------------------------------------------- the protos


def descriptor_set(path: Path = OUTPUT_DIR / DESCRIPTOR_NAME) -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())


def documented_errors(comment: str) -> set[str]:
    """Status names listed under "Errors:" in an RPC's comment."""
    block = ERRORS_BLOCK.search(comment)
    if block is None:
        return set()
    return {name for name in ERROR_LINE.findall(block.group(1)) if name in STATUS_NAMES}


_RPCS: dict[str, set[str]] | None = None


def documented_rpcs() -> dict[str, set[str]]:
    """Every RPC of our contracts → the outcomes it documents (OK plus its errors)."""
    global _RPCS
    if _RPCS is None:
        _RPCS = {}
        for file in descriptor_set().file:
            if file.name.startswith(("google/", "grpc/")):
                continue
            comments = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
            for s_index, service in enumerate(file.service):
                for m_index, method in enumerate(service.method):
                    comment = comments.get((6, s_index, 2, m_index), "")
                    _RPCS[f"{file.package}.{service.name}/{method.name}"] = {"OK", *documented_errors(comment)}
    return _RPCS


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
