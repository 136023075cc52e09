"""Benchmarks of the trace pipeline; they print their figures beside their targets and exit
with 1 when one is missed (run them with `nox -s bench`).

    python -m loadtests.bench_traces ingest     spans/s into ClickHouse, and span end → queryable
    python -m loadtests.bench_traces overhead   a unary RPC with tracing on vs off, same run, as ratios

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import grpc
from clickhouse_connect.driver.client import Client
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from observability.clickhouse import connect
from observability.synthetic import export_request
from services.api.auth.v1 import auth_pb2, auth_pb2_grpc
from services.kit.telemetry import TelemetrySettings, tracer_provider
from simulations.envoy_config import UPSTREAM_DOMAIN
from simulations.launcher import isolated_stack
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


@dataclass(frozen=True)
class Served:
    rate: float
    p99_ms: float
    calls: int  # every call the server answered in the round (each is one SERVER span when traced)


async def bench_overhead(seconds: float, concurrency: int, rounds: int) -> int:
    """The same trivial unary RPC served by the kit's server, with tracing off and on; with
    tracing on, every span the server sent must be accepted and written by the receiver."""
    async with isolated_stack(OVERHEAD) as endpoints, aiohttp.ClientSession() as session:
        otlp = endpoints["otlp"]
        results: dict[str, list[Served]] = {"off": [], "on": []}
        accounted: list[str] = []
        for round_index in range(rounds):
            for mode in ("off", "on") if round_index % 2 == 0 else ("on", "off"):
                before = await receiver_stats(session, otlp["http"])
                served = await measure_server(mode, otlp["grpc"], seconds, concurrency)
                results[mode].append(served)
                if mode == "on":
                    accounted.append(await account_for(session, otlp["http"], before, served.calls))
    summary = {
        mode: (statistics.median(r.rate for r in runs), statistics.median(r.p99_ms for r in runs))
        for mode, runs in results.items()
    }
    (off_rate, off_p99), (on_rate, on_p99) = summary["off"], summary["on"]
    ratio = on_rate / off_rate
    print(f"overhead of tracing on a unary RPC (kit server, {concurrency} in flight, median of {rounds} rounds):")
    print(f"  tracing off: {off_rate:,.0f} req/s, p99 {off_p99:.2f} ms")
    print(f"  tracing on:  {on_rate:,.0f} req/s, p99 {on_p99:.2f} ms (every span exported to the receiver)")
    print(
        f"  throughput ratio on/off {ratio:.2f} (target ≥ {OVERHEAD_TARGET:.2f}: "
        f"{'met' if ratio >= OVERHEAD_TARGET else 'MISSED'}); p99 ratio on/off {on_p99 / off_p99:.2f}"
    )
    lost = [line for line in accounted if not line.startswith("all")]
    for line in accounted:
        print(f"  spans of a traced round: {line}")
    return 0 if ratio >= OVERHEAD_TARGET and not lost else 1


async def account_for(session: aiohttp.ClientSession, http: str, before: dict[str, int], sent: int) -> str:
    """Once the receiver has written what it accepted since `before`: whether that is exactly
    the `sent` spans, with nothing dropped."""
    deadline = time.monotonic() + 15
    while True:
        now = await receiver_stats(session, http)
        delta = {key: now[key] - before[key] for key in ("accepted", "written", "dropped", "rejected")}
        if delta["written"] >= sent or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    figures = (
        f"sent {sent:,}, accepted {delta['accepted']:,}, written {delta['written']:,}, dropped {delta['dropped']}, "
        f"rejected {delta['rejected']}"
    )
    exact = delta["accepted"] == delta["written"] == sent and delta["dropped"] == delta["rejected"] == 0
    return f"all {figures}" if exact else f"MISMATCH: {figures}"


async def measure_server(mode: str, otlp: str, seconds: float, concurrency: int) -> Served:
    port = OVERHEAD.extra_port(0)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        SERVER,
        *("--port", str(port)),
        *("--tracing", mode),
        *("--otlp", otlp),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        await process.stdout.readline()  # "ready"
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

            began = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            elapsed = time.perf_counter() - began
        return Served(
            len(latencies) / elapsed, statistics.quantiles(latencies, n=100)[98], 1 + WARM_UP_CALLS + len(latencies)
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
