"""Benchmarks of the trace pipeline; they print their figures (run them with `nox -s bench`).

    python -m loadtests.bench_traces ingest     spans/s into ClickHouse, and span-end → queryable delay
    python -m loadtests.bench_traces overhead   a unary RPC with tracing on vs off, same run, as ratios

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
from contextlib import AbstractAsyncContextManager

import aiohttp
import grpc
from clickhouse_connect.driver.client import Client
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from observability.clickhouse import connect
from observability.synthetic import export_request
from simulations.launcher import isolated_stack
from simulations.platform import PLATFORM

BENCH_PORT_OFFSET = 700
Export = Callable[..., Awaitable[trace_service_pb2.ExportTraceServiceResponse]]


def components(*names: str) -> AbstractAsyncContextManager[dict[str, dict[str, str]]]:
    return isolated_stack(PLATFORM, names, BENCH_PORT_OFFSET)


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


async def probe_delay(export: Export, store: Client) -> float:
    """One span, timed from its end until a query finds it (milliseconds)."""
    name = f"probe-{uuid.uuid4().hex}"
    end_ns = time.time_ns()
    await send_with_retry(export, export_request(1, name, end_ns))
    query = "SELECT count() FROM otel.otel_traces WHERE SpanName = %(n)s"
    while not (await asyncio.to_thread(store.query, query, parameters={"n": name})).result_rows[0][0]:
        await asyncio.sleep(0.005)
    return (time.time_ns() - end_ns) / 1e6


async def written(session: aiohttp.ClientSession, http: str) -> int:
    return (await receiver_stats(session, http))["written"]


async def bench_ingest(total_spans: int, per_request: int, in_flight: int, probes: int) -> None:
    async with components("otlp") as endpoints, aiohttp.ClientSession() as session:
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

        # 2. Delay: probes while a steady load runs at half that rate.
        stop = asyncio.Event()
        load = asyncio.create_task(steady_load(export, rate / 2, per_request, stop))
        delays = [await probe_delay(export, store) for _ in range(probes)]
        stop.set()
        await load
        stats = await receiver_stats(session, otlp["http"])
        await channel.close()
    p99 = statistics.quantiles(delays, n=100)[98]
    print(
        f"ingest: {sent:,} spans in {elapsed:.2f} s = {rate:,.0f} spans/s into ClickHouse "
        f"({per_request} spans per export, {in_flight} exports in flight, until all were written)"
    )
    print(
        f"span end → queryable under a steady {rate / 2:,.0f} spans/s: p50 {statistics.median(delays):.0f} ms, "
        f"p99 {p99:.0f} ms ({len(delays)} probes)"
    )
    print(
        f"receiver: written {stats['written']:,}, refused (back-pressure, retried) {stats['refused']:,}, "
        f"dropped {stats['dropped']}, insert failures {stats['insert_failures']}, batches {stats['batches']}"
    )
    verdict = "meets" if rate >= 10_000 else "MISSES"
    print(f"{verdict} the 10,000 spans/s target (Uptrace's per-core figure) on this machine")


# -------------------------------------------------------------- overhead


SERVER = "loadtests.trace_bench_server"


async def bench_overhead(seconds: float, concurrency: int, rounds: int) -> None:
    """The same trivial unary RPC served by the kit's server, with tracing off and on."""
    async with components("otlp") as endpoints:
        results: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
        for round_index in range(rounds):
            for mode in ("off", "on") if round_index % 2 == 0 else ("on", "off"):
                results[mode].append(await measure_server(mode, endpoints["otlp"]["grpc"], seconds, concurrency))
    summary = {
        mode: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        for mode, runs in results.items()
    }
    (off_rate, off_p99), (on_rate, on_p99) = summary["off"], summary["on"]
    print(f"overhead of tracing on a unary RPC (kit server, {concurrency} in flight, median of {rounds} rounds):")
    print(f"  tracing off: {off_rate:,.0f} req/s, p99 {off_p99:.2f} ms")
    print(f"  tracing on:  {on_rate:,.0f} req/s, p99 {on_p99:.2f} ms (every span exported to the receiver)")
    print(f"  throughput ratio on/off {on_rate / off_rate:.2f}; p99 ratio on/off {on_p99 / off_p99:.2f}")


async def measure_server(mode: str, otlp: str, seconds: float, concurrency: int) -> tuple[float, float]:
    port = 15900 + BENCH_PORT_OFFSET
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        SERVER,
        "--port",
        str(port),
        "--tracing",
        mode,
        "--otlp",
        otlp,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        await process.stdout.readline()  # "ready"
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        latencies: list[float] = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            from services.api.auth.v1 import auth_pb2, auth_pb2_grpc

            call = auth_pb2_grpc.AuthServiceStub(channel).GetJwks
            await check(health_pb2.HealthCheckRequest(), timeout=5)
            for _ in range(200):  # warm-up
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
        return len(latencies) / elapsed, statistics.quantiles(latencies, n=100)[98]
    finally:
        process.terminate()
        await process.wait()


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
        asyncio.run(bench_ingest(args.spans, args.per_request, args.in_flight, args.probes))
    else:
        asyncio.run(bench_overhead(args.seconds, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
