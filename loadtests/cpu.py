"""CPU accounting for the benchmarks: what each process group spent during a measured round.

On 2 shared cores a figure of throughput alone hides where the time went; the benchmarks print
CPU per request (or per span) of each process beside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import psutil

from simulations.launcher import Launcher, process_tree

ProcessGroups = Mapping[str, Sequence[psutil.Process]]
BENCH_CLIENT = "bench client"


def stack_processes(launcher: Launcher) -> dict[str, list[psutil.Process]]:
    """Each running component's process tree by name, and this process as the bench client."""
    groups = {name: process_tree(running.process.pid) for name, running in launcher.running.items()}
    groups[BENCH_CLIENT] = [psutil.Process()]
    return groups


def cpu_seconds(groups: ProcessGroups) -> dict[str, float]:
    """CPU time so far of each group. The kernel counts it in 10 ms ticks per process, so a short
    round undercounts a group of many lightly used processes (PostgreSQL's backends)."""
    spent = dict.fromkeys(groups, 0.0)
    for name, processes in groups.items():
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                spent[name] += times.user + times.system
    return spent


def machine_idle_and_total_seconds() -> tuple[float, float]:
    """CPU time of all cores since boot: idle (waiting counts as idle), and in all."""
    times = psutil.cpu_times()
    return times.idle + getattr(times, "iowait", 0.0), sum(times)
