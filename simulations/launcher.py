"""Starts and stops the components of a topology as local processes.

Components start in dependency waves; within a wave they start together. Each process gets its
own process group, its log file in the run directory, and (on Linux) a parent-death signal, so
a launcher that dies for any reason takes its components with it. A component that fails to
start stops everything already started and surfaces a `ComponentError` naming the cause and
the remedy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from textwrap import shorten

import psutil

import simulations
from simulations.components.base import (
    Component,
    ComponentContext,
    ComponentError,
    Launch,
    NotReady,
    running_as_root,
    user_ids,
)
from simulations.platform import PLATFORM
from simulations.profiles import Profile
from simulations.rundir import ComponentRecord, RunDirectory
from simulations.topology import PORT_OFFSET_ENV, Topology, port_override_env, resolve_ports

PROBE_INTERVAL_S = 0.05
STOP_GRACE_S = 15.0
_PR_SET_PDEATHSIG = 1


@dataclass
class Running:
    component: Component
    process: subprocess.Popen[bytes]
    launch: Launch
    ports: dict[str, int]
    log_path: Path
    started_at: float
    ready_after_s: float = 0.0


@dataclass
class StartReport:
    """How long each component took from spawn to healthy, in start order."""

    ready_after_s: dict[str, float] = field(default_factory=dict)
    # When each became healthy, counted from the start of the whole stack.
    healthy_at_s: dict[str, float] = field(default_factory=dict)
    total_s: float = 0.0


class Launcher:
    """Owns the processes of one run directory."""

    def __init__(
        self,
        topology: Topology,
        run_dir: RunDirectory,
        *,
        die_with_parent: bool = True,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.topology = topology
        self.run_dir = run_dir
        self.die_with_parent = die_with_parent
        self.on_change = on_change or (lambda: None)
        self.running: dict[str, Running] = {}

    # ----------------------------------------------------------------- start

    async def start(self) -> StartReport:
        """Start every component, wave by wave. On failure, stop what started and re-raise."""
        report = StartReport()
        began = time.monotonic()
        try:
            for wave in self.topology.waves():
                await self._start_wave(wave)
        except BaseException:
            await self.stop()
            raise
        report.total_s = time.monotonic() - began
        report.ready_after_s = {name: r.ready_after_s for name, r in self.running.items()}
        report.healthy_at_s = {name: r.started_at + r.ready_after_s - began for name, r in self.running.items()}
        return report

    async def _start_wave(self, wave: list[type[Component]]) -> None:
        """Start a wave together; the first failure cancels the rest and is raised as is."""
        try:
            async with asyncio.TaskGroup() as group:
                for cls in wave:
                    group.create_task(self._start_one(cls))
        except BaseExceptionGroup as failures:
            raise first_leaf(failures) from None

    async def _start_one(self, cls: type[Component]) -> None:
        ports = resolve_ports(cls)
        for role, port in ports.items():
            check_port_free(cls.name, role, port)
        component = cls(self._context(cls, ports))
        component.preflight()
        await component.prepare()
        launch = component.launch()
        log_path = self.run_dir.log_path(cls.name)
        process = spawn(cls.name, launch, log_path, die_with_parent=self.die_with_parent)
        running = Running(component, process, launch, ports, log_path, time.monotonic())
        self.running[cls.name] = running
        self._record(running, healthy=False)
        await wait_until_ready(running, cls.start_timeout_s)
        await component.provision()
        running.ready_after_s = time.monotonic() - running.started_at
        self._record(running, healthy=True)

    def _context(self, cls: type[Component], ports: dict[str, int]) -> ComponentContext:
        return ComponentContext(
            name=cls.name,
            data_dir=self.run_dir.data_dir(cls.name),
            cache_dir=self.run_dir.cache_dir,
            ports=ports,
            endpoints_of={name: r.component.endpoints() for name, r in self.running.items()},
            settings=self.topology.settings.get(cls.name, {}),
            platform_secret=self.run_dir.platform_secret(),
        )

    def _record(self, running: Running, *, healthy: bool) -> None:
        component = running.component
        self.run_dir.record_component(
            ComponentRecord(
                name=component.name,
                version=component.version,
                pid=running.process.pid,
                ports=running.ports,
                endpoints=component.endpoints(),
                log=str(running.log_path),
                healthy=healthy,
                ready_after_s=round(running.ready_after_s, 3),
            )
        )
        self.on_change()

    async def restart_component(self, name: str) -> None:
        """Start a component that `stop_component` stopped, on the same ports and data."""
        if name in self.running:
            raise ValueError(f"{name} is already running")
        await self._start_one(self.topology.get(name))

    async def stop_component(self, name: str) -> float:
        """Stop one component (a fault to inject); the rest keep running."""
        return await self._stop_one(name)

    # ------------------------------------------------------------------ stop

    async def stop(self) -> dict[str, float]:
        """Stop components in reverse start order; returns seconds each took to go away.
        Every component is stopped even when one fails to; the first failure is raised after."""
        durations: dict[str, float] = {}
        failures: list[BaseException] = []
        for wave in reversed(self.topology.waves()):
            names = [cls.name for cls in wave if cls.name in self.running]
            results = await asyncio.gather(*(self._stop_one(name) for name in names), return_exceptions=True)
            for name, result in zip(names, results, strict=True):
                if isinstance(result, BaseException):
                    failures.append(result)
                else:
                    durations[name] = result
        if failures:
            raise failures[0]
        return durations

    async def _stop_one(self, name: str) -> float:
        running = self.running.pop(name)
        began = time.monotonic()
        await terminate(running.process, running.launch.stop_signal)
        still_taken = await wait_ports_free(running.ports, timeout_s=STOP_GRACE_S)
        self.run_dir.forget_component(name)
        self.on_change()
        if still_taken:
            # Said here, where it happens, rather than as a busy port at the next start.
            role, port = next(iter(still_taken.items()))
            raise ComponentError(
                name,
                f"port {port} ({role}) is still taken after the stop{describe_port_owner(port)}",
                "stop that process by hand; it was not in the component's process group",
            )
        return time.monotonic() - began


def first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error in a (possibly nested) exception group, ComponentErrors first."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        else:
            leaves.append(error)
    component_errors = [error for error in leaves if isinstance(error, ComponentError)]
    return (component_errors or leaves)[0]


# ---------------------------------------------------------------- processes


def spawn(name: str, launch: Launch, log_path: Path, *, die_with_parent: bool) -> subprocess.Popen[bytes]:
    """Start a component process in its own process group, output appended to its log."""
    if grpc_fork_handlers_on():
        raise ComponentError(
            name,
            "gRPC was loaded in this process with its fork handlers on, so the process may abort before it starts",
            "import simulations before grpc, or set GRPC_ENABLE_FORK_SUPPORT=false",
        )
    executable = launch.argv[0]
    if shutil.which(executable) is None and not Path(executable).exists():
        raise ComponentError(name, f"executable not found: {executable}", "run the setup command again")
    run_as = launch.run_as_when_root if running_as_root() else None
    uid_gid = user_ids(run_as) if run_as else None
    stop_signal = launch.stop_signal
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(launch.argv)}\n".encode())
        log.flush()

        def in_child() -> None:
            # Runs after the uid switch, so the death signal survives it (prctl(2)).
            if die_with_parent:
                set_parent_death_signal(stop_signal)

        return subprocess.Popen(
            list(launch.argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=launch.cwd,
            env={**os.environ, **launch.env},
            start_new_session=True,
            user=uid_gid[0] if uid_gid else None,
            group=uid_gid[1] if uid_gid else None,
            extra_groups=[] if uid_gid else None,
            preexec_fn=in_child,
        )


def grpc_fork_handlers_on() -> bool:
    """Whether gRPC is loaded here with the fork handlers that simulations/__init__ turns off."""
    return "grpc._cython.cygrpc" in sys.modules and not simulations.GRPC_FORK_HANDLERS_OFF


def set_parent_death_signal(sig: int) -> None:
    """In a child process (preexec_fn): receive `sig` when the parent dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


async def wait_until_ready(running: Running, timeout_s: float) -> None:
    """Probe until the component serves, it exits, or the deadline passes."""
    component = running.component
    deadline = time.monotonic() + timeout_s
    last_reason = "no probe answered yet"
    while True:
        exit_code = running.process.poll()
        if exit_code is not None:
            raise ComponentError(
                component.name,
                f"process exited with code {exit_code} during start-up: {log_tail(running.log_path)}",
                f"read the full log at {running.log_path}",
            )
        try:
            await component.probe()
            return
        except NotReady as not_ready:
            last_reason = str(not_ready) or "not ready"
        if time.monotonic() > deadline:
            raise ComponentError(
                component.name,
                f"not healthy after {timeout_s:.0f} s (last probe: {last_reason})",
                f"read the log at {running.log_path}; a slow machine may need a longer start timeout",
            )
        await asyncio.sleep(PROBE_INTERVAL_S)


async def terminate(process: subprocess.Popen[bytes], stop_signal: int, grace_s: float = STOP_GRACE_S) -> None:
    """Ask the process group to stop; kill it when the grace period runs out. Descendants
    that left the group (a child that called setsid) are killed too."""
    try:
        descendants = process_tree(process.pid)[1:]
    except psutil.NoSuchProcess:
        descendants = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, stop_signal)
    deadline = time.monotonic() + grace_s
    while process.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    # Whatever is left in the group (children of the server) goes now.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for straggler in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            straggler.kill()
    if process.poll() is None:
        process.wait(timeout=5)


def kill_process_tree(pid: int, stop_signal: int = signal.SIGTERM, grace_s: float = STOP_GRACE_S) -> None:
    """Stop a process we did not spawn in this launcher (found in a state file)."""
    try:
        tree = process_tree(pid)
    except psutil.NoSuchProcess:
        return
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(stop_signal)
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(alive, timeout=5)


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants (e.g. PostgreSQL's backends)."""
    process = psutil.Process(pid)
    return [process, *process.children(recursive=True)]


def log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(tail)


# -------------------------------------------------------------------- ports


def port_is_listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def port_is_taken(port: int) -> bool:
    """Whether a server could not bind the port now. Unlike a connect probe, this creates no
    connection, so a listener that is not accepting (its backlog full) still counts as taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as candidate:
        # Like the servers themselves: connections in TIME_WAIT do not make a port busy.
        candidate.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            candidate.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def check_port_free(component: str, role: str, port: int) -> None:
    if port_is_taken(port):
        raise ComponentError(
            component,
            f"port {port} ({role}) is already in use{describe_port_owner(port)}",
            f"stop that process (`python -m simulations down` if it is an earlier stack), "
            f"or move this stack with {PORT_OFFSET_ENV}=100 or {port_override_env(component, role)}=<port>",
        )


def describe_port_owner(port: int) -> str:
    try:
        for connection in psutil.net_connections(kind="tcp"):
            if connection.laddr and connection.laddr.port == port and connection.status == "LISTEN":
                if connection.pid is None:
                    return ""
                owner = psutil.Process(connection.pid)
                command = " ".join(owner.cmdline())
                return f" by {owner.name()} (pid {connection.pid}: {shorten(command, 160, placeholder=' …')})"
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        pass
    return ""


async def wait_ports_free(ports: Mapping[str, int], timeout_s: float) -> dict[str, int]:
    """Wait until no port of `ports` (by role) is taken; returns those still taken at the deadline."""
    deadline = time.monotonic() + timeout_s
    while (taken := {role: port for role, port in ports.items() if port_is_taken(port)}) and (
        time.monotonic() < deadline
    ):
        await asyncio.sleep(0.02)
    return taken


@contextlib.asynccontextmanager
async def isolated_launcher(
    profile: Profile, environ: Mapping[str, str] | None = None, topology: Topology | None = None
) -> AsyncIterator[Launcher]:
    """The profile's stack (simulations.profiles) started in a scratch run directory on its
    own ports, for benchmarks and fault tests that must not touch a running stack. `environ`
    adds settings every process of this stack sees (e.g. a sampling ratio) to the profile's.
    The launcher is yielded, so a test can stop and restart components; all stop afterwards."""
    saved = dict(os.environ)
    os.environ.update({PORT_OFFSET_ENV: str(profile.port_offset), **profile.environ, **(environ or {})})
    try:
        with tempfile.TemporaryDirectory(prefix=f"kph-{profile.name}-") as scratch:
            run_dir = RunDirectory(Path(scratch))
            run_dir.prepare_fresh(supervisor_pid=os.getpid(), keep_data=False)
            launcher = Launcher((topology or PLATFORM).subset(profile.components), run_dir)
            await launcher.start()
            try:
                yield launcher
            finally:
                await launcher.stop()
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.asynccontextmanager
async def isolated_stack(
    profile: Profile, environ: Mapping[str, str] | None = None
) -> AsyncIterator[dict[str, dict[str, str]]]:
    """Like `isolated_launcher`, yielding each component's endpoints."""
    async with isolated_launcher(profile, environ) as launcher:
        yield {name: dict(r.component.endpoints()) for name, r in launcher.running.items()}
