"""The record of which RPCs and outcomes the contract suites cover, and what the protos document.

Every contract test declares the RPC it exercises and the outcome it checks:

    @contract("knowledge.v1.KnowledgeService/UpdateDocument", "ABORTED")
    async def test_a_stale_version_is_a_conflict(transport, ...): ...

The documented outcomes of an RPC are "OK" plus the status names its proto comment lists under
"Errors:" (read from the descriptor set, which keeps the comments).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import descriptor_pb2

from contracts.generate import DESCRIPTOR_NAME, OUTPUT_DIR

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
            if file.package.startswith(("google.", "grpc.")):
                continue  # infrastructure protos (health, status): not our contracts
            comments = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
            for s_index, service in enumerate(file.service):
                for m_index, method in enumerate(service.method):
                    comment = comments.get((6, s_index, 2, m_index), "")
                    _RPCS[f"{file.package}.{service.name}/{method.name}"] = {"OK", *documented_errors(comment)}
    return _RPCS
