"""simulations.launcher with tiny components that run real, short-lived Python processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import ClassVar

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import simulations.launcher as launcher_module
from simulations.components.base import Component, ComponentError, Launch, NotReady
from simulations.launcher import Launcher, check_port_free, port_is_listening
from simulations.rundir import RunDirectory
from simulations.topology import Topology

# A server that listens on the port it is given and lives at most 30 s on its own.
SERVE = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
    "print('listening', flush=True); time.sleep(30)\n"
)
# The same server, but the port may be shared with another socket (SO_REUSEPORT).
SERVE_SHARED = SERVE.replace("SO_REUSEADDR", "SO_REUSEPORT")
# A server that starts the real listener in a new session (out of its process group).
DETACH = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]], start_new_session=True)\n"
    "time.sleep(30)\n"
)
CRASH = (
    "import sys\n"
    "print('starting up', flush=True)\n"
    "print('fatal: config file is broken', file=sys.stderr)\n"
    "sys.exit(3)\n"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Server(Component):
    version = "1"
    start_timeout_s = 20.0

    def launch(self) -> Launch:
        return Launch(argv=[sys.executable, "-c", SERVE, str(self.ctx.port("main"))])

    async def probe(self) -> None:
        if not port_is_listening(self.ctx.port("main")):
            raise NotReady("not listening yet")

    def endpoints(self) -> dict[str, str]:
        return {"main": f"127.0.0.1:{self.ctx.port('main')}"}


class Crasher(Server):
    def launch(self) -> Launch:
        return Launch(argv=[sys.executable, "-c", CRASH])


class SharedPortServer(Server):
    def launch(self) -> Launch:
        return Launch(argv=[sys.executable, "-c", SERVE_SHARED, str(self.ctx.port("main"))])


class Detacher(Server):
    def launch(self) -> Launch:
        return Launch(argv=[sys.executable, "-c", DETACH, SERVE, str(self.ctx.port("main"))])


class SlowToPrepare(Server):
    """Still preparing (waiting for `gate`) when a sibling of its wave fails."""

    gate: ClassVar[asyncio.Event]

    async def prepare(self) -> None:
        await self.gate.wait()


def server(name: str, *depends_on: str, base: type[Server] = Server) -> type[Component]:
    attributes = {"name": name, "default_ports": {"main": free_port()}, "depends_on": depends_on}
    return type(f"T_{name}", (base,), attributes)


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunDirectory:
    monkeypatch.delenv("KP_PORT_OFFSET", raising=False)
    directory = RunDirectory(tmp_path / "run", cache_dir=tmp_path / "cache")
    directory.prepare_fresh(os.getpid(), keep_data=False)
    return directory


class Spawned:
    """Every process a launcher started, seen through its on_change hook."""

    def __init__(self) -> None:
        self.launchers: list[Launcher] = []
        self.pids: dict[str, int] = {}

    def launcher(self, topology: Topology, run_dir: RunDirectory) -> Launcher:
        launcher: Launcher

        def seen() -> None:
            for name, running in launcher.running.items():
                self.pids[name] = running.process.pid

        launcher = Launcher(topology, run_dir, die_with_parent=False, on_change=seen)
        self.launchers.append(launcher)
        return launcher


@pytest.fixture
async def spawned() -> AsyncIterator[Spawned]:
    tracker = Spawned()
    yield tracker
    for launcher in tracker.launchers:  # whatever a failing test left behind
        await launcher.stop()
    for pid in tracker.pids.values():
        if psutil.pid_exists(pid):
            psutil.Process(pid).kill()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ----------------------------------------------------------------- ports


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def test_busy_port_names_component_port_and_remedy(listening_port: int) -> None:
    with pytest.raises(ComponentError) as caught:
        check_port_free("redis", "redis", listening_port)
    error = caught.value
    assert error.component == "redis"
    assert str(listening_port) in error.cause
    assert "in use" in error.cause
    assert f"pid {os.getpid()}" in error.cause  # the owner, when it can be found
    assert "KP_REDIS_REDIS_PORT=<port>" in error.remedy
    assert "KP_PORT_OFFSET=100" in error.remedy
    assert "python -m simulations down" in error.remedy
    assert str(error).startswith("redis: ")


def test_free_port_passes() -> None:
    check_port_free("redis", "redis", free_port())


async def test_start_refuses_a_busy_port(listening_port: int, run_dir: RunDirectory, spawned: Spawned) -> None:
    cls = type("T_busy", (Server,), {"name": "busy", "default_ports": {"main": listening_port}})
    launcher = spawned.launcher(Topology([cls], {}), run_dir)
    with pytest.raises(ComponentError, match=f"port {listening_port} \\(main\\) is already in use"):
        await launcher.start()
    assert spawned.pids == {}  # nothing was spawned


# ------------------------------------------------------------------ start


async def test_components_start_and_stop(run_dir: RunDirectory, spawned: Spawned) -> None:
    first, second = server("alpha"), server("beta", "alpha")
    launcher = spawned.launcher(Topology([first, second], {}), run_dir)
    report = await launcher.start()
    assert list(report.ready_after_s) == ["alpha", "beta"]
    state = run_dir.read_state()
    assert state is not None
    assert {name: record.healthy for name, record in state.components.items()} == {"alpha": True, "beta": True}
    await launcher.stop()
    assert all(gone(pid) for pid in spawned.pids.values())
    assert not port_is_listening(first.default_ports["main"])
    state = run_dir.read_state()
    assert state is not None
    assert state.components == {}


async def test_stop_also_ends_a_child_that_left_the_process_group(run_dir: RunDirectory, spawned: Spawned) -> None:
    detacher = server("detacher", base=Detacher)
    launcher = spawned.launcher(Topology([detacher], {}), run_dir)
    await launcher.start()
    port = detacher.default_ports["main"]
    listener = next(c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port and c.pid)
    assert os.getpgid(listener) != spawned.pids["detacher"]
    await launcher.stop()
    assert gone(listener)
    assert not port_is_listening(port)


async def test_stop_names_who_still_holds_a_port(
    run_dir: RunDirectory, spawned: Spawned, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launcher_module, "STOP_GRACE_S", 0.5)  # how long the stop waits for the port
    shared = server("shared", base=SharedPortServer)
    launcher = spawned.launcher(Topology([shared], {}), run_dir)
    await launcher.start()
    port = shared.default_ports["main"]
    with socket.socket() as stranger:
        stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        stranger.bind(("127.0.0.1", port))
        stranger.listen()
        with pytest.raises(ComponentError) as caught:
            await launcher.stop()
    assert f"port {port} (main) is still taken after the stop by " in caught.value.cause
    assert f"(pid {os.getpid()}: " in caught.value.cause
    assert gone(spawned.pids["shared"])


async def test_process_exiting_during_start_up(run_dir: RunDirectory, spawned: Spawned) -> None:
    crasher = server("crashy", base=Crasher)
    launcher = spawned.launcher(Topology([crasher], {}), run_dir)
    with pytest.raises(ComponentError) as caught:
        await launcher.start()
    error = caught.value
    assert error.component == "crashy"
    assert "exited with code 3" in error.cause
    assert "fatal: config file is broken" in error.cause  # the log tail
    assert str(run_dir.log_path("crashy")) in error.remedy
    assert launcher.running == {}


async def test_failure_in_second_wave_stops_the_first(run_dir: RunDirectory, spawned: Spawned) -> None:
    first_a, first_b = server("one"), server("two")
    crasher = server("three", "one", "two", base=Crasher)
    launcher = spawned.launcher(Topology([first_a, first_b, crasher], {}), run_dir)
    with pytest.raises(ComponentError, match="three: process exited with code 3"):
        await launcher.start()
    assert set(spawned.pids) == {"one", "two", "three"}
    assert all(gone(pid) for pid in spawned.pids.values())
    assert not port_is_listening(first_a.default_ports["main"])
    assert not port_is_listening(first_b.default_ports["main"])
    assert launcher.running == {}
    state = run_dir.read_state()
    assert state is not None
    assert state.components == {}


async def test_failure_leaves_no_sibling_still_starting(run_dir: RunDirectory, spawned: Spawned) -> None:
    SlowToPrepare.gate = asyncio.Event()
    first = server("base")
    crasher = server("fails", "base", base=Crasher)
    slow = server("slow", "base", base=SlowToPrepare)
    launcher = spawned.launcher(Topology([first, crasher, slow], {}), run_dir)
    try:
        with pytest.raises(ComponentError, match="fails: process exited"):
            await launcher.start()
        # Nothing of this launcher may still be starting once start() has given up: a sibling
        # that finished preparing later would spawn a process nobody stops.
        starting = [t for t in asyncio.all_tasks() if "_start_one" in repr(t.get_coro()) and not t.done()]
        assert starting == []
        assert "slow" not in spawned.pids
    finally:
        SlowToPrepare.gate.set()


async def test_processes_start_while_grpc_calls_are_in_flight(tmp_path: Path) -> None:
    """The launcher forks while its readiness probes have gRPC calls open. With gRPC's fork
    handlers on, about one child in ten aborted before it ran (grpc/grpc#43055)."""
    stop = asyncio.Event()

    async def probe_until_stopped() -> None:
        while not stop.is_set():
            async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as channel:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.05)

    probes = [asyncio.create_task(probe_until_stopped()) for _ in range(4)]
    exit_codes = []
    try:
        for index in range(200):
            process = launcher_module.spawn(
                f"child-{index}", Launch(argv=["true"]), tmp_path / "children.log", die_with_parent=True
            )
            while process.poll() is None:
                await asyncio.sleep(0.002)
            exit_codes.append(process.returncode)
    finally:
        stop.set()
        await asyncio.gather(*probes)
    assert [code for code in exit_codes if code != 0] == [], (tmp_path / "children.log").read_text()[-500:]


@pytest.mark.parametrize(
    ("imports", "handlers_on"),
    [("import simulations.launcher, grpc", False), ("import grpc, simulations.launcher", True)],
)
def test_grpc_fork_handlers_are_off_only_when_simulations_loads_first(imports: str, handlers_on: bool) -> None:
    script = f"{imports}\nprint(simulations.launcher.grpc_fork_handlers_on())"
    environ = {key: value for key, value in os.environ.items() if key != "GRPC_ENABLE_FORK_SUPPORT"}
    result = subprocess.run([sys.executable, "-c", script], env=environ, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == str(handlers_on)
