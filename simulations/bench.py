"""`python -m simulations bench startup`: how long the stack takes to become healthy and to go
away, per component, for the infrastructure, for the services and in total, as the median of
several cold starts.

Each run starts from nothing running and an empty data folder. Warm, as after installation:
the installed packages (uv's environment), Kafka's resolved jars and the initialised
PostgreSQL template (in the cache folder). One warm-up run goes first and is not counted.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from simulations.components.service import SERVICES
from simulations.launcher import Launcher
from simulations.rundir import RunDirectory
from simulations.topology import Topology

TARGET_S = 15.0


@dataclass
class StartupRun:
    ready_after_s: dict[str, float] = field(default_factory=dict)
    healthy_at_s: dict[str, float] = field(default_factory=dict)
    stop_s: dict[str, float] = field(default_factory=dict)
    total_start_s: float = 0.0
    total_stop_s: float = 0.0


async def one_run(topology: Topology, root: Path) -> StartupRun:
    run_dir = RunDirectory(root)
    run_dir.prepare_fresh(supervisor_pid=0, keep_data=False)
    launcher = Launcher(topology, run_dir)
    report = await launcher.start()
    began = time.monotonic()
    stop_s = await launcher.stop()
    return StartupRun(report.ready_after_s, report.healthy_at_s, stop_s, report.total_s, time.monotonic() - began)


def bench_startup(topology: Topology, repeat: int = 3) -> int:
    runs: list[StartupRun] = []
    with tempfile.TemporaryDirectory(prefix="kph-bench-") as scratch:
        for index in range(repeat + 1):
            run = asyncio.run(one_run(topology, Path(scratch) / f"run-{index}"))
            label = "warm-up" if index == 0 else f"run {index}/{repeat}"
            print(
                f"{label}: healthy in {run.total_start_s:.2f} s, stopped in {run.total_stop_s:.2f} s",
                flush=True,
            )
            if index > 0:
                runs.append(run)
    print(render(runs, topology.names()))
    services = set(SERVICES) & set(topology.names())
    for label, names in (
        (
            "infrastructure (stores, broker, trace receiver)",
            [n for n in topology.names() if n not in services | {"envoy"}],
        ),
        ("every service", sorted(services)),
    ):
        if names:
            healthy = statistics.median(max(run.healthy_at_s[name] for name in names) for run in runs)
            print(f"{label} healthy {healthy:.2f} s after the start")
    print("warm: installed packages, Kafka's jars, the PostgreSQL template; cold: every data folder and process")
    median_start = statistics.median(run.total_start_s for run in runs)
    met = median_start <= TARGET_S
    print(f"median whole-stack start {median_start:.2f} s (target ≤ {TARGET_S:.0f} s: {'met' if met else 'MISSED'})")
    return 0 if met else 1


def render(runs: list[StartupRun], names: list[str]) -> str:
    lines = [f"{'component':<12} {'start→healthy (median)':>24} {'stop (median)':>14}"]
    for name in names:
        start = statistics.median(run.ready_after_s[name] for run in runs)
        stop = statistics.median(run.stop_s[name] for run in runs)
        lines.append(f"{name:<12} {start:>22.2f} s {stop:>12.2f} s")
    total_start = statistics.median(run.total_start_s for run in runs)
    total_stop = statistics.median(run.total_stop_s for run in runs)
    lines.append(f"{'whole stack':<12} {total_start:>22.2f} s {total_stop:>12.2f} s")
    lines.append(f"(median of {len(runs)} cold starts; components in one wave start in parallel)")
    return "\n".join(lines)
