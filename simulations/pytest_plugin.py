"""pytest plugin: one running stack per test run, shared by every pytest-xdist worker.

The first test that asks for the `stack` fixture starts the stack in the background (under a
file lock, so parallel workers start it once); later tests and other workers reuse it. A stack
that was already running before the tests (a developer's `up`) is reused and left running; a
stack this test run started is stopped when the run ends, by the process that controls the run.

Set KP_TEST_STACK=none to fail fast instead of starting anything.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from filelock import FileLock

from observability.clickhouse import connect
from observability.testing import TraceCapture
from observability.traces import TraceStore
from services.api.auth.v1 import auth_pb2, auth_pb2_grpc
from services.kit.telemetry import TelemetrySettings, setup_telemetry
from simulations.endpoints import StackEndpoints
from simulations.rundir import RunDirectory
from simulations.supervisor import running_state, start_detached, stop_stack

RUN_ID_ENV = "KP_TEST_RUN_ID"
# The name the tests use when they call internal methods as a platform service would.
TEST_SERVICE = "tests"
STACK_MODE_ENV = "KP_TEST_STACK"
OWNER_FILE = "started-by-test-run"


def _is_xdist_worker() -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ


def pytest_configure(config: pytest.Config) -> None:
    # Workers inherit the controller's environment, so they all see the controller's run id.
    if not _is_xdist_worker():
        os.environ[RUN_ID_ENV] = uuid.uuid4().hex


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that share a stack of their own carry an `xdist_group` mark so they run one after
    another on one worker. pytest-xdist says so by suffixing the test's id with `@group`; a
    pytest that ignores the suffix (9.2, pytest-xdist#1386) spreads them across workers, where
    their stacks collide on ports. Refuse to run rather than let that happen silently."""
    if not _is_xdist_worker() or not config.getvalue("loadgroup"):
        return
    ungrouped = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if ungrouped:
        reason = (
            f"pytest-xdist could not group {ungrouped[0]} (and {len(ungrouped) - 1} more) by its "
            "xdist_group mark; this pytest and pytest-xdist do not work together, use the pinned versions"
        )
        # A worker's exception reaches the controller only as an opaque internal error.
        print(reason, file=sys.__stderr__, flush=True)
        raise pytest.UsageError(reason)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _is_xdist_worker():
        return
    run_dir = RunDirectory()
    owner = run_dir.root / OWNER_FILE
    if owner.exists() and owner.read_text().strip() == os.environ.get(RUN_ID_ENV):
        leftovers = stop_stack(run_dir)
        owner.unlink(missing_ok=True)
        if leftovers:
            print("\nstack stopped with leftovers:\n  " + "\n  ".join(leftovers))


def ensure_stack(run_dir: RunDirectory) -> StackEndpoints:
    run_dir.root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(run_dir.root / "test-start.lock"), timeout=600):
        state = running_state(run_dir)
        if state is None or state.phase != "healthy":
            if os.environ.get(STACK_MODE_ENV) == "none":
                pytest.fail("no stack is running and KP_TEST_STACK=none; start one: python -m simulations up")
            state = start_detached(run_dir)
            (run_dir.root / OWNER_FILE).write_text(os.environ.get(RUN_ID_ENV, ""))
    return StackEndpoints(state, run_dir.platform_secret())


@pytest.fixture(scope="session")
def stack() -> StackEndpoints:
    """Endpoints of the running stack (started on first use)."""
    return ensure_stack(RunDirectory())


@pytest.fixture(scope="session")
def traces(stack: StackEndpoints) -> TraceCapture:
    """Capture what a test does as one trace and assert on it (see observability.testing).

    The test process exports its own spans (service "tests") to the stack's receiver, so the
    test's action is the root of the trace and in-process consumers join it too."""
    provider = setup_telemetry(
        TelemetrySettings(
            service_name="tests",
            service_version="0",
            environment="test",
            otlp_endpoint=stack.otlp_grpc,
        )
    )
    return TraceCapture(TraceStore(connect(stack.clickhouse_url)), provider, stack.otlp_http)


@pytest.fixture(scope="session")
async def service_token(stack: StackEndpoints) -> str:
    """A service token for the test run, as a platform service would get one (auth's
    IssueServiceToken, with a credential derived from the stack's platform secret), for calls
    straight to internal methods."""
    async with grpc.aio.insecure_channel(stack.service_grpc("auth")) as channel:
        request = auth_pb2.IssueServiceTokenRequest(
            service=TEST_SERVICE, credential=stack.service_credential(TEST_SERVICE)
        )
        reply = await auth_pb2_grpc.AuthServiceStub(channel).IssueServiceToken(request, timeout=10)
    return reply.service_token


@pytest.fixture(scope="session")
def run_dir_root() -> Path:
    """The run directory of the stack under test (its logs are in logs/)."""
    return RunDirectory().root
