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
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
import grpc
import psutil

from clients.transports import transport_for
from fixtures.accounts import sign_up
from observability.clickhouse import connect
from observability.traces import TraceStore
from services.api.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from simulations.launcher import isolated_launcher, process_tree
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
    cpu_us: Mapping[str, float]  # CPU time per request of each process group (all threads)
    machine_busy: float  # share of the machine's cores busy during the round

    def server_cpu_us(self, servers: Sequence[str]) -> float:
        return sum(self.cpu_us[name] for name in servers)


@dataclass(frozen=True)
class Target:
    call: Call
    servers: Sequence[str]  # whose CPU counts as serving: the server, and Envoy in front of it


# Every process of the run, by group: each component with its children (PostgreSQL's backends),
# the echo server, and this process, which is the benchmark's client.
Processes = Callable[[], Mapping[str, Sequence[psutil.Process]]]
CLIENT = "bench client"


def cpu_seconds(groups: Mapping[str, Sequence[psutil.Process]]) -> dict[str, float]:
    """CPU time so far of each group. The kernel counts it in 10 ms ticks per process, so a short
    round undercounts a group of many lightly used processes (PostgreSQL's backends)."""
    spent = dict.fromkeys(groups, 0.0)
    for name, processes in groups.items():
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                spent[name] += times.user + times.system
    return spent


def machine_idle_and_total_seconds() -> tuple[float, float]:
    """CPU time of all cores since boot: idle (waiting counts as idle), and in all."""
    times = psutil.cpu_times()
    return times.idle + getattr(times, "iowait", 0.0), sum(times)


async def drive(target: Target, processes: Processes, seconds: float, concurrency: int) -> Result:
    """Closed loop: `concurrency` callers, each calling again as soon as the last call returns."""
    call = target.call
    for _ in range(3):  # warm-up at full concurrency: every connection and pooled slot is open
        await asyncio.gather(*(call() for _ in range(concurrency)))
    groups = processes()  # after the warm-up, so new database connections are counted
    cpu_before, (idle_before, total_before) = cpu_seconds(groups), machine_idle_and_total_seconds()
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
    cpu_after, (idle_after, total_after) = cpu_seconds(groups), machine_idle_and_total_seconds()
    return Result(
        len(latencies) / elapsed,
        statistics.median(latencies),
        statistics.quantiles(latencies, n=100)[98],
        {name: (cpu_after[name] - cpu_before[name]) / len(latencies) * 1e6 for name in groups},
        1 - (idle_after - idle_before) / (total_after - total_before),
    )


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
    async with isolated_launcher(PLATFORM, ["envoy"], PORT_OFFSET, environ) as launcher:
        endpoints = {name: dict(r.component.endpoints()) for name, r in launcher.running.items()}
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
        # The receiver's first insert has one-time costs (~1 s of CPU: its ClickHouse client
        # imports pandas); pay them before anything is measured.
        await asyncio.sleep(0.5)  # the services export their spans every 200 ms
        await flush_receiver(endpoints["otlp"]["http"])

        request = knowledge_pb2.GetDocumentRequest(space_id=space_id, document_id=document_id)
        metadata = (("authorization", f"Bearer {owner.access_token}"),)
        direct_channel = grpc.aio.insecure_channel(endpoints["knowledge"]["grpc"])
        envoy_channel = grpc.aio.insecure_channel(envoy_grpc)
        direct = knowledge_pb2_grpc.KnowledgeServiceStub(direct_channel)
        via_envoy = knowledge_pb2_grpc.KnowledgeServiceStub(envoy_channel)
        response_size = len((await direct.GetDocument(request, metadata=metadata)).SerializeToString())

        echo_port = 15950 + PORT_OFFSET
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

        def processes() -> dict[str, list[psutil.Process]]:
            pids = {name: running.process.pid for name, running in launcher.running.items()}
            groups = {name: process_tree(pid) for name, pid in {**pids, "echo": echo.pid}.items()}
            return {**groups, CLIENT: [psutil.Process()]}

        targets = {
            ECHO: Target(lambda: echo_call(request_bytes, metadata=metadata), ["echo"]),
            DIRECT: Target(lambda: direct.GetDocument(request, metadata=metadata), ["knowledge"]),
            "GetDocument Envoy gRPC": Target(
                lambda: via_envoy.GetDocument(request, metadata=metadata), ["knowledge", "envoy"]
            ),
            "GetDocument Envoy JSON": Target(json_call, ["knowledge", "envoy"]),
        }
        results: dict[str, list[Result]] = {name: [] for name in targets}
        window_began = time.time()
        try:
            for round_index in range(rounds):
                order = list(targets) if round_index % 2 == 0 else list(reversed(targets))
                for name in order:
                    results[name].append(await drive(targets[name], processes, seconds, concurrency))
        finally:
            await session.close()
            for channel in (direct_channel, envoy_channel, echo_channel):
                await channel.close()
            echo.terminate()
            await echo.wait()
        print_results(targets, results, concurrency, rounds, response_size)
        window_s = int(time.time() - window_began) + 5
        await asyncio.sleep(1.0)  # the services export their spans every 200 ms
        await flush_receiver(endpoints["otlp"]["http"])
        print_breakdown(TraceStore(connect(endpoints["clickhouse"]["http"])), window_s, sample_ratio, results[DIRECT])


async def flush_receiver(receiver_http: str) -> None:
    """The OTLP receiver writes everything it holds to ClickHouse now."""
    async with aiohttp.ClientSession() as session, session.post(f"{receiver_http}/flush") as answer:
        await answer.read()


def print_results(
    targets: Mapping[str, Target], results: Mapping[str, list[Result]], concurrency: int, rounds: int, size: int
) -> None:
    """Medians over rounds; "vs echo" pairs each round with the echo run next to it (same
    machine state), and the median of those ratios is what the target is judged on."""
    echo_runs = results[ECHO]
    print(
        f"GetDocument vs a bare grpcio echo ({size}-byte responses, {concurrency} in flight, "
        f"median of {rounds} rounds):"
    )
    print(f"  {'target':<26} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'server CPU':>11} {'vs echo':>8}  (per round)")
    for name, runs in results.items():
        ratios = [run.rate / echo.rate for run, echo in zip(runs, echo_runs, strict=True)]
        rate, p50, p99 = (statistics.median(getattr(run, field) for run in runs) for field in RATE_COLUMNS)
        cpu = statistics.median(run.server_cpu_us(targets[name].servers) for run in runs)
        print(
            f"  {name:<26} {rate:>8,.0f} {p50:>8.2f} {p99:>8.2f} {cpu:>8.0f} µs {statistics.median(ratios):>7.0%}  "
            f"({', '.join(f'{ratio:.0%}' for ratio in ratios)})"
        )
    ratio = statistics.median(run.rate / echo.rate for run, echo in zip(results[DIRECT], echo_runs, strict=True))
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    print(f"  direct GetDocument runs at {ratio:.0%} of the echo baseline: {verdict} the {TARGET_RATIO:.0%} target")
    print(
        "  (server CPU: CPU time of the serving processes, all threads, per request; Envoy's included "
        "for the Envoy rows)"
    )
    print("CPU per request by process, where the machine's cores go (median of rounds):")
    for name in (ECHO, DIRECT):
        runs = results[name]
        spent = {group: statistics.median(run.cpu_us[group] for run in runs) for group in runs[0].cpu_us}
        shown = sorted(((us, group) for group, us in spent.items() if us >= 1), reverse=True)
        busy = statistics.median(run.machine_busy for run in runs)
        print(
            f"  {name:<26} {sum(spent.values()):>4.0f} µs: {', '.join(f'{group} {us:.0f}' for us, group in shown)}; "
            f"cores {busy:.0%} busy"
        )


RATE_COLUMNS = ("rate", "p50_ms", "p99_ms")


# The spans of one GetDocument, outermost first: Envoy's ingress and egress (Envoy rows only),
# the service's SERVER span, its one SQL statement.
GETDOCUMENT_SPANS = (
    ("envoy", "knowledge knowledge.v1.KnowledgeService"),
    ("envoy", "router knowledge egress"),
    ("knowledge", "knowledge.v1.KnowledgeService/GetDocument"),
    ("knowledge", "SELECT readable_document"),
)


def print_breakdown(store: TraceStore, window_s: int, sample_ratio: str, direct: Sequence[Result]) -> None:
    """Where a GetDocument's time goes: the sampled traces of the run against what the client saw."""
    rows = {(row.service, row.span_name): row for row in store.latency(window_s, by_span=True)}
    print(f"where the time goes (sampled traces, sampling {sample_ratio}; all targets' GetDocuments):")
    for key in GETDOCUMENT_SPANS:
        if key in rows:
            row = rows[key]
            print(
                f"  {row.service:<10} {row.span_name:<45} n={row.count:<6} "
                f"p50 {row.p50_ms:6.2f} ms p99 {row.p99_ms:7.2f} ms"
            )
    inside = rows.get(GETDOCUMENT_SPANS[2])
    if inside is not None:
        client_p50 = statistics.median(run.p50_ms for run in direct)
        print(
            f"  direct: the client waits {client_p50:.2f} ms (p50), the service works {inside.p50_ms:.2f} ms of it: "
            f"{1 - inside.p50_ms / client_p50:.0%} is waiting, in gRPC's queues and for cores shared by the client, "
            "the service, PostgreSQL and the trace store: throughput follows the CPU a request costs (above), "
            "not the handler's latency"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sample-ratio", default=os.environ.get("KP_TRACE_SAMPLE_RATIO", "0.05"))
    args = parser.parse_args()
    asyncio.run(run(args.seconds, args.concurrency, args.rounds, args.sample_ratio))


if __name__ == "__main__":
    main()
