"""`python -m loadtests.bench_getdocument`: GetDocument against an echo server, same run.

Five targets, each driven by the same closed-loop client (C requests in flight for T seconds,
rounds alternated, medians reported):
  echo, bare grpcio       a grpc.aio server on plain asyncio returning a response of
                          GetDocument's size
  echo, service runtime   the same echo in a service's runtime (uvloop, the kit's server
                          options, helper threads under SCHED_BATCH): the matched baseline
  direct gRPC             the knowledge service itself
  Envoy gRPC              through the edge (JWT check, routing, tracing)
  Envoy JSON              through the edge's transcoder
Requests are drawn at random from many users and documents (100 users × 1,000 documents by
default), so the service's caches see traffic as in real use. Every answer that is not OK
(gRPC status; HTTP status on the JSON route) is an error, and a run with errors fails.
It starts its own full stack on moved ports with trace sampling at KP_TRACE_SAMPLE_RATIO
(default 0.05 here, as for load runs), then uses the sampled traces to say where a
GetDocument's time goes. Target: direct ≥ 40% of the matched baseline's throughput; the exit
code says met (0) or missed (1).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import aiohttp
import grpc
import psutil

from clients.transports import Transport, transport_for
from fixtures.accounts import sign_up
from fixtures.knowledge import VIEWER, add_member, create_document, create_space
from loadtests.cpu import BENCH_CLIENT, cpu_seconds, machine_idle_and_total_seconds, stack_processes
from loadtests.echo_server import RUNTIMES
from observability.clickhouse import connect
from observability.testing import flush_receiver
from observability.traces import TraceStore
from services.api.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from simulations.launcher import isolated_launcher, process_tree
from simulations.profiles import profile

PROFILE = profile("bench-getdocument")
ECHO_METHOD = "/bench.Echo/Echo"
BARE = "echo, bare grpcio"
MATCHED = "echo, service runtime"
DIRECT = "GetDocument direct gRPC"
SEED = 20261207
TARGET_RATIO = 0.40
DOCUMENT_CONTENT = "A paragraph of a knowledge document, repeated to a realistic size. " * 30  # ~2 KB

Call = Callable[[], Awaitable[bool]]  # True: the answer was OK
T = TypeVar("T")


@dataclass(frozen=True)
class Result:
    rate: float
    p50_ms: float
    p99_ms: float
    cpu_us: Mapping[str, float]  # CPU time per request of each process group (all threads)
    machine_busy: float  # share of the machine's cores busy during the round
    errors: int  # answers that were not OK

    def server_cpu_us(self, servers: Sequence[str]) -> float:
        return sum(self.cpu_us[name] for name in servers)


@dataclass(frozen=True)
class Target:
    call: Call
    servers: Sequence[str]  # whose CPU counts as serving: the server, and Envoy in front of it


# Every process of the run, by group: each component with its children (PostgreSQL's backends),
# the echo server, and this process, which is the benchmark's client.
Processes = Callable[[], Mapping[str, Sequence[psutil.Process]]]
CLIENT = BENCH_CLIENT


async def drive(target: Target, processes: Processes, seconds: float, concurrency: int) -> Result:
    """Closed loop: `concurrency` callers, each calling again as soon as the last call returns."""
    call = target.call
    for _ in range(3):  # warm-up at full concurrency: every connection and pooled slot is open
        await asyncio.gather(*(call() for _ in range(concurrency)))
    errors = 0
    groups = processes()  # after the warm-up, so new database connections are counted
    cpu_before, (idle_before, total_before) = cpu_seconds(groups), machine_idle_and_total_seconds()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            if not await call():
                errors += 1
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
        errors,
    )


async def start_echo(port: int, response: bytes, runtime: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtests.echo_server",
        *("--port", str(port)),
        *("--size", str(len(response))),
        *("--runtime", runtime),
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    await process.stdout.readline()  # "ready"
    return process


@dataclass(frozen=True)
class Corpus:
    """Readers (each a user with a token) and documents; every reader may read every document."""

    tokens: list[str]
    documents: list[tuple[str, str]]  # (space_id, document_id)
    spaces: int

    def draws(self, count: int) -> list[tuple[int, int]]:
        """(reader, document) pairs at random, the same for every target."""
        rng = random.Random(SEED)
        return [(rng.randrange(len(self.tokens)), rng.randrange(len(self.documents))) for _ in range(count)]

    def cached(self) -> str:
        return (
            f"requests drawn at random from {len(self.tokens)} users × {len(self.documents):,} documents in "
            f"{self.spaces} spaces; cached in the service: each user's verified token (until it expires), so "
            "every call after a user's first skips the RSA check; not cached: the document and the caller's "
            "role, read from PostgreSQL by one statement per call"
        )


async def bounded(limit: int, calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run the calls, at most `limit` at once, keeping their order."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    return await asyncio.gather(*(one(call) for call in calls))


async def seed(setup: Transport, users: int, documents: int, spaces: int) -> Corpus:
    """An owner's spaces full of documents, with every reader a viewer of every space."""
    owner = await sign_up(setup, "owner")
    readers = await bounded(4, [partial(sign_up, setup, "reader") for _ in range(users)])
    space_ids = [(await create_space(setup, owner, f"Bench {n}")).space_id for n in range(spaces)]
    writes = [
        partial(create_document, setup, owner, space_ids[n % spaces], f"Bench document {n}", DOCUMENT_CONTENT)
        for n in range(documents)
    ]
    created = await bounded(8, writes)
    grants = [
        partial(add_member, setup, owner, space_id, reader.user_id, VIEWER)
        for space_id in space_ids
        for reader in readers
    ]
    await bounded(16, grants)
    return Corpus([reader.access_token for reader in readers], [(d.space_id, d.document_id) for d in created], spaces)


class Targets:
    """The five targets, each a call that draws its (reader, document) from one shared
    sequence, so every target serves the same mix."""

    def __init__(self, endpoints: Mapping[str, Mapping[str, str]], corpus: Corpus) -> None:
        self.metadata = [(("authorization", f"Bearer {token}"),) for token in corpus.tokens]
        self.requests = [knowledge_pb2.GetDocumentRequest(space_id=s, document_id=d) for s, d in corpus.documents]
        self.request_bytes = [request.SerializeToString() for request in self.requests]
        envoy_http = endpoints["envoy"]["http"]
        self.urls = [f"{envoy_http}/v1/spaces/{s}/documents/{d}" for s, d in corpus.documents]
        self.draws = itertools.cycle(corpus.draws(50_000))
        self.channels = {
            "direct": grpc.aio.insecure_channel(endpoints["knowledge"]["grpc"]),
            "envoy": grpc.aio.insecure_channel(endpoints["envoy"]["grpc"]),
            **{runtime: grpc.aio.insecure_channel(f"127.0.0.1:{echo_port(runtime)}") for runtime in RUNTIMES},
        }
        self.session = aiohttp.ClientSession()

    async def response_size(self) -> int:
        stub = knowledge_pb2_grpc.KnowledgeServiceStub(self.channels["direct"])
        return len((await stub.GetDocument(self.requests[0], metadata=self.metadata[0])).SerializeToString())

    def build(self) -> dict[str, Target]:
        direct = knowledge_pb2_grpc.KnowledgeServiceStub(self.channels["direct"])
        via_envoy = knowledge_pb2_grpc.KnowledgeServiceStub(self.channels["envoy"])
        return {
            BARE: Target(self.grpc(self.echo("bare"), self.request_bytes), ["echo (bare)"]),
            MATCHED: Target(self.grpc(self.echo("service"), self.request_bytes), ["echo (service)"]),
            DIRECT: Target(self.grpc(direct.GetDocument, self.requests), ["knowledge"]),
            "GetDocument Envoy gRPC": Target(self.grpc(via_envoy.GetDocument, self.requests), ["knowledge", "envoy"]),
            "GetDocument Envoy JSON": Target(self.json, ["knowledge", "envoy"]),
        }

    def echo(self, runtime: str) -> Callable[..., Awaitable[object]]:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self.channels[runtime].unary_unary(ECHO_METHOD)
        return call

    def grpc(self, method: Callable[..., Awaitable[object]], requests: Sequence[Any]) -> Call:
        async def call() -> bool:
            reader, document = next(self.draws)
            try:
                await method(requests[document], metadata=self.metadata[reader])
            except grpc.aio.AioRpcError:
                return False
            return True

        return call

    async def json(self) -> bool:
        reader, document = next(self.draws)
        async with self.session.get(self.urls[document], headers=dict(self.metadata[reader])) as response:
            await response.read()
            return response.status == 200

    async def close(self) -> None:
        await self.session.close()
        for channel in self.channels.values():
            await channel.close()


async def quiesce(processes: Processes, idle_cores: float = 0.05, timeout_s: float = 600.0) -> float:
    """Wait until the stack's processes together use less than `idle_cores` of a core (the
    seeding's background work, such as indexing, has finished): a measurement shares the cores
    with nothing else. Returns the seconds waited."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        groups = {name: group for name, group in processes().items() if name != CLIENT}
        before = sum(cpu_seconds(groups).values())
        await asyncio.sleep(2.0)
        if (sum(cpu_seconds(groups).values()) - before) / 2.0 < idle_cores:
            return time.monotonic() - began
    raise RuntimeError(f"the stack was still busy after {timeout_s:.0f} s; nothing measured")


def echo_port(runtime: str) -> int:
    return PROFILE.extra_port(RUNTIMES.index(runtime))


async def run(
    seconds: float, concurrency: int, rounds: int, sample_ratio: str, users: int, documents: int, spaces: int
) -> int:
    environ = {"KP_TRACE_SAMPLE_RATIO": sample_ratio}
    async with isolated_launcher(PROFILE, environ) as launcher:
        endpoints = {name: dict(r.component.endpoints()) for name, r in launcher.running.items()}
        setup = transport_for("grpc", endpoints["envoy"]["http"], endpoints["envoy"]["grpc"])
        print(f"seeding {users} users, {documents:,} documents in {spaces} spaces ...", flush=True)
        corpus = await seed(setup, users, documents, spaces)
        await setup.aclose()
        # The receiver's first insert has one-time costs (~1 s of CPU: its ClickHouse client
        # imports pandas); pay them before anything is measured.
        await asyncio.sleep(0.5)  # the services export their spans every 200 ms
        await flush_receiver(endpoints["otlp"]["http"])

        targets = Targets(endpoints, corpus)
        size = await targets.response_size()
        echoes = {runtime: await start_echo(echo_port(runtime), b"x" * size, runtime) for runtime in RUNTIMES}

        def processes() -> dict[str, list[psutil.Process]]:
            echo_trees = {f"echo ({runtime})": process_tree(process.pid) for runtime, process in echoes.items()}
            return {**stack_processes(launcher), **echo_trees}

        waited = await quiesce(processes)
        print(f"background work of the seeding (the vector service indexing the corpus) done after {waited:.0f} s")

        built = targets.build()
        results: dict[str, list[Result]] = {name: [] for name in built}
        window_began = time.time()
        try:
            for round_index in range(rounds):
                order = list(built) if round_index % 2 == 0 else list(reversed(built))
                for name in order:
                    results[name].append(await drive(built[name], processes, seconds, concurrency))
        finally:
            await targets.close()
            for process in echoes.values():
                process.terminate()
                await process.wait()
        met = print_results(built, results, concurrency, rounds, size, corpus)
        window_s = int(time.time() - window_began) + 5
        await asyncio.sleep(1.0)  # the services export their spans every 200 ms
        await flush_receiver(endpoints["otlp"]["http"])
        print_breakdown(TraceStore(connect(endpoints["clickhouse"]["http"])), window_s, sample_ratio, results[DIRECT])
    return 0 if met else 1


def paired_ratio(runs: Sequence[Result], baseline: Sequence[Result]) -> tuple[float, list[float]]:
    """Each round against the baseline's run next to it (same machine state); the median of
    those ratios, and the ratios."""
    ratios = [run.rate / base.rate for run, base in zip(runs, baseline, strict=True)]
    return statistics.median(ratios), ratios


def print_results(
    targets: Mapping[str, Target],
    results: Mapping[str, list[Result]],
    concurrency: int,
    rounds: int,
    size: int,
    corpus: Corpus,
) -> bool:
    """Medians over rounds, the ratios to both baselines, errors; True when the target is met
    (against the matched baseline) and nothing failed."""
    print(f"GetDocument vs echo servers ({size}-byte responses, {concurrency} in flight, median of {rounds} rounds):")
    print(f"  {corpus.cached()}")
    print(
        f"  {'target':<26} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'server CPU':>11} {'vs bare':>8} "
        f"{'vs matched':>10} {'errors':>7}  (vs matched, per round)"
    )
    for name, runs in results.items():
        vs_bare, _ = paired_ratio(runs, results[BARE])
        vs_matched, per_round = paired_ratio(runs, results[MATCHED])
        rate, p50, p99 = (statistics.median(getattr(run, field) for run in runs) for field in RATE_COLUMNS)
        cpu = statistics.median(run.server_cpu_us(targets[name].servers) for run in runs)
        errors = sum(run.errors for run in runs)
        print(
            f"  {name:<26} {rate:>8,.0f} {p50:>8.2f} {p99:>8.2f} {cpu:>8.0f} µs {vs_bare:>8.0%} {vs_matched:>10.0%} "
            f"{errors:>7}  ({', '.join(f'{ratio:.0%}' for ratio in per_round)})"
        )
    ratio, _ = paired_ratio(results[DIRECT], results[MATCHED])
    bare_ratio, _ = paired_ratio(results[DIRECT], results[BARE])
    errors = sum(run.errors for runs in results.values() for run in runs)
    met = ratio >= TARGET_RATIO and errors == 0
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    print(
        f"  direct GetDocument runs at {ratio:.0%} of the matched baseline (target ≥ {TARGET_RATIO:.0%}: {verdict}); "
        f"{bare_ratio:.0%} of the bare one"
    )
    print(f"  errors: {errors} (target 0: {'met' if errors == 0 else 'MISSED, the run fails'})")
    print(
        "  (server CPU: CPU time of the serving processes, all threads, per request; Envoy's included "
        "for the Envoy rows)"
    )
    print("CPU per request by process, where the machine's cores go (median of rounds):")
    for name in (BARE, MATCHED, DIRECT):
        runs = results[name]
        spent = {group: statistics.median(run.cpu_us[group] for run in runs) for group in runs[0].cpu_us}
        shown = sorted(((us, group) for group, us in spent.items() if us >= 1), reverse=True)
        busy = statistics.median(run.machine_busy for run in runs)
        print(
            f"  {name:<26} {sum(spent.values()):>4.0f} µs: {', '.join(f'{group} {us:.0f}' for us, group in shown)}; "
            f"cores {busy:.0%} busy"
        )
    return met


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
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--spaces", type=int, default=10)
    args = parser.parse_args()
    sys.exit(
        asyncio.run(
            run(
                args.seconds,
                args.concurrency,
                args.rounds,
                args.sample_ratio,
                args.users,
                args.documents,
                args.spaces,
            )
        )
    )


if __name__ == "__main__":
    main()
