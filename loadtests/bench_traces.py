"""Benchmarks of the trace pipeline; they print their figures beside their targets and exit
with 1 when one is missed (run them with `nox -s bench`).

    python -m loadtests.bench_traces ingest     spans/s into ClickHouse, and span end → queryable
    python -m loadtests.bench_traces overhead   a unary RPC with tracing off and sampled at 1, 0.1, 0.01

`ingest` times "span end → queryable" from each span's own end, through the exporters as
configured: a span of the services' SDK exporter (batched every 200 ms) and Envoy's span of a
request through the edge (flushed every second), each under a steady load. `overhead` checks
that the receiver accepted and wrote every span the traced server sent, and none was dropped.
Each starts what it measures in its own run directory on moved ports (KP_PORT_OFFSET), so a
running stack is not disturbed, and stops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiohttp
import grpc
import psutil
from clickhouse_connect.driver.client import Client
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from loadtests.cpu import ProcessGroups, cpu_seconds
from observability.clickhouse import connect
from observability.synthetic import export_request
from services.api.auth.v1 import auth_pb2, auth_pb2_grpc
from services.kit.telemetry import TelemetrySettings, tracer_provider
from simulations.envoy_config import UPSTREAM_DOMAIN
from simulations.launcher import isolated_launcher, isolated_stack, process_tree
from simulations.profiles import profile

Export = Callable[..., Awaitable[trace_service_pb2.ExportTraceServiceResponse]]
INGEST_TARGET = 10_000  # spans/s into ClickHouse, on these two cores (Uptrace's per-core figure)
QUERYABLE_P99_TARGET_MS = 5_000.0  # a span is queryable within seconds, for debugging and tests
OVERHEAD_TARGET = 0.85  # throughput with every span exported, as a share of tracing off


# ---------------------------------------------------------------- ingest


async def receiver_stats(session: aiohttp.ClientSession, http: str) -> dict[str, int]:
    async with session.get(f"{http}/stats") as response:
        stats: dict[str, int] = await response.json()
        return stats


async def send_with_retry(export: Export, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
    """Back-pressure (UNAVAILABLE) is retried after a pause, as OTLP exporters do."""
    while True:
        try:
            await export(request, timeout=30)
            return
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            await asyncio.sleep(0.05)


async def saturate(export: Export, total_spans: int, per_request: int, in_flight: int) -> int:
    """Send `total_spans` as fast as the receiver takes them; returns how many were sent."""
    requests = [export_request(per_request, "load", time.time_ns()) for _ in range(64)]
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while sent < total_spans:
            sent += per_request
            await send_with_retry(export, requests[(sent // per_request) % len(requests)])

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return sent


async def steady_load(export: Export, spans_per_s: float, per_request: int, stop: asyncio.Event) -> None:
    request = export_request(per_request, "steady", time.time_ns())
    interval = per_request / spans_per_s
    next_send = time.perf_counter()
    while not stop.is_set():
        await send_with_retry(export, request)
        next_send += interval
        await asyncio.sleep(max(0.0, next_send - time.perf_counter()))


async def until_queryable(store: Client, query: str, parameters: dict[str, str]) -> int:
    """Poll until the query finds a row; its first column is the span's end (ns)."""
    while True:
        rows = (await asyncio.to_thread(store.query, query, parameters=parameters)).result_rows
        if rows:
            return int(rows[0][0])
        await asyncio.sleep(0.02)


async def sdk_probe(tracer: trace.Tracer, store: Client) -> float:
    """One span of an exporter configured as the services' are, from its end until a query
    finds it (milliseconds)."""
    name = f"probe-{uuid.uuid4().hex}"
    tracer.start_span(name).end()
    query = "SELECT toUnixTimestamp64Nano(Timestamp) + Duration FROM otel.otel_traces WHERE SpanName = %(n)s LIMIT 1"
    end_ns = await until_queryable(store, query, {"n": name})
    return (time.time_ns() - end_ns) / 1e6


async def envoy_probe(envoy_grpc: str, store: Client) -> float:
    """A request through Envoy, sampled by its caller: Envoy's own span, from its end until a
    query finds it (milliseconds)."""
    trace_id = uuid.uuid4().hex
    authority = f"otlp.{UPSTREAM_DOMAIN}"
    async with grpc.aio.insecure_channel(envoy_grpc, options=[("grpc.default_authority", authority)]) as channel:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(),
            timeout=5,
            metadata=[("traceparent", f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01")],
        )
    query = (
        "SELECT toUnixTimestamp64Nano(Timestamp) + Duration FROM otel.otel_traces "
        "WHERE TraceId = %(t)s AND ServiceName = 'envoy' ORDER BY Timestamp LIMIT 1"
    )
    end_ns = await until_queryable(store, query, {"t": trace_id})
    return (time.time_ns() - end_ns) / 1e6


async def written(session: aiohttp.ClientSession, http: str) -> int:
    return (await receiver_stats(session, http))["written"]


def percentiles(delays: list[float]) -> tuple[float, float]:
    return statistics.median(delays), statistics.quantiles(delays, n=100)[98]


async def bench_ingest(total_spans: int, per_request: int, in_flight: int, probes: int) -> int:
    async with isolated_stack(profile("bench-traces")) as endpoints, aiohttp.ClientSession() as session:
        otlp = endpoints["otlp"]
        store = connect(endpoints["clickhouse"]["http"])
        channel = grpc.aio.insecure_channel(otlp["grpc"])
        export: Export = trace_service_pb2_grpc.TraceServiceStub(channel).Export  # type: ignore[no-untyped-call]
        await send_with_retry(export, export_request(per_request, "warm-up", time.time_ns()))

        # 1. Throughput: as fast as the receiver accepts, until everything is written.
        before = await written(session, otlp["http"])
        began = time.perf_counter()
        sent = await saturate(export, total_spans, per_request, in_flight)
        while await written(session, otlp["http"]) < before + sent + per_request:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - began
        rate = sent / elapsed

        # 2. Span end → queryable, while a steady load runs at half that rate.
        provider = tracer_provider(TelemetrySettings("bench-probe", "1", "bench", otlp_endpoint=otlp["grpc"]))
        tracer = provider.get_tracer("bench")
        stop = asyncio.Event()
        load = asyncio.create_task(steady_load(export, rate / 2, per_request, stop))
        sdk = [await sdk_probe(tracer, store) for _ in range(probes)]
        envoy = [await envoy_probe(endpoints["envoy"]["grpc"], store) for _ in range(max(2, probes // 2))]
        stop.set()
        await load
        provider.shutdown()
        stats = await receiver_stats(session, otlp["http"])
        await channel.close()
    rate_met = rate >= INGEST_TARGET
    print(
        f"ingest: {sent:,} spans in {elapsed:.2f} s = {rate:,.0f} spans/s into ClickHouse "
        f"(target ≥ {INGEST_TARGET:,}: {'met' if rate_met else 'MISSED'}; {per_request} spans per export, "
        f"{in_flight} exports in flight, until all were written)"
    )
    delays_met = True
    for label, delays in (("a service's SDK exporter (200 ms batches)", sdk), ("Envoy (1 s flushes)", envoy)):
        p50, p99 = percentiles(delays)
        met = p99 <= QUERYABLE_P99_TARGET_MS
        delays_met = delays_met and met
        print(
            f"span end → queryable, spans of {label}, under a steady {rate / 2:,.0f} spans/s: p50 {p50:.0f} ms, "
            f"p99 {p99:.0f} ms (target p99 ≤ {QUERYABLE_P99_TARGET_MS:,.0f} ms: {'met' if met else 'MISSED'}; "
            f"{len(delays)} probes)"
        )
    dropped = stats["dropped"] + stats["insert_failures"]
    print(
        f"receiver: written {stats['written']:,}, refused (back-pressure, retried) {stats['refused']:,}, "
        f"dropped {stats['dropped']}, insert failures {stats['insert_failures']}, batches {stats['batches']} "
        f"(target: nothing dropped: {'met' if dropped == 0 else 'MISSED'})"
    )
    return 0 if rate_met and delays_met and dropped == 0 else 1


# -------------------------------------------------------------- overhead


SERVER = "loadtests.trace_bench_server"
SAMPLE_RATIOS = (1.0, 0.1, 0.01)  # always on first: the ratio the target is judged at
TRACING_OFF = 0.0  # no tracer provider at all: the baseline
CLIENT = "bench client"
PIPELINE = ("otlp", "clickhouse")  # what receives and stores the spans, on the same two cores


@dataclass(frozen=True)
class Served:
    rate: float
    p99_ms: float
    calls: int  # every call the server answered in the round (each one SERVER span when sampled)
    cpu_us: Mapping[str, float]  # CPU time per call of each process group during the round


async def bench_overhead(seconds: float, concurrency: int, rounds: int) -> int:
    """The same trivial unary RPC served by the kit's server, with tracing off and at each sample
    ratio, in rotating order; every span the server sent must be accepted and written."""
    modes = (TRACING_OFF, *SAMPLE_RATIOS)
    results: dict[float, list[Served]] = {mode: [] for mode in modes}
    accounted: list[str] = []
    async with isolated_launcher(OVERHEAD) as launcher, aiohttp.ClientSession() as session:
        otlp = dict(launcher.running["otlp"].component.endpoints())
        pipeline = {name: process_tree(launcher.running[name].process.pid) for name in PIPELINE}
        for round_index in range(rounds):
            for mode in modes[round_index % len(modes) :] + modes[: round_index % len(modes)]:
                before = await receiver_stats(session, otlp["http"])
                served = await measure_server(mode, otlp["grpc"], seconds, concurrency, pipeline)
                results[mode].append(served)
                if mode != TRACING_OFF:
                    accounted.append(await account_for(session, otlp["http"], before, served.calls, mode))
    medians = {mode: median_of(runs) for mode, runs in results.items()}
    report_overhead(medians, concurrency, rounds)
    for line in accounted:
        print(f"  spans of a traced round: {line}")
    always_on = medians[SAMPLE_RATIOS[0]].rate / medians[TRACING_OFF].rate
    met = always_on >= OVERHEAD_TARGET
    print(
        f"  always-on throughput {always_on:.2f}× tracing off (target ≥ {OVERHEAD_TARGET:.2f}: "
        f"{'met' if met else 'MISSED'})"
    )
    lost = [line for line in accounted if not line.startswith("all")]
    return 0 if met and not lost else 1


def median_of(runs: list[Served]) -> Served:
    return Served(
        statistics.median(run.rate for run in runs),
        statistics.median(run.p99_ms for run in runs),
        sum(run.calls for run in runs),
        {group: statistics.median(run.cpu_us[group] for run in runs) for group in runs[0].cpu_us},
    )


def report_overhead(medians: Mapping[float, Served], concurrency: int, rounds: int) -> None:
    off = medians[TRACING_OFF]
    groups = list(off.cpu_us)
    print(
        f"tracing overhead on a unary RPC (the kit's server in a service's runtime, {concurrency} in flight, "
        f"median of {rounds} rounds; every sampled span exported to the receiver and written to ClickHouse)"
    )
    print(f"  {'sampling':<10} {'req/s':>8} {'p99 ms':>7} {'vs off':>7}   CPU µs per call: " + "  ".join(groups))
    for mode, served in medians.items():
        label = "off" if mode == TRACING_OFF else f"{mode:g}"
        cpu = "  ".join(f"{served.cpu_us[group]:>{len(group)}.0f}" for group in groups)
        figures = f"{served.rate:>8,.0f} {served.p99_ms:>7.2f} {served.rate / off.rate:>7.2f}"
        print(f"  {label:<10} {figures}   {' ' * 17}{cpu}")
    always_on = medians[SAMPLE_RATIOS[0]]
    per_span = {group: always_on.cpu_us[group] - off.cpu_us[group] for group in groups}
    print(
        "  CPU per exported span (always-on minus off, per call): "
        + ", ".join(f"{group} {spent:.0f} µs" for group, spent in per_span.items())
        + f"; {sum(per_span.values()):.0f} µs in all"
    )


async def account_for(
    session: aiohttp.ClientSession, http: str, before: dict[str, int], calls: int, sample_ratio: float
) -> str:
    """Once the receiver has written what it accepted since `before`: whether every span accepted
    was written, none dropped, and the count is what `calls` at `sample_ratio` make (exactly all
    when always on; within five standard deviations of the expected share otherwise)."""
    expected = calls * sample_ratio
    tolerance = 5 * (calls * sample_ratio * (1 - sample_ratio)) ** 0.5
    deadline = time.monotonic() + 15
    while True:
        now = await receiver_stats(session, http)
        delta = {key: now[key] - before[key] for key in ("accepted", "written", "dropped", "rejected")}
        if delta["written"] >= expected - tolerance or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)  # a late straggler would show as accepted beyond written
    now = await receiver_stats(session, http)
    delta = {key: now[key] - before[key] for key in ("accepted", "written", "dropped", "rejected")}
    figures = (
        f"sampling {sample_ratio:g}: {calls:,} calls, accepted {delta['accepted']:,} (expected {expected:,.0f}), "
        f"written {delta['written']:,}, dropped {delta['dropped']}, rejected {delta['rejected']}"
    )
    plausible = abs(delta["accepted"] - expected) <= tolerance
    exact = delta["accepted"] == delta["written"] and delta["dropped"] == delta["rejected"] == 0 and plausible
    return f"all {figures}" if exact else f"MISMATCH: {figures}"


async def measure_server(
    sample_ratio: float, otlp: str, seconds: float, concurrency: int, pipeline: ProcessGroups
) -> Served:
    port = OVERHEAD.extra_port(0)
    tracing = ("--tracing", "off") if sample_ratio == TRACING_OFF else ("--tracing", "on")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        SERVER,
        *("--port", str(port)),
        *("--otlp", otlp),
        *tracing,
        *("--sample-ratio", str(sample_ratio or 1.0)),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        await process.stdout.readline()  # "ready"
        groups = {"server": process_tree(process.pid), CLIENT: [psutil.Process()], **pipeline}
        latencies: list[float] = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            call = auth_pb2_grpc.AuthServiceStub(channel).GetJwks
            await check(health_pb2.HealthCheckRequest(), timeout=5)
            for _ in range(WARM_UP_CALLS):
                await call(auth_pb2.GetJwksRequest(), timeout=5)
            deadline = time.perf_counter() + seconds

            async def client() -> None:
                while time.perf_counter() < deadline:
                    began = time.perf_counter()
                    await call(auth_pb2.GetJwksRequest(), timeout=5)
                    latencies.append((time.perf_counter() - began) * 1000)

            cpu_before = cpu_seconds(groups)
            began = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            elapsed = time.perf_counter() - began
            cpu_after = cpu_seconds(groups)
        return Served(
            len(latencies) / elapsed,
            statistics.quantiles(latencies, n=100)[98],
            1 + WARM_UP_CALLS + len(latencies),
            {group: (cpu_after[group] - cpu_before[group]) / len(latencies) * 1e6 for group in groups},
        )
    finally:
        process.terminate()
        await process.wait()  # the server flushes its spans as it stops


WARM_UP_CALLS = 200
OVERHEAD = profile("bench-trace-overhead")  # the receiver, and the traced server's port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    ingest = commands.add_parser("ingest")
    ingest.add_argument("--spans", type=int, default=300_000)
    ingest.add_argument("--per-request", type=int, default=512)
    ingest.add_argument("--in-flight", type=int, default=4)
    ingest.add_argument("--probes", type=int, default=40)
    overhead = commands.add_parser("overhead")
    overhead.add_argument("--seconds", type=float, default=5.0)
    overhead.add_argument("--concurrency", type=int, default=32)
    overhead.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.command == "ingest":
        sys.exit(asyncio.run(bench_ingest(args.spans, args.per_request, args.in_flight, args.probes)))
    sys.exit(asyncio.run(bench_overhead(args.seconds, args.concurrency, args.rounds)))


if __name__ == "__main__":
    main()
