"""Reading traces back: a trace as a tree, and the questions asked of many traces.

`TraceTree` is pure (built from rows, rendered as text, searched by matchers); `TraceStore`
asks ClickHouse, over the exporter's schema, for one trace, the service dependency graph,
latency percentiles, error spans, slowest traces and broken traces (spans whose parent never
arrived). The CLI (`python -m observability`) and the pytest API sit on top.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from observability.clickhouse import TRACES_DATABASE, TRACES_TABLE

TABLE = f"{TRACES_DATABASE}.{TRACES_TABLE}"
TRACE_ID_TABLE = f"{TRACES_DATABASE}.{TRACES_TABLE}_trace_id_ts"
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    service: str
    start: datetime
    duration_ns: int
    status_code: str
    status_message: str
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def duration_ms(self) -> float:
        return self.duration_ns / 1e6

    @property
    def start_ns(self) -> int:
        """Nanoseconds since the epoch (to the microsecond the store's datetimes keep)."""
        return calendar.timegm(self.start.utctimetuple()) * 1_000_000_000 + self.start.microsecond * 1000

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.duration_ns

    @property
    def is_error(self) -> bool:
        return self.status_code == "Error"

    def describe(self) -> str:
        status = f" ERROR {self.status_message}".rstrip() if self.is_error else ""
        return f"{self.service}: {self.name} [{self.kind}] {self.duration_ms:.2f} ms{status}"


@dataclass(frozen=True)
class SpanMatch:
    """Which spans count: every given field must match (name is a regular expression)."""

    service: str | None = None
    name: str | None = None
    kind: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)

    def matches(self, span: Span) -> bool:
        return (
            (self.service is None or span.service == self.service)
            and (self.name is None or re.search(self.name, span.name) is not None)
            and (self.kind is None or span.kind == self.kind)
            and all(span.attributes.get(key) == value for key, value in self.attributes.items())
        )

    def __str__(self) -> str:
        parts = [
            f"{key}={value!r}"
            for key, value in (("service", self.service), ("name", self.name), ("kind", self.kind))
            if value is not None
        ]
        parts += [f"{key}={value!r}" for key, value in self.attributes.items()]
        return f"span({', '.join(parts)})"


def span(service: str | None = None, name: str | None = None, kind: str | None = None, **attributes: str) -> SpanMatch:
    return SpanMatch(service, name, kind, attributes)


class TraceTree:
    """The spans of one trace, arranged by parent."""

    def __init__(self, spans: Iterable[Span]) -> None:
        self.spans = sorted(spans, key=lambda s: (s.start, s.span_id))
        self.by_id = {s.span_id: s for s in self.spans}
        self._children: dict[str, list[Span]] = {}
        for item in self.spans:
            self._children.setdefault(item.parent_span_id, []).append(item)

    @property
    def trace_id(self) -> str:
        return self.spans[0].trace_id if self.spans else ""

    def children(self, span_id: str) -> list[Span]:
        return self._children.get(span_id, [])

    def roots(self) -> list[Span]:
        """Spans with no parent, or whose parent is not in the trace."""
        return [s for s in self.spans if not s.parent_span_id or s.parent_span_id not in self.by_id]

    def orphans(self) -> list[Span]:
        """Spans naming a parent that never arrived."""
        return [s for s in self.spans if s.parent_span_id and s.parent_span_id not in self.by_id]

    def unreachable(self) -> list[Span]:
        """Spans no root leads to: their parent ids form a cycle (corrupt ids)."""
        reached: set[str] = set()
        pending = [root.span_id for root in self.roots()]
        while pending:
            span_id = pending.pop()
            if span_id not in reached:
                reached.add(span_id)
                pending.extend(child.span_id for child in self.children(span_id))
        return [item for item in self.spans if item.span_id not in reached]

    def is_connected(self) -> bool:
        """One root, no span waiting for a missing parent, and every span under that root."""
        return len(self.roots()) == 1 and not self.orphans() and not self.unreachable()

    def services(self) -> set[str]:
        return {s.service for s in self.spans}

    def find(self, match: SpanMatch) -> list[Span]:
        return [s for s in self.spans if match.matches(s)]

    def errors(self) -> list[Span]:
        return [s for s in self.spans if s.is_error]

    def ancestors(self, item: Span) -> list[Span]:
        chain = []
        current = self.by_id.get(item.parent_span_id)
        while current is not None and current not in chain and current is not item:
            chain.append(current)
            current = self.by_id.get(current.parent_span_id)
        return chain

    def has_path(self, steps: Sequence[SpanMatch]) -> bool:
        """Some span matches the last step and its ancestors match the earlier steps, in order
        (other spans may sit between them)."""
        if not steps:
            return True
        for candidate in self.find(steps[-1]):
            remaining = list(steps[:-1])
            for ancestor in self.ancestors(candidate):
                if remaining and remaining[-1].matches(ancestor):
                    remaining.pop()
            if not remaining:
                return True
        return False

    def render(self) -> str:
        """The tree as indented text with durations and status; orphans are marked."""
        if not self.spans:
            return "(no spans)"
        lines = [f"trace {self.trace_id}: {len(self.spans)} spans, services {', '.join(sorted(self.services()))}"]
        origin = self.spans[0].start

        def walk(item: Span, depth: int) -> None:
            offset_ms = (item.start - origin).total_seconds() * 1000
            orphan = "  (parent missing)" if item.parent_span_id and item.parent_span_id not in self.by_id else ""
            lines.append(f"{'  ' * depth}├─ +{offset_ms:7.1f} ms  {item.describe()}{orphan}")
            for child in self.children(item.span_id):
                walk(child, depth + 1)

        for root in self.roots():
            walk(root, 0)
        cycle = self.unreachable()
        if cycle:
            lines.append(f"{len(cycle)} span(s) in a parent cycle (corrupt ids):")
            lines += [f"  {item.describe()}" for item in cycle]
        return "\n".join(lines)


# ------------------------------------------------------------- the store


@dataclass(frozen=True)
class Edge:
    parent_service: str
    child_service: str
    calls: int
    errors: int

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


@dataclass(frozen=True)
class Latency:
    service: str
    span_name: str  # "" when grouped by service only
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


SPAN_COLUMNS = (
    "TraceId, SpanId, ParentSpanId, SpanName, SpanKind, ServiceName, Timestamp, Duration, "
    "StatusCode, StatusMessage, SpanAttributes"
)


# The traces begun after %(since)s (ns) in which a span has attribute %(key)s = %(value)s; the
# caller closes the subquery (after an ORDER BY / LIMIT of its own, if any).
_MARKED_TRACES = f"""Timestamp >= fromUnixTimestamp64Nano(toInt64(%(since)s)) AND TraceId IN (
    SELECT DISTINCT TraceId FROM {TABLE}
    WHERE Timestamp >= fromUnixTimestamp64Nano(toInt64(%(since)s)) AND SpanAttributes[%(key)s] = %(value)s"""


def span_of(row: Sequence[Any]) -> Span:
    return Span(
        trace_id=row[0],
        span_id=row[1],
        parent_span_id=row[2],
        name=row[3],
        kind=row[4],
        service=row[5],
        start=row[6],
        duration_ns=int(row[7]),
        status_code=row[8],
        status_message=row[9],
        attributes=dict(row[10]),
    )


class TraceStore:
    """Queries over otel_traces. Windows are "the last N seconds" (server clock)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def _rows(self, sql: str, parameters: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        rows: Sequence[Sequence[Any]] = self.client.query(sql, parameters=dict(parameters)).result_rows
        return rows

    def trace(self, trace_id: str) -> TraceTree:
        if not TRACE_ID.match(trace_id):
            raise ValueError(f"{trace_id!r} is not a trace id (32 lowercase hex characters)")
        # The trace-id table bounds the time range, so the main table is read by partition.
        sql = f"""
            WITH (SELECT (min(Start), max(End)) FROM {TRACE_ID_TABLE} WHERE TraceId = %(id)s) AS bounds
            SELECT {SPAN_COLUMNS} FROM {TABLE}
            WHERE TraceId = %(id)s
              AND Timestamp >= bounds.1 - INTERVAL 1 SECOND AND Timestamp <= bounds.2 + INTERVAL 1 SECOND
        """
        return TraceTree(span_of(row) for row in self._rows(sql, {"id": trace_id}))

    def dependencies(self, window_s: int = 900) -> list[Edge]:
        sql = f"""
            SELECT parent.ServiceName, child.ServiceName, count(), countIf(child.StatusCode = 'Error')
            FROM {TABLE} AS child
            INNER JOIN {TABLE} AS parent ON child.TraceId = parent.TraceId AND child.ParentSpanId = parent.SpanId
            WHERE child.Timestamp >= now64(9) - INTERVAL %(w)s SECOND
              AND parent.Timestamp >= now64(9) - INTERVAL %(w)s + 60 SECOND
              AND parent.ServiceName != child.ServiceName
            GROUP BY parent.ServiceName, child.ServiceName
            ORDER BY count() DESC
        """
        return [Edge(r[0], r[1], int(r[2]), int(r[3])) for r in self._rows(sql, {"w": window_s})]

    def latency(
        self, window_s: int = 900, by_span: bool = False, service: str | None = None, root: str | None = None
    ) -> list[Latency]:
        """Percentiles per service (or per span name); with `root`, only the spans of traces
        whose root span has that name: where one kind of request spends its time."""
        name = "SpanName" if by_span else "''"
        sql = f"""
            SELECT ServiceName, {name} AS name, count(),
                   quantiles(0.5, 0.9, 0.99)(Duration) AS q, max(Duration)
            FROM {TABLE}
            WHERE Timestamp >= now64(9) - INTERVAL %(w)s SECOND
              AND (%(service)s = '' OR ServiceName = %(service)s)
              AND (%(root)s = '' OR TraceId IN (
                  SELECT TraceId FROM {TABLE}
                  WHERE Timestamp >= now64(9) - INTERVAL %(w)s SECOND
                    AND ParentSpanId = '' AND SpanName = %(root)s))
            GROUP BY ServiceName, name
            ORDER BY q[3] DESC
        """
        rows = self._rows(sql, {"w": window_s, "service": service or "", "root": root or ""})
        return [
            Latency(r[0], r[1], int(r[2]), r[3][0] / 1e6, r[3][1] / 1e6, r[3][2] / 1e6, int(r[4]) / 1e6) for r in rows
        ]

    def traces_with(self, key: str, value: str, since_ns: int, limit: int = 5000) -> list[TraceTree]:
        """Whole traces, begun after `since_ns` (since the epoch), in which some span has the
        attribute `key` = `value` (a load run's mark, for instance); an even sample of `limit`
        when there are more."""
        sql = f"SELECT {SPAN_COLUMNS} FROM {TABLE} WHERE {_MARKED_TRACES} ORDER BY cityHash64(TraceId) LIMIT %(limit)s)"
        spans: dict[str, list[Span]] = {}
        for row in self._rows(sql, {"since": since_ns, "key": key, "value": value, "limit": limit}):
            item = span_of(row)
            spans.setdefault(item.trace_id, []).append(item)
        return [TraceTree(items) for items in spans.values()]

    def span_count_with(self, key: str, value: str, since_ns: int) -> int:
        """How many spans the traces of `traces_with` hold in all: to see when they stop growing."""
        sql = f"SELECT count() FROM {TABLE} WHERE {_MARKED_TRACES})"
        [[count]] = self._rows(sql, {"since": since_ns, "key": key, "value": value})
        return int(count)

    def error_spans(self, window_s: int = 900, limit: int = 50) -> list[Span]:
        sql = f"""
            SELECT {SPAN_COLUMNS} FROM {TABLE}
            WHERE Timestamp >= now64(9) - INTERVAL %(w)s SECOND AND StatusCode = 'Error'
            ORDER BY Timestamp DESC LIMIT %(limit)s
        """
        return [span_of(row) for row in self._rows(sql, {"w": window_s, "limit": limit})]

    def slowest(self, window_s: int = 900, limit: int = 10) -> list[Span]:
        """The slowest root spans (whole requests) of the window."""
        sql = f"""
            SELECT {SPAN_COLUMNS} FROM {TABLE}
            WHERE Timestamp >= now64(9) - INTERVAL %(w)s SECOND AND ParentSpanId = ''
            ORDER BY Duration DESC LIMIT %(limit)s
        """
        return [span_of(row) for row in self._rows(sql, {"w": window_s, "limit": limit})]

    def broken_traces(self, window_s: int = 900, limit: int = 50) -> list[Span]:
        """Spans whose parent span never arrived (within the window plus a minute of slack)."""
        sql = f"""
            SELECT {SPAN_COLUMNS} FROM {TABLE} AS child
            WHERE child.Timestamp >= now64(9) - INTERVAL %(w)s SECOND AND child.ParentSpanId != ''
              AND (child.TraceId, child.ParentSpanId) NOT IN (
                  SELECT TraceId, SpanId FROM {TABLE}
                  WHERE Timestamp >= now64(9) - INTERVAL %(w)s + 60 SECOND)
            ORDER BY child.Timestamp DESC LIMIT %(limit)s
        """
        return [span_of(row) for row in self._rows(sql, {"w": window_s, "limit": limit})]
