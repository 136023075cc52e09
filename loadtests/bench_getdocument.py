"""`python -m loadtests.bench_getdocument`: GetDocument against a bare grpcio echo, same run.

Four targets, each driven by the same closed-loop client (C requests in flight for T seconds,
rounds alternated, medians reported):
  echo            a bare grpc.aio server returning a response of GetDocument's size (baseline)
  direct gRPC     the knowledge service itself
  Envoy gRPC      through the edge (JWT check, routing, tracing)
  Envoy JSON      through the edge's transcoder
It starts its own full stack on moved ports with trace sampling at KP_TRACE_SAMPLE_RATIO
(default 0.05 here, as for load runs), then uses the sampled traces to say where a
GetDocument's time goes. Target: direct ≥ 40% of the echo baseline's throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import grpc

from contracts.transports import transport_for
from fixtures.accounts import sign_up
from observability.clickhouse import connect
from observability.traces import TraceStore
from services.api.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from simulations.launcher import isolated_stack
from simulations.platform import PLATFORM

PORT_OFFSET = 800
ECHO_METHOD = "/bench.Echo/Echo"
ECHO = "echo (bare grpcio)"
DIRECT = "GetDocument direct gRPC"
TARGET_RATIO = 0.40
DOCUMENT_CONTENT = "A paragraph of a knowledge document, repeated to a realistic size. " * 30  # ~2 KB

Call = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Result:
    rate: float
    p50_ms: float
    p99_ms: float


async def drive(call: Call, seconds: float, concurrency: int) -> Result:
    """Closed loop: `concurrency` callers, each calling again as soon as the last call returns."""
    for _ in range(100):
        await call()  # warm-up: connections, caches, JIT-free but still
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - began) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    return Result(len(latencies) / elapsed, statistics.median(latencies), statistics.quantiles(latencies, n=100)[98])


async def start_echo(port: int, response: bytes) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtests.echo_server",
        "--port",
        str(port),
        "--size",
        str(len(response)),
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    await process.stdout.readline()  # "ready"
    return process


async def run(seconds: float, concurrency: int, rounds: int, sample_ratio: str) -> None:
    environ = {"KP_TRACE_SAMPLE_RATIO": sample_ratio}
    async with isolated_stack(PLATFORM, ["envoy"], PORT_OFFSET, environ) as endpoints:
        envoy_http, envoy_grpc = endpoints["envoy"]["http"], endpoints["envoy"]["grpc"]
        setup = transport_for("grpc", envoy_http, envoy_grpc)
        owner = await sign_up(setup)
        space = await setup.unary(
            "knowledge.v1.KnowledgeService/CreateSpace",
            knowledge_pb2.CreateSpaceRequest(name="Bench"),
            token=owner.access_token,
        )
        space_id = space.unwrap().space.space_id  # type: ignore[attr-defined]
        created = await setup.unary(
            "knowledge.v1.KnowledgeService/CreateDocument",
            knowledge_pb2.CreateDocumentRequest(space_id=space_id, title="Bench document", content=DOCUMENT_CONTENT),
            token=owner.access_token,
        )
        document_id = created.unwrap().document.document_id  # type: ignore[attr-defined]
        await setup.aclose()

        request = knowledge_pb2.GetDocumentRequest(space_id=space_id, document_id=document_id)
        metadata = (("authorization", f"Bearer {owner.access_token}"),)
        direct_channel = grpc.aio.insecure_channel(endpoints["knowledge"]["grpc"])
        envoy_channel = grpc.aio.insecure_channel(envoy_grpc)
        direct = knowledge_pb2_grpc.KnowledgeServiceStub(direct_channel)
        via_envoy = knowledge_pb2_grpc.KnowledgeServiceStub(envoy_channel)
        response_size = len((await direct.GetDocument(request, metadata=metadata)).SerializeToString())

        echo_port = 51950 + PORT_OFFSET
        echo = await start_echo(echo_port, b"x" * response_size)
        echo_channel = grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}")
        echo_call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = echo_channel.unary_unary(ECHO_METHOD)
        request_bytes = request.SerializeToString()
        session = aiohttp.ClientSession()
        url = f"{envoy_http}/v1/spaces/{space_id}/documents/{document_id}"
        headers = dict(metadata)

        async def json_call() -> object:
            async with session.get(url, headers=headers) as response:
                return await response.read()

        targets: dict[str, Call] = {
            ECHO: lambda: echo_call(request_bytes, metadata=metadata),
            DIRECT: lambda: direct.GetDocument(request, metadata=metadata),
            "GetDocument Envoy gRPC": lambda: via_envoy.GetDocument(request, metadata=metadata),
            "GetDocument Envoy JSON": json_call,
        }
        results: dict[str, list[Result]] = {name: [] for name in targets}
        window_began = time.time()
        try:
            for round_index in range(rounds):
                order = list(targets) if round_index % 2 == 0 else list(reversed(targets))
                for name in order:
                    results[name].append(await drive(targets[name], seconds, concurrency))
        finally:
            await session.close()
            for channel in (direct_channel, envoy_channel, echo_channel):
                await channel.close()
            echo.terminate()
            await echo.wait()
        print_results(results, concurrency, rounds, response_size)
        window_s = int(time.time() - window_began) + 5
        await asyncio.sleep(1.5)  # the services' span batches (200 ms) and the receiver's (200 ms)
        async with aiohttp.ClientSession() as flush, flush.post(f"{endpoints['otlp']['http']}/flush") as answer:
            await answer.read()
        print_breakdown(TraceStore(connect(endpoints["clickhouse"]["http"])), window_s, sample_ratio)


def print_results(results: dict[str, list[Result]], concurrency: int, rounds: int, size: int) -> None:
    """Medians over rounds; "vs echo" pairs each round with the echo run next to it (same
    machine state), and the median of those ratios is what the target is judged on."""
    echo_runs = results[ECHO]
    print(
        f"GetDocument vs a bare grpcio echo ({size}-byte responses, {concurrency} in flight, "
        f"median of {rounds} rounds):"
    )
    print(f"  {'target':<26} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs echo':>8}  (per round)")
    for name, runs in results.items():
        ratios = [run.rate / echo.rate for run, echo in zip(runs, echo_runs, strict=True)]
        rate, p50, p99 = (
            statistics.median(getattr(run, field) for run in runs) for field in ("rate", "p50_ms", "p99_ms")
        )
        print(
            f"  {name:<26} {rate:>8,.0f} {p50:>8.2f} {p99:>8.2f} {statistics.median(ratios):>7.0%}  "
            f"({', '.join(f'{ratio:.0%}' for ratio in ratios)})"
        )
    ratio = statistics.median(run.rate / echo.rate for run, echo in zip(results[DIRECT], echo_runs, strict=True))
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    print(f"  direct GetDocument runs at {ratio:.0%} of the echo baseline: {verdict} the {TARGET_RATIO:.0%} target")


def print_breakdown(store: TraceStore, window_s: int, sample_ratio: str) -> None:
    """Where a GetDocument's time goes, from the sampled traces of the run."""
    rows = [row for row in store.latency(window_s, by_span=True) if row.service in ("envoy", "knowledge")]
    print(f"where the time goes (p50 of the sampled spans, sampling {sample_ratio}):")
    wanted = ("GetDocument", "knowledge.v1.KnowledgeService", "SELECT", "connect", "egress")
    for row in rows:
        if any(part in row.span_name for part in wanted):
            print(
                f"  {row.service:<10} {row.span_name[:60]:<60} n={row.count:<6} p50 {row.p50_ms:6.2f} ms "
                f"p99 {row.p99_ms:6.2f} ms"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sample-ratio", default=os.environ.get("KP_TRACE_SAMPLE_RATIO", "0.05"))
    args = parser.parse_args()
    asyncio.run(run(args.seconds, args.concurrency, args.rounds, args.sample_ratio))


if __name__ == "__main__":
    main()
