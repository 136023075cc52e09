"""Runs a stack in the foreground until it is told to stop.

`up` runs this in the terminal (Ctrl-C stops cleanly); `up --detach` runs it as a background
process and returns once the state file says healthy. Either way the supervisor is the parent
of every component, so stopping it, or it dying, stops the stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from simulations.components.base import ComponentError
from simulations.launcher import Launcher, StartReport, kill_process_tree, port_is_taken
from simulations.rundir import RunDirectory, StackState
from simulations.topology import Topology

DETACHED_START_TIMEOUT_S = 300.0


async def supervise(
    topology: Topology,
    run_dir: RunDirectory,
    *,
    keep_data: bool = False,
    announce: bool = True,
) -> int:
    """Start, wait for SIGINT/SIGTERM, stop. Returns the process exit code."""
    run_dir.prepare_fresh(os.getpid(), keep_data=keep_data)
    launcher = Launcher(topology, run_dir)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_requested.set)

    start = asyncio.create_task(launcher.start())
    stop_wait = asyncio.create_task(stop_requested.wait())
    done, _ = await asyncio.wait({start, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    if start not in done:
        # Stopped while starting: cancelling start stops what already runs.
        start.cancel()
        with contextlib.suppress(asyncio.CancelledError, ComponentError):
            await start
        run_dir.set_phase("stopped", "stopped while starting")
        return 130
    stop_wait.cancel()
    try:
        report = start.result()
    except ComponentError as error:
        run_dir.set_phase("failed", str(error))
        print(f"stack failed to start: {error}", file=sys.stderr, flush=True)
        return 1
    run_dir.set_phase("healthy")
    if announce:
        print(describe_start(report), flush=True)
        print("stack is up; Ctrl-C (or `python -m simulations down`) stops it", flush=True)
    await stop_requested.wait()
    run_dir.set_phase("stopping")
    await launcher.stop()
    run_dir.set_phase("stopped")
    return 0


def describe_start(report: StartReport) -> str:
    parts = [f"{name} {seconds:.2f}s" for name, seconds in report.ready_after_s.items()]
    return f"healthy in {report.total_s:.2f}s ({', '.join(parts)})"


def start_detached(run_dir: RunDirectory, extra_args: Sequence[str] = ()) -> StackState:
    """Run the supervisor in the background; return once it is healthy (or raise why not)."""
    run_dir.root.mkdir(parents=True, exist_ok=True)
    log_path = run_dir.root / "supervisor.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "simulations", "up", *extra_args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "KP_RUN_DIR": str(run_dir.root)},
        )
    deadline = time.monotonic() + DETACHED_START_TIMEOUT_S
    while time.monotonic() < deadline:
        state = run_dir.read_state()
        if state is not None and state.supervisor_pid == process.pid:
            if state.phase == "healthy":
                return state
            if state.phase in ("failed", "stopped"):
                process.wait(timeout=30)
                raise RuntimeError(state.error or f"stack stopped; see {log_path}")
        exit_code = process.poll()
        if exit_code is not None:
            raise RuntimeError(f"the stack supervisor exited with code {exit_code}; see {log_path}")
        time.sleep(0.05)
    kill_process_tree(process.pid)
    raise RuntimeError(f"stack not healthy after {DETACHED_START_TIMEOUT_S:.0f} s; see {log_path}")


def healthy_stack(run_dir: RunDirectory) -> StackState:
    """The running stack's state; a stack started in the background first when none is
    healthy (what every command that needs the stack does)."""
    state = running_state(run_dir)
    if state is None or state.phase != "healthy":
        print("starting the stack in the background ...", flush=True)
        state = start_detached(run_dir)
    return state


def running_state(run_dir: RunDirectory) -> StackState | None:
    """The state of a stack whose supervisor is alive, or None."""
    state = run_dir.read_state()
    if state is None or not pid_alive(state.supervisor_pid):
        return None
    return state


def stop_stack(run_dir: RunDirectory, timeout_s: float = 60.0) -> list[str]:
    """Stop a stack from outside its supervisor. Returns anything still found afterwards."""
    state = run_dir.read_state()
    if state is None:
        return []
    if pid_alive(state.supervisor_pid):
        os.kill(state.supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while pid_alive(state.supervisor_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(state.supervisor_pid):
            kill_process_tree(state.supervisor_pid, signal.SIGKILL)
    # A supervisor killed with SIGKILL cannot clean up; its components die with it, but make sure.
    leftovers = []
    for record in state.components.values():
        if pid_alive(record.pid):
            kill_process_tree(record.pid, signal.SIGKILL)
        if pid_alive(record.pid):
            leftovers.append(f"{record.name}: pid {record.pid} still running")
        for role, port in record.ports.items():
            if port_is_taken(port):
                leftovers.append(f"{record.name}: port {port} ({role}) still taken")
    return leftovers


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    with contextlib.suppress(FileNotFoundError, IndexError), open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    return True
