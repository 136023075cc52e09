"""TraceStore's queries and the `python -m observability` CLI against the stack's ClickHouse.

A small system of its own (services named for this test run, so parallel runs and the stack's
own traffic do not interfere) is described by synthetic OTLP spans sent through the real
receiver: A calls B, B calls C twice (once failing), and a span of C whose parent never arrives.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
from clickhouse_connect.driver.client import Client
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Status

from observability.clickhouse import connect
from observability.synthetic import attribute
from observability.traces import Latency, TraceStore, span
from simulations.endpoints import StackEndpoints

ROOT_DIR = Path(__file__).resolve().parents[2]
MS = 1_000_000
WINDOW_S = 300


def otlp_span(
    trace_id: bytes,
    parent: bytes,
    name: str,
    kind: trace_pb2.Span.SpanKind.ValueType,
    start_ns: int,
    duration_ms: int,
    error: str | None = None,
) -> trace_pb2.Span:
    return trace_pb2.Span(
        trace_id=trace_id,
        span_id=os.urandom(8),
        parent_span_id=parent,
        name=name,
        kind=kind,
        start_time_unix_nano=start_ns,
        end_time_unix_nano=start_ns + duration_ms * MS,
        attributes=[attribute("test.case", "trace-queries")],
        status=Status(code=Status.STATUS_CODE_ERROR, message=error)
        if error is not None
        else Status(code=Status.STATUS_CODE_OK),
    )


def export_request(spans_by_service: dict[str, list[trace_pb2.Span]]) -> trace_service_pb2.ExportTraceServiceRequest:
    return trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[attribute("service.name", service)]),
                scope_spans=[ScopeSpans(scope=InstrumentationScope(name="test_trace_queries"), spans=spans)],
            )
            for service, spans in spans_by_service.items()
        ]
    )


async def send(stack: StackEndpoints, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
    """Export through the receiver, then wait until everything it accepted is queryable."""
    async with grpc.aio.insecure_channel(stack.otlp_grpc) as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]
        reply = await stub.Export(request, timeout=10)
    assert reply.partial_success.rejected_spans == 0, reply.partial_success.error_message
    async with aiohttp.ClientSession() as session, session.post(f"{stack.otlp_http}/flush") as response:
        assert response.status == 200, await response.text()


@dataclass(frozen=True)
class System:
    a: str
    b: str
    c: str
    trace_id: str
    orphan_trace_id: str
    root: trace_pb2.Span
    failed: trace_pb2.Span
    orphan: trace_pb2.Span


@pytest.fixture(scope="module")
async def system(stack: StackEndpoints) -> System:
    tag = uuid.uuid4().hex[:8]
    a, b, c = (f"svc-{tag}-{letter}" for letter in "abc")
    trace_id, orphan_trace_id = uuid.uuid4().bytes, uuid.uuid4().bytes
    start = time.time_ns() - 2_000 * MS
    server, internal = trace_pb2.Span.SPAN_KIND_SERVER, trace_pb2.Span.SPAN_KIND_INTERNAL
    root = otlp_span(trace_id, b"", "GET /checkout", server, start, 900)
    reserve = otlp_span(trace_id, root.span_id, "Reserve", server, start + 50 * MS, 700)
    cache = otlp_span(trace_id, reserve.span_id, "cache lookup", internal, start + 60 * MS, 10)
    query = otlp_span(trace_id, reserve.span_id, "Query", server, start + 100 * MS, 200)
    failed = otlp_span(trace_id, reserve.span_id, "Query", server, start + 400 * MS, 300, error="disk full")
    orphan = otlp_span(orphan_trace_id, os.urandom(8), "Orphaned", server, start + 500 * MS, 50)
    await send(stack, export_request({a: [root], b: [reserve, cache], c: [query, failed, orphan]}))
    return System(a, b, c, trace_id.hex(), orphan_trace_id.hex(), root, failed, orphan)


@pytest.fixture(scope="module")
def store(stack: StackEndpoints) -> Iterator[TraceStore]:
    client: Client = connect(stack.clickhouse_url)
    yield TraceStore(client)
    client.close()


def run_cli(*args: str) -> str:
    """`python -m observability ...` as a user runs it (the stack's address from its state)."""
    argv = [sys.executable, "-m", "observability", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT_DIR, check=False)
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


# ----------------------------------------------------------------- one trace


def test_trace_is_the_connected_tree_of_the_request(system: System, store: TraceStore) -> None:
    tree = store.trace(system.trace_id)
    assert tree.trace_id == system.trace_id
    assert len(tree.spans) == 5
    assert tree.is_connected()
    assert tree.services() == {system.a, system.b, system.c}
    (root,) = tree.roots()
    assert root.span_id == system.root.span_id.hex()
    assert root.service == system.a
    assert root.duration_ms == 900
    assert root.kind == "Server"
    assert root.attributes["test.case"] == "trace-queries"
    assert [s.name for s in tree.children(root.span_id)] == ["Reserve"]
    assert tree.has_path([span(system.a), span(system.b, "Reserve"), span(system.c, "^Query$")])
    assert not tree.has_path([span(system.b, "cache"), span(system.c)])  # C hangs off Reserve, not the cache
    (error,) = tree.errors()
    assert (error.span_id, error.service, error.status_message) == (system.failed.span_id.hex(), system.c, "disk full")
    assert [s.status_code for s in tree.find(span(system.c))] == ["Ok", "Error"]


def test_trace_of_the_orphan_is_not_connected(system: System, store: TraceStore) -> None:
    tree = store.trace(system.orphan_trace_id)
    (orphan,) = tree.spans
    assert orphan.span_id == system.orphan.span_id.hex()
    assert orphan.parent_span_id == system.orphan.parent_span_id.hex()
    assert tree.orphans() == [orphan]
    assert not tree.is_connected()
    assert "(parent missing)" in tree.render()


def test_trace_of_an_unknown_or_malformed_id(store: TraceStore) -> None:
    assert store.trace(uuid.uuid4().hex).spans == []
    with pytest.raises(ValueError, match="not a trace id"):
        store.trace("not-a-trace-id")


# ----------------------------------------------------------------- across traces


def test_dependencies_count_calls_and_errors_between_services(system: System, store: TraceStore) -> None:
    ours = {system.a, system.b, system.c}
    edges = {
        (e.parent_service, e.child_service): e
        for e in store.dependencies(WINDOW_S)
        if {e.parent_service, e.child_service} & ours
    }
    assert set(edges) == {(system.a, system.b), (system.b, system.c)}  # no B→B edge for B's own span
    a_b, b_c = edges[system.a, system.b], edges[system.b, system.c]
    assert (a_b.calls, a_b.errors, a_b.error_rate) == (1, 0, 0.0)
    assert (b_c.calls, b_c.errors, b_c.error_rate) == (2, 1, 0.5)


def latency_by_span(store: TraceStore, service: str) -> dict[str, Latency]:
    rows = store.latency(WINDOW_S, by_span=True, service=service)
    assert all(row.service == service for row in rows)
    return {row.span_name: row for row in rows}


def test_latency_per_span(system: System, store: TraceStore) -> None:
    a = latency_by_span(store, system.a)
    assert set(a) == {"GET /checkout"}
    checkout = a["GET /checkout"]
    assert (checkout.count, checkout.p50_ms, checkout.p90_ms, checkout.p99_ms, checkout.max_ms) == (1, *[900] * 4)

    b = latency_by_span(store, system.b)
    assert {name: (row.count, row.p50_ms, row.max_ms) for name, row in b.items()} == {
        "Reserve": (1, 700, 700),
        "cache lookup": (1, 10, 10),
    }
    assert list(b) == ["Reserve", "cache lookup"], "slowest p99 first"

    c = latency_by_span(store, system.c)
    assert set(c) == {"Query", "Orphaned"}
    query = c["Query"]  # 200 ms and 300 ms
    assert query.count == 2
    assert query.max_ms == 300
    assert 200 <= query.p50_ms <= query.p90_ms <= query.p99_ms <= 300
    assert query.p50_ms == pytest.approx(250, abs=1)  # interpolated between the two
    assert query.p99_ms == pytest.approx(299, abs=1)
    assert (c["Orphaned"].count, c["Orphaned"].p99_ms) == (1, 50)


def test_latency_of_one_kind_of_request(system: System, store: TraceStore) -> None:
    """With a root name, only the spans of those traces count: the orphan of C (in another
    trace) drops out, both of C's queries stay."""
    rows = store.latency(WINDOW_S, by_span=True, service=system.c, root="GET /checkout")
    assert {row.span_name: row.count for row in rows} == {"Query": 2}
    assert store.latency(WINDOW_S, by_span=True, service=system.c, root="GET /nothing-of-this-name") == []


def test_latency_per_service(system: System, store: TraceStore) -> None:
    (row,) = store.latency(WINDOW_S, service=system.c)
    assert (row.service, row.span_name, row.count, row.max_ms) == (system.c, "", 3, 300)
    assert 50 <= row.p50_ms <= row.p99_ms <= 300
    everyone = {r.service for r in store.latency(WINDOW_S)}
    assert {system.a, system.b, system.c} <= everyone


def test_error_spans_include_the_failed_call(system: System, store: TraceStore) -> None:
    errors = store.error_spans(WINDOW_S, limit=10_000)
    assert all(s.is_error for s in errors)
    ours = [s for s in errors if s.service in {system.a, system.b, system.c}]
    assert [(s.span_id, s.name, s.status_message) for s in ours] == [
        (system.failed.span_id.hex(), "Query", "disk full")
    ]


def test_broken_traces_include_the_orphan_only(system: System, store: TraceStore) -> None:
    broken = store.broken_traces(WINDOW_S, limit=10_000)
    ours = [s for s in broken if s.service in {system.a, system.b, system.c}]
    assert [(s.trace_id, s.span_id) for s in ours] == [(system.orphan_trace_id, system.orphan.span_id.hex())]


def test_slowest_includes_the_root_and_no_child_spans(system: System, store: TraceStore) -> None:
    slowest = store.slowest(WINDOW_S, limit=10_000)
    assert all(s.parent_span_id == "" for s in slowest), "root spans only"
    durations = [s.duration_ns for s in slowest]
    assert durations == sorted(durations, reverse=True)
    ours = [s for s in slowest if s.service in {system.a, system.b, system.c}]
    assert [(s.span_id, s.duration_ms) for s in ours] == [(system.root.span_id.hex(), 900)]


async def test_a_parent_that_started_before_the_window_still_counts(stack: StackEndpoints, store: TraceStore) -> None:
    """A long-running parent (a batch job begun 55 s ago) of a call made just now: within a 30 s
    window the call is an edge, and not a broken trace, thanks to the parent's minute of slack."""
    tag = uuid.uuid4().hex[:8]
    batch, worker = f"svc-{tag}-batch", f"svc-{tag}-worker"
    trace_id, now = uuid.uuid4().bytes, time.time_ns()
    job = otlp_span(trace_id, b"", "nightly job", trace_pb2.Span.SPAN_KIND_INTERNAL, now - 55_000 * MS, 54_900)
    call = otlp_span(trace_id, job.span_id, "Process", trace_pb2.Span.SPAN_KIND_SERVER, now - 1_000 * MS, 20)
    await send(stack, export_request({batch: [job], worker: [call]}))

    edges = [(e.parent_service, e.calls) for e in store.dependencies(30) if e.child_service == worker]
    assert edges == [(batch, 1)]
    assert [s for s in store.broken_traces(30, limit=10_000) if s.service == worker] == []
    assert store.trace(trace_id.hex()).is_connected()


# ----------------------------------------------------------------- the CLI


async def test_cli_trace_renders_the_tree(system: System) -> None:
    output = await asyncio.to_thread(run_cli, "trace", system.trace_id)
    lines = output.splitlines()
    assert lines[0] == f"trace {system.trace_id}: 5 spans, services {system.a}, {system.b}, {system.c}"
    assert re.search(rf"^├─ \+\s+0\.0 ms  {system.a}: GET /checkout \[Server\] 900\.00 ms$", output, re.M)
    assert re.search(rf"^  ├─ \+\s+50\.0 ms  {system.b}: Reserve \[Server\] 700\.00 ms$", output, re.M)
    assert re.search(rf"^    ├─ \+\s+400\.0 ms  {system.c}: Query \[Server\] 300\.00 ms ERROR disk full$", output, re.M)
    assert len(lines) == 6


async def test_cli_trace_of_the_orphan_marks_it(system: System) -> None:
    output = await asyncio.to_thread(run_cli, "trace", system.orphan_trace_id)
    assert f"{system.c}: Orphaned [Server] 50.00 ms  (parent missing)" in output


async def test_cli_services_shows_the_edges(system: System) -> None:
    output = await asyncio.to_thread(run_cli, "services", "--since", "5m")
    assert output.splitlines()[0].split() == ["caller", "callee", "calls", "errors", "error", "rate"]
    assert re.search(rf"^{system.a}\s+{system.b}\s+1\s+0\s+0\.0%$", output, re.M), output
    assert re.search(rf"^{system.b}\s+{system.c}\s+2\s+1\s+50\.0%$", output, re.M), output
    assert system.c not in {line.split()[0] for line in output.splitlines()[1:]}, "C calls no one"
