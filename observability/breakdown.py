"""Where the time of a set of requests went, from their traces: per kind of request, each
(service, span name) with its count, its p50/p99 duration, and its share of the requests' time.

The share counts a span's *own* time (its duration less the time covered by its children), and
only within its request: from the start of the trace's root span to its end. Work a request
sets off for later (an event consumed after the answer was sent) shows its durations but takes
no share. So each request kind's shares add up to 100 %.

A request's kind is the first span of a service (not the edge) under the root: e.g.
"vector.v1.VectorService/Search", or "canvas move_node" for a session's message. A WebSocket's
upgrade request lasts as long as its session: it is listed, but not among the slowest requests.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from observability.traces import Span, TraceTree

EDGE_SERVICES = frozenset({"envoy"})
SESSION = re.compile(r"^WS \S+ connect$")  # the kit's span of a WebSocket upgrade


@dataclass(frozen=True)
class RequestKind:
    name: str
    count: int
    errors: int
    p50_ms: float
    p99_ms: float
    slowest_trace: str  # the id of its slowest trace


@dataclass(frozen=True)
class SpanShare:
    request: str
    service: str
    span_name: str
    count: int
    p50_ms: float
    p99_ms: float
    share: float  # of the request kind's total time, 0..1


@dataclass(frozen=True)
class Breakdown:
    kinds: list[RequestKind]
    shares: list[SpanShare]  # per kind, largest share first
    slowest: list[tuple[str, str, float]]  # (trace id, request kind, ms), slowest first
    errors: list[tuple[str, str, str, int, str]]  # (service, span, message, count, one trace id)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def request_kind(tree: TraceTree, root: Span) -> str:
    """The first span of a service under the root (breadth first), else the root's own name."""
    level = [root]
    while level:
        for item in level:
            if item.service not in EDGE_SERVICES:
                return item.name
        level = [child for item in level for child in tree.children(item.span_id)]
    return root.name


def own_time_ns(tree: TraceTree, item: Span, window: tuple[int, int]) -> int:
    """The span's time within `window` (ns since epoch) not covered by any of its children."""
    start, end = max(item.start_ns, window[0]), min(item.end_ns, window[1])
    if end <= start:
        return 0
    covered = 0
    cursor = start
    for child in sorted(tree.children(item.span_id), key=lambda c: c.start_ns):
        child_start, child_end = max(child.start_ns, cursor), min(child.end_ns, end)
        if child_end > child_start:
            covered += child_end - child_start
            cursor = child_end
    return end - start - covered


def breakdown(trees: Iterable[TraceTree], slowest: int = 10) -> Breakdown:
    durations: dict[str, list[float]] = defaultdict(list)
    slowest_of: dict[str, tuple[float, str]] = {}
    errors_by_kind: dict[str, int] = defaultdict(int)
    span_durations: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    own: dict[tuple[str, str, str], int] = defaultdict(int)
    total_ns: dict[str, int] = defaultdict(int)
    roots: list[tuple[float, str, str]] = []
    errors: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for tree in trees:
        for root in tree.roots()[:1]:
            kind = request_kind(tree, root)
            window = (root.start_ns, root.end_ns)
            durations[kind].append(root.duration_ms)
            slowest_of[kind] = max(slowest_of.get(kind, (0.0, "")), (root.duration_ms, tree.trace_id))
            total_ns[kind] += root.duration_ns
            if not SESSION.match(kind):
                roots.append((root.duration_ms, tree.trace_id, kind))
            if tree.errors():
                errors_by_kind[kind] += 1
            for item in tree.spans:
                key = (kind, item.service, item.name)
                span_durations[key].append(item.duration_ms)
                own[key] += own_time_ns(tree, item, window)
            for item in tree.errors():
                errors[(item.service, item.name, item.status_message)].append(tree.trace_id)
    kinds = sorted(
        (
            RequestKind(
                kind,
                len(values),
                errors_by_kind[kind],
                statistics.median(values),
                percentile(values, 0.99),
                slowest_of[kind][1],
            )
            for kind, values in durations.items()
        ),
        key=lambda k: -k.count,
    )
    shares = [
        SpanShare(
            kind,
            service,
            name,
            len(values),
            statistics.median(values),
            percentile(values, 0.99),
            own[(kind, service, name)] / total_ns[kind] if total_ns[kind] else 0.0,
        )
        for (kind, service, name), values in span_durations.items()
    ]
    order = {k.name: n for n, k in enumerate(kinds)}
    shares.sort(key=lambda s: (order[s.request], -s.share, -s.p99_ms))
    return Breakdown(
        kinds=kinds,
        shares=shares,
        slowest=[(trace_id, kind, ms) for ms, trace_id, kind in sorted(roots, reverse=True)[:slowest]],
        errors=sorted(
            ((service, name, message, len(ids), ids[0]) for (service, name, message), ids in errors.items()),
            key=lambda e: -e[3],
        ),
    )


def render_markdown(result: Breakdown, traces: int, shares_per_kind: int = 8) -> str:
    """The breakdown as Markdown tables: request kinds, where each one's time went, the slowest
    traces (to open with `python -m observability trace ID`) and error spans."""
    lines = [f"Traces of the run: {traces:,} (sampled when there are more).", ""]
    lines += ["| request | traces | with errors | p50 | p99 | slowest trace |", "|---|---:|---:|---:|---:|---|"]
    lines += [
        f"| {k.name} | {k.count} | {k.errors} | {k.p50_ms:.1f} ms | {k.p99_ms:.1f} ms | `{k.slowest_trace}` |"
        for k in result.kinds
    ]
    for kind in result.kinds:
        lines += ["", f"### {kind.name}", "", "| service | span | count | p50 | p99 | share of the time |"]
        lines += ["|---|---|---:|---:|---:|---:|"]
        rows = [s for s in result.shares if s.request == kind.name][:shares_per_kind]
        lines += [
            f"| {s.service} | {s.span_name} | {s.count} | {s.p50_ms:.2f} ms | {s.p99_ms:.2f} ms | {s.share:.1%} |"
            for s in rows
        ]
    lines += ["", "### Slowest traces", "", "| trace id | request | ms |", "|---|---|---:|"]
    lines += [f"| `{trace_id}` | {kind} | {ms:.1f} |" for trace_id, kind, ms in result.slowest]
    lines += ["", "### Error spans", ""]
    if not result.errors:
        lines.append("None.")
    else:
        lines += ["| service | span | message | count | a trace |", "|---|---|---|---:|---|"]
        lines += [f"| {s} | {n} | {m} | {c} | `{t}` |" for s, n, m, c, t in result.errors]
    return "\n".join(lines) + "\n"
