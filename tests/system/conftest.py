"""Every test in tests/system runs against the stack (started once per test run)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/system" in str(item.path):
            item.add_marker(pytest.mark.system)
