"""`python -m loadtests run SCENARIO`: one load run, from seed to verdict.

1. The stack: the running one (started in the background if none is, as `simulations run` does).
2. The seed (loadtests.seeding), made and indexed before anything is measured; its manifest is
   the first file of the run's folder.
3. Locust, headless, through Envoy: one process, or with `--workers W` one master and W worker
   processes (Locust's distributed mode, bound to 127.0.0.1), closed loop (users who think
   between actions) or open loop (`--arrival-rate`: actions per second, whatever the answers
   take). The run stops by itself after `--duration`; the runner kills anything still running a
   minute later.
4. The verdict: the scenario's SLOs (loadtests/slo/<scenario>.yaml) against Locust's statistics,
   printed as a table; the exit code is 0 when every objective is met, 1 on a breach.
5. The report folder (`.run/load/<run id>/`, or `--report-dir`): Locust's HTML report and CSVs,
   the plots, the trace breakdown and the SLO table (see loadtests.report).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from clients.transports import NATIVE_GRPC, transport_for
from loadtests.report import plot_history, trace_breakdown, write_trace_report
from loadtests.seeding import SEED, Manifest, Seeder, SeedPlan
from loadtests.slo import load_objectives, measured_from_csv, render, unexpected_failures, verdict
from observability.testing import flush_receiver
from simulations.endpoints import StackEndpoints
from simulations.rundir import RunDirectory
from simulations.supervisor import healthy_stack

HERE = Path(__file__).parent
MAX_USERS, MAX_WORKERS, MAX_DURATION_S, MAX_ARRIVAL_RATE = 1000, 8, 4 * 3600, 2000.0
STOP_GRACE_S = 60.0
TRACE_KINDS_SHOWN = 6
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True)
class LoadScenario:
    name: str
    users_file: str  # under loadtests/users
    description: str
    spaces: int = 0
    documents: int = 0
    canvas_group: int = 0
    open_loop: bool = True  # whether its actions can arrive on a schedule (--arrival-rate)

    @property
    def locustfile(self) -> Path:
        return HERE / "users" / self.users_file

    @property
    def slo_file(self) -> Path:
        return HERE / "slo" / f"{self.name}.yaml"

    def plan(self, users: int, documents: int | None) -> SeedPlan:
        return SeedPlan(users, self.spaces, self.documents if documents is None else documents, self.canvas_group)


SCENARIOS = {
    scenario.name: scenario
    for scenario in (
        LoadScenario("search", "search.py", "search, open a hit, ask (JSON via Envoy)", spaces=5, documents=200),
        LoadScenario("search-grpc", "search_grpc.py", "the same over native gRPC via Envoy", spaces=5, documents=200),
        LoadScenario("collaboration", "collaboration.py", "canvases over WebSocket", canvas_group=10, open_loop=False),
        LoadScenario("mixed", "mixed.py", "a day in the life across every service", spaces=5, documents=100),
    )
}


@dataclass(frozen=True)
class RunOptions:
    scenario: LoadScenario
    users: int
    spawn_rate: float
    duration_s: int
    workers: int
    arrival_rate: float  # actions per second in all; 0: closed loop
    documents: int | None
    report_dir: Path | None


def parse_duration(text: str) -> int:
    """ "90", "90s", "5m", "1h" → seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = int(float(number) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 90s, 5m, 1h)") from None
    if not 1 <= seconds <= MAX_DURATION_S:
        raise argparse.ArgumentTypeError(f"a run lasts 1 s to {MAX_DURATION_S // 3600} h, not {text!r}")
    return seconds


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--users", type=int, default=50, help="simulated users (default 50)")
    parser.add_argument("--spawn-rate", type=float, default=5.0, help="users started per second (default 5)")
    parser.add_argument("--duration", type=parse_duration, default=60, help="e.g. 60s, 5m (default 60s)")
    parser.add_argument("--workers", type=int, default=0, help="Locust worker processes (default: none)")
    parser.add_argument(
        "--arrival-rate",
        type=float,
        default=0.0,
        help="open loop: actions started per second in all, whatever the answers take (default: closed loop)",
    )
    parser.add_argument("--documents", type=int, default=None, help="documents to seed (default: the scenario's)")
    parser.add_argument("--report-dir", type=Path, default=None, help="where the report goes (default .run/load/<run>)")


def options_from(args: argparse.Namespace) -> RunOptions:
    problems = []
    if not 1 <= args.users <= MAX_USERS:
        problems.append(f"--users must be 1 to {MAX_USERS}")
    if not 0 <= args.workers <= MAX_WORKERS:
        problems.append(f"--workers must be 0 to {MAX_WORKERS}")
    if not 0 <= args.arrival_rate <= MAX_ARRIVAL_RATE:
        problems.append(f"--arrival-rate must be 0 to {MAX_ARRIVAL_RATE:.0f} per second")
    if args.arrival_rate and not SCENARIOS[args.scenario].open_loop:
        problems.append(f"{args.scenario} paces its users itself (sessions, not requests): no --arrival-rate")
    if args.spawn_rate <= 0:
        problems.append("--spawn-rate must be positive")
    if args.documents is not None and not 0 <= args.documents <= 100_000:
        problems.append("--documents must be 0 to 100000")
    if problems:
        raise SystemExit("; ".join(problems))
    return RunOptions(
        SCENARIOS[args.scenario],
        args.users,
        args.spawn_rate,
        args.duration,
        args.workers,
        args.arrival_rate,
        args.documents,
        args.report_dir,
    )


def stack_endpoints(run_dir: RunDirectory) -> StackEndpoints:
    stack = StackEndpoints(healthy_stack(run_dir), run_dir.platform_secret())
    if not stack.envoy_http.startswith(tuple(f"http://{host}:" for host in LOOPBACK)):
        raise SystemExit(f"load runs target loopback addresses only, not {stack.envoy_http}")
    return stack


async def seed(stack: StackEndpoints, run: str, options: RunOptions) -> Manifest:
    envoy = transport_for(NATIVE_GRPC, stack.envoy_http, stack.envoy_grpc)
    try:
        plan = options.scenario.plan(options.users, options.documents)
        return await Seeder(envoy, run, options.scenario.name, SEED).seed_plan(plan)
    finally:
        await envoy.aclose()


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def locust_commands(options: RunOptions, folder: Path) -> list[list[str]]:
    """The Locust processes of the run: one, or a master and its workers."""
    common = [sys.executable, "-m", "locust", "-f", str(options.scenario.locustfile), "--loglevel", "WARNING"]
    main = [
        *common,
        "--headless",
        "--users",
        str(options.users),
        "--spawn-rate",
        str(options.spawn_rate),
        "--run-time",
        f"{options.duration_s}s",
        "--stop-timeout",
        "10",
        "--csv",
        str(folder / "locust"),
        "--csv-full-history",
        "--html",
        str(folder / "locust-report.html"),
        "--only-summary",
        "--logfile",
        str(folder / "locust.log"),
    ]
    if not options.workers:
        return [main]
    port = str(free_loopback_port())
    master = [
        *main,
        "--master",
        "--master-bind-host",
        "127.0.0.1",
        "--master-bind-port",
        port,
        "--expect-workers",
        str(options.workers),
        "--expect-workers-max-wait",
        "60",
    ]
    workers = [
        [*common, "--worker", "--master-host", "127.0.0.1", "--master-port", port, "--logfile", str(log)]
        for log in (folder / f"worker-{n}.log" for n in range(options.workers))
    ]
    return [master, *workers]


def run_locust(options: RunOptions, folder: Path, environment: dict[str, str]) -> int:
    """Run the processes to their end (or kill them STOP_GRACE_S after the run should have
    ended); Locust's own summary goes to `summary.txt`. Returns the master's exit code."""
    commands = locust_commands(options, folder)
    summary = (folder / "summary.txt").open("w")
    processes = [
        subprocess.Popen(
            command,
            env=environment,
            stdout=summary if n == 0 else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for n, command in enumerate(commands)
    ]
    deadline = time.monotonic() + options.duration_s + options.users / options.spawn_rate + 60 + STOP_GRACE_S
    try:
        code = processes[0].wait(timeout=max(1.0, deadline - time.monotonic()))
        for worker in processes[1:]:
            worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        code = 124
        print("Locust did not stop by itself: stopped", file=sys.stderr)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        summary.close()
    return code


def main_run(options: RunOptions) -> int:
    run_dir = RunDirectory()
    stack = stack_endpoints(run_dir)
    run = f"{options.scenario.name}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    folder = options.report_dir or run_dir.root / "load" / run
    folder.mkdir(parents=True, exist_ok=True)

    print(f"load run {run}: {options.scenario.name} ({options.scenario.description})", flush=True)
    manifest = asyncio.run(seed(stack, run, options))
    manifest_path = folder / "seed.json"
    manifest.save(manifest_path)
    print(
        f"seeded {len(manifest.people)} people, {len(manifest.spaces)} spaces, "
        f"{sum(len(s.documents) for s in manifest.spaces)} documents ({manifest.chunks} chunks, indexed), "
        f"{sum(len(s.nodes) for s in manifest.spaces)} canvas cards in {manifest.seconds:.1f} s",
        flush=True,
    )

    loop = "closed loop" if not options.arrival_rate else f"open loop, {options.arrival_rate:g} actions/s"
    processes = f"{options.workers} workers" if options.workers else "one process"
    print(f"running {options.users} users ({loop}, {processes}) for {options.duration_s} s ...", flush=True)
    environment = {
        **os.environ,
        "KP_LOAD_RUN": run,
        "KP_LOAD_SCENARIO": options.scenario.name,
        "KP_LOAD_MANIFEST": str(manifest_path),
        "KP_LOAD_HTTP": stack.envoy_http,
        "KP_LOAD_GRPC": stack.envoy_grpc,
        "KP_LOAD_ARRIVALS_PER_USER_S": str(options.arrival_rate / options.users),
        "KP_LOAD_WORKERS": str(options.workers),
    }
    began_ns = time.time_ns()
    locust_code = run_locust(options, folder, environment)
    stats_csv = folder / "locust_stats.csv"
    if not stats_csv.exists():
        print(f"Locust left no statistics (exit code {locust_code}); see {folder / 'locust.log'}", file=sys.stderr)
        return 1

    objectives = load_objectives(options.scenario.slo_file)
    measured = measured_from_csv(stats_csv)
    checks = verdict(objectives, measured, options.users)
    table = render(checks)
    (folder / "slo.txt").write_text(table + "\n")

    plots = plot_history(folder / "locust_stats_history.csv", folder / "plots")
    asyncio.run(flush_receiver(stack.otlp_http))
    result, traces = trace_breakdown(stack.clickhouse_url, run, began_ns)
    write_trace_report(folder, result, traces)

    requests = measured.get("Aggregated")
    print()
    print(f"SLOs of {options.scenario.name} ({options.scenario.slo_file.relative_to(HERE.parent)}):")
    print(table)
    for failing in unexpected_failures(objectives, measured):
        print(f"  failures in {failing.request}: {failing.failures} of {failing.count}")
    if requests is not None:
        print(f"requests: {requests.count:,}, failures: {requests.failures:,}, {requests.rps:.1f} requests/s")
    print(f"traces of the run: {traces:,}; the most frequent requests, and the slowest trace of each:")
    for kind in result.kinds[:TRACE_KINDS_SHOWN]:
        print(
            f"  {kind.name:<44} {kind.count:>6,}  p50 {kind.p50_ms:7.1f} ms  p99 {kind.p99_ms:7.1f} ms"
            f"  python -m observability trace {kind.slowest_trace}"
        )
    print(f"report: {folder} (locust-report.html, traces.md, slo.txt, {len(plots)} plots in plots/)")
    met = all(check.ok for check in checks)
    print("verdict: every SLO met" if met else "verdict: SLO BREACHED")
    return 0 if met else 1
