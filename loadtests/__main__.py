"""`python -m loadtests`: load scenarios with Locust, ending in an SLO verdict and a report.

    python -m loadtests scenarios
    python -m loadtests run SCENARIO [--users N] [--spawn-rate R] [--duration D] [--workers W]
                                     [--arrival-rate A] [--documents N] [--report-dir PATH]

See loadtests.runner. The benchmarks (`python -m loadtests.bench_*`) are separate commands.
"""

from __future__ import annotations

import argparse

import simulations  # noqa: F401  (before gRPC loads: the stack may be started from here, by a fork)
from loadtests.runner import SCENARIOS, add_run_arguments, main_run, options_from


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("scenarios", help="list the load scenarios")
    add_run_arguments(commands.add_parser("run", help="run a load scenario to its verdict"))
    args = parser.parse_args(argv)
    if args.command == "scenarios":
        for scenario in SCENARIOS.values():
            print(f"{scenario.name:<14} {scenario.description}")
        return 0
    return main_run(options_from(args))


if __name__ == "__main__":
    raise SystemExit(main())
