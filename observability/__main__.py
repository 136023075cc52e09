"""`python -m observability ...`: read the stack's traces from ClickHouse in the terminal.

    trace TRACE_ID                      one trace as a tree, with durations and status
    services [--since 15m]              who calls whom: edges with call counts and error rates
    latency [--since 15m] [--by-span] [--service NAME] [--root NAME]
                                        p50/p90/p99 per service (or per span name), of
                                        every trace or of those whose root span is NAME
    slowest [--since 15m] [--limit 10]  the slowest requests (root spans)
    errors [--since 15m] [--limit 20]   error spans, newest first
    broken [--since 15m]                spans whose parent never arrived

The ClickHouse address is the local stack's (KP_CLICKHOUSE_URL, as for the services), or
--clickhouse-url.
"""

from __future__ import annotations

import argparse
import re
import sys

from observability.clickhouse import connect
from observability.traces import Edge, Latency, Span, TraceStore
from services.kit.settings import ServiceSettings

DURATION = re.compile(r"^(\d+)([smhd]?)$")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(text: str) -> int:
    """'90', '90s', '15m', '2h', '1d' → seconds."""
    match = DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 15m, 2h or 1d")
    return int(match[1]) * UNIT_SECONDS[match[2]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m observability", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clickhouse-url", help="default: the local stack's ClickHouse (KP_CLICKHOUSE_URL)")
    commands = parser.add_subparsers(dest="command", required=True)
    trace = commands.add_parser("trace", help="one trace as a tree")
    trace.add_argument("trace_id")
    for name in ("services", "latency", "slowest", "errors", "broken"):
        command = commands.add_parser(name)
        command.add_argument("--since", type=seconds, default=900, help="window, e.g. 90s, 15m, 2h (default 15m)")
        if name in ("slowest", "errors", "broken"):
            command.add_argument("--limit", type=int, default=20)
        if name == "latency":
            command.add_argument("--by-span", action="store_true")
            command.add_argument("--service")
            command.add_argument("--root", help="only traces whose root span has this name")
    return parser


def render_edges(edges: list[Edge]) -> str:
    if not edges:
        return "no cross-service calls in this window"
    lines = [f"{'caller':<16} {'callee':<16} {'calls':>8} {'errors':>8} {'error rate':>10}"]
    lines += [
        f"{e.parent_service:<16} {e.child_service:<16} {e.calls:>8} {e.errors:>8} {e.error_rate:>9.1%}" for e in edges
    ]
    return "\n".join(lines)


def render_latency(rows: list[Latency]) -> str:
    if not rows:
        return "no spans in this window"
    lines = [f"{'service':<16} {'span':<40} {'count':>7} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'max ms':>9}"]
    lines += [
        f"{r.service:<16} {r.span_name[:40]:<40} {r.count:>7} {r.p50_ms:>9.2f} {r.p90_ms:>9.2f} "
        f"{r.p99_ms:>9.2f} {r.max_ms:>9.2f}"
        for r in rows
    ]
    return "\n".join(lines)


def render_spans(spans: list[Span], empty: str) -> str:
    if not spans:
        return empty
    return "\n".join(f"{s.start:%H:%M:%S.%f} {s.trace_id}  {s.describe()}" for s in spans)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    store = TraceStore(connect(args.clickhouse_url or ServiceSettings().clickhouse_url))
    if args.command == "trace":
        try:
            tree = store.trace(args.trace_id)
        except ValueError as error:
            print(error, file=sys.stderr)
            return 2
        if not tree.spans:
            print(f"no spans for trace {args.trace_id}")
            return 1
        print(tree.render())
        return 0
    if args.command == "services":
        print(render_edges(store.dependencies(args.since)))
    elif args.command == "latency":
        print(render_latency(store.latency(args.since, by_span=args.by_span, service=args.service, root=args.root)))
    elif args.command == "slowest":
        print(render_spans(store.slowest(args.since, args.limit), "no requests in this window"))
    elif args.command == "errors":
        print(render_spans(store.error_spans(args.since, args.limit), "no error spans in this window"))
    elif args.command == "broken":
        print(render_spans(store.broken_traces(args.since, args.limit), "no broken traces in this window"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
