"""Command line: `python -m simulations up|status|down|run|bench|logs`.

up [--detach] [--keep-data]   start the stack (foreground: Ctrl-C stops it)
status [--json]               what runs, where, and whether it answers its probe now
down                          stop the stack; nothing keeps running or listening
run SCENARIO                  run a scenario (starts the stack detached when needed)
bench startup [--repeat N]    cold-start and teardown time per component
logs COMPONENT [--lines N]    the end of a component's log
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from simulations.components.base import ComponentContext, NotReady
from simulations.platform import PLATFORM
from simulations.rundir import ComponentRecord, RunDirectory, StackState
from simulations.supervisor import healthy_stack, running_state, start_detached, stop_stack, supervise
from simulations.topology import Topology


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # aiokafka reports routine retries (a group coordinator still starting) as errors.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    parser = build_parser()
    args = parser.parse_args(argv)
    run_dir = RunDirectory()
    handler = args.handler
    result: int = handler(args, run_dir, PLATFORM)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulations",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start the stack")
    up.add_argument("--detach", action="store_true", help="return once healthy; the stack keeps running")
    up.add_argument("--keep-data", action="store_true", help="keep the data of the previous run")
    up.add_argument("--only", default="", metavar="NAMES", help="comma-separated components (plus what they depend on)")
    up.set_defaults(handler=command_up)

    status = commands.add_parser("status", help="show the stack")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=command_status)

    down = commands.add_parser("down", help="stop the stack")
    down.set_defaults(handler=command_down)

    run = commands.add_parser("run", help="run a scenario against the stack")
    run.add_argument("scenario", help="scenario name, e.g. smoke")
    run.set_defaults(handler=command_run)

    bench = commands.add_parser("bench", help="benchmarks that print their figures")
    bench.add_argument("name", choices=["startup"])
    bench.add_argument("--repeat", type=int, default=3)
    bench.set_defaults(handler=command_bench)

    logs = commands.add_parser("logs", help="the end of a component's log")
    logs.add_argument("component")
    logs.add_argument("--lines", type=int, default=40)
    logs.set_defaults(handler=command_logs)
    return parser


def command_up(args: argparse.Namespace, run_dir: RunDirectory, topology: Topology) -> int:
    if running_state(run_dir) is not None:
        print(f"a stack is already running from {run_dir.root}; `python -m simulations down` stops it")
        return 1
    if args.only:
        topology = topology.subset(args.only.split(","))
    if args.detach:
        forwarded = [
            *(["--keep-data"] if args.keep_data else []),
            *(["--only", args.only] if args.only else []),
        ]
        try:
            state = start_detached(run_dir, forwarded)
        except RuntimeError as error:
            print(f"stack failed to start: {error}", file=sys.stderr)
            return 1
        print(render_status(state, probes=None))
        print("stack is up in the background; `python -m simulations down` stops it")
        return 0
    return asyncio.run(supervise(topology, run_dir, keep_data=args.keep_data))


def command_status(args: argparse.Namespace, run_dir: RunDirectory, topology: Topology) -> int:
    state = running_state(run_dir)
    if state is None:
        if args.json:
            print(json.dumps({"running": False}))
        else:
            print("no stack is running")
        return 3
    probes = asyncio.run(probe_all(state, topology, run_dir))
    if args.json:
        document: dict[str, Any] = {"running": True, **state.to_json()}
        for name, answer in probes.items():
            document["components"][name]["probe"] = answer
        print(json.dumps(document, indent=2))
    else:
        print(render_status(state, probes))
    return 0 if all(answer == "ok" for answer in probes.values()) else 1


def command_down(args: argparse.Namespace, run_dir: RunDirectory, topology: Topology) -> int:
    if run_dir.read_state() is None:
        print("no stack is running")
        return 0
    leftovers = stop_stack(run_dir)
    if leftovers:
        print("stopped, but some things remain:\n  " + "\n  ".join(leftovers), file=sys.stderr)
        return 1
    print("stack stopped; no process or port left behind")
    return 0


def command_run(args: argparse.Namespace, run_dir: RunDirectory, topology: Topology) -> int:
    from simulations.scenarios import run_scenario

    try:
        state = healthy_stack(run_dir)
    except RuntimeError as error:
        print(f"stack failed to start: {error}", file=sys.stderr)
        return 1
    code = run_scenario(args.scenario, state, run_dir.platform_secret())
    print("the stack keeps running; `python -m simulations down` stops it")
    return code


def command_bench(args: argparse.Namespace, run_dir: RunDirectory, topology: Topology) -> int:
    from simulations.bench import bench_startup

    if running_state(run_dir) is not None:
        print("stop the running stack first (`python -m simulations down`): the benchmark uses its ports")
        return 1
    return bench_startup(topology, repeat=args.repeat)


def command_logs(args: argparse.Namespace, run_dir: RunDirectory, topology: Topology) -> int:
    path = run_dir.log_path(args.component)
    if not path.exists():
        print(f"no log for {args.component!r} at {path}")
        return 1
    print("\n".join(path.read_text(errors="replace").splitlines()[-args.lines :]))
    return 0


# ------------------------------------------------------------------ status


async def probe_all(state: StackState, topology: Topology, run_dir: RunDirectory) -> dict[str, str]:
    async def probe(record: ComponentRecord) -> str:
        try:
            cls = topology.get(record.name)
        except KeyError:
            return "unknown component"
        ctx = ComponentContext(
            name=record.name,
            data_dir=run_dir.data_dir(record.name),
            cache_dir=run_dir.cache_dir,
            ports=dict(record.ports),
            endpoints_of=state.endpoints(),
        )
        try:
            await asyncio.wait_for(cls(ctx).probe(), timeout=5)
        except (NotReady, TimeoutError) as error:
            return f"not ready: {error}"
        return "ok"

    records = list(state.components.values())
    answers = await asyncio.gather(*(probe(record) for record in records))
    return {record.name: answer for record, answer in zip(records, answers, strict=True)}


def render_status(state: StackState, probes: dict[str, str] | None) -> str:
    rows = [("component", "version", "pid", "ports", "ready after", "probe")]
    for record in state.components.values():
        ports = ", ".join(f"{role} {port}" for role, port in record.ports.items())
        answer = probes.get(record.name, "?") if probes is not None else ("ok" if record.healthy else "starting")
        rows.append((record.name, record.version, str(record.pid), ports, f"{record.ready_after_s:.2f}s", answer))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.append(f"phase: {state.phase}; supervisor pid {state.supervisor_pid}")
    return "\n".join(lines)
