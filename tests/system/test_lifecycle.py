"""Starting and stopping stacks leaves nothing behind, whichever way they stop: `down`, Ctrl-C,
or the launcher being killed. Each test runs its own stack in its own run directory, moved to
its own ports, so it never touches the shared stack of the test run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from simulations.launcher import port_is_listening
from simulations.profiles import profile
from simulations.rundir import RunDirectory, StackState
from simulations.supervisor import pid_alive

pytestmark = pytest.mark.xdist_group("lifecycle")  # one at a time: each starts its own stack


def cli(run_dir: Path, offset: int, *args: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulations", *args],
        env={**os.environ, "KP_RUN_DIR": str(run_dir), "KP_PORT_OFFSET": str(offset)},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def foreground(run_dir: Path, offset: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "simulations", "up", *args],
        env={**os.environ, "KP_RUN_DIR": str(run_dir), "KP_PORT_OFFSET": str(offset)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_healthy(run_dir: Path, timeout_s: float = 120) -> StackState:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = RunDirectory(run_dir).read_state()
        if state is not None and state.phase == "healthy":
            return state
        if state is not None and state.phase == "failed":
            pytest.fail(f"stack failed to start: {state.error}")
        time.sleep(0.1)
    pytest.fail(f"stack in {run_dir} not healthy after {timeout_s} s")


def leftovers(state: StackState, wait_s: float = 10.0) -> list[str]:
    """Processes and listening ports of the stack still present after `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        found = [f"{r.name} pid {r.pid}" for r in state.components.values() if pid_alive(r.pid)]
        found += [
            f"{r.name} port {port}"
            for r in state.components.values()
            for port in r.ports.values()
            if port_is_listening(port)
        ]
        if pid_alive(state.supervisor_pid):
            found.append(f"supervisor pid {state.supervisor_pid}")
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.fixture
def isolated(tmp_path: Path) -> Iterator[Path]:
    """A run directory whose stack is stopped whatever the test does."""
    yield tmp_path
    state = RunDirectory(tmp_path).read_state()
    if state is not None:
        for pid in [state.supervisor_pid, *(r.pid for r in state.components.values())]:
            if pid_alive(pid):
                psutil.Process(pid).kill()


def stack_of(name: str) -> tuple[int, str, str]:
    """A profile's port offset and the `--only` arguments naming its components."""
    stack = profile(name)
    return stack.port_offset, "--only", ",".join(stack.components)


def test_down_leaves_no_process_or_listening_port(isolated: Path) -> None:
    offset = profile("lifecycle-down").port_offset
    started = cli(isolated, offset, "up", "--detach")
    assert started.returncode == 0, started.stdout + started.stderr
    state = RunDirectory(isolated).read_state()
    assert state is not None
    assert set(state.components) >= {"kafka", "postgres", "redis", "clickhouse", "dynamodb", "smtp", "otlp", "envoy"}
    assert all(port_is_listening(p) for r in state.components.values() for p in r.ports.values())

    status = cli(isolated, offset, "status", "--json")
    assert status.returncode == 0, status.stdout

    stopped = cli(isolated, offset, "down")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert leftovers(state, wait_s=0) == []
    assert cli(isolated, offset, "status").returncode == 3, "status reports that nothing runs"


def test_ctrl_c_stops_the_foreground_stack_cleanly(isolated: Path) -> None:
    process = foreground(isolated, *stack_of("lifecycle-ctrl-c"))
    state = wait_healthy(isolated)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert leftovers(state) == []
    assert RunDirectory(isolated).read_state().phase == "stopped"  # type: ignore[union-attr]


def test_a_killed_launcher_takes_its_components_with_it(isolated: Path) -> None:
    process = foreground(isolated, *stack_of("lifecycle-killed"))
    state = wait_healthy(isolated)
    process.kill()  # SIGKILL: no clean-up code runs in the launcher
    process.communicate(timeout=30)
    assert leftovers(state) == []


def test_a_busy_port_fails_fast_naming_component_cause_and_remedy(isolated: Path) -> None:
    offset, *only = stack_of("lifecycle-busy-port")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 16379 + offset))
        squatter.listen()
        result = cli(isolated, offset, "up", "--detach", *only, timeout_s=60)
    message = result.stdout + result.stderr
    assert result.returncode == 1, message
    owner = f"{psutil.Process().name()} (pid {os.getpid()}: "  # python under xdist, pytest without
    assert f"redis: port {16379 + offset} (redis) is already in use by {owner}" in message
    assert "remedy:" in message
    assert "KP_PORT_OFFSET" in message
    state = RunDirectory(isolated).read_state()
    assert state is not None
    assert state.phase == "failed"
    assert state.components == {}, "what had started was stopped again"
    assert not port_is_listening(15432 + offset), "postgres, started in the same wave, was stopped"
