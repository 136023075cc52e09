"""The search benchmark's mixed case: writes, searches and reads at once, with the real model.

On its own stack in the default configuration (all-MiniLM-L6-v2, every span traced), a corpus
of notes is seeded; then, for `seconds`, notes are created, searched for and read through Envoy
at fixed rates, open loop (a slow answer does not slow the arrivals, as with real users).
Printed side by side, each with its target: commit → searchable p50/p99 of the notes written
under load (the vector service's own measure, one per indexed version, read from its index
spans in the trace store) and search latency p50/p99 as the clients saw it.

Before the stack starts, `floor()` measures where the limit is on this machine: the model's
chunks/s and tokens/s per batch size, on one and on two threads, for notes like these and for
full-size chunks. The model's cost is linear in the tokens it reads, so the floor says how many
tokens per second of writes the cores can index at all.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psutil
from faker import Faker

from clients.transports import Reply, Transport, transport_for
from fixtures.accounts import Account, sign_up
from fixtures.knowledge import VIEWER, add_member, create_space
from loadtests.cpu import cpu_seconds, machine_idle_and_total_seconds, stack_processes
from observability.clickhouse import connect
from observability.testing import flush_receiver
from services.api.knowledge.v1 import knowledge_pb2
from services.api.vector.v1 import vector_pb2
from services.vector.chunking import chunk_text
from services.vector.embeddings import MiniLmEmbedder
from services.vector.indexing import document_text
from simulations.launcher import Launcher, isolated_launcher
from simulations.profiles import profile

K = "knowledge.v1.KnowledgeService"
V = "vector.v1.VectorService"
FRESHNESS_P99_TARGET_MS = 1000.0
SEARCH_P99_TARGET_MS = 50.0
SPACES = 10
INDEXED_WAIT_S = 120.0
CORES = psutil.cpu_count() or 1


@dataclass(frozen=True)
class MixedLoad:
    writes_per_s: float = 30.0
    searches_per_s: float = 50.0
    reads_per_s: float = 20.0
    seconds: float = 30.0
    seed_notes: int = 1000
    sentences_per_note: int = 5


def note(faker: Faker, sentences: int) -> tuple[str, str]:
    """A note as people write them: a short title and a paragraph."""
    return faker.sentence(nb_words=5).rstrip("."), faker.paragraph(nb_sentences=sentences)


# -------------------------------------------------------------------------------------------
# The floor: what the model costs on these cores, before anything else runs
# -------------------------------------------------------------------------------------------


def floor(notes: Sequence[str], chunks: Sequence[str], batch_sizes: Sequence[int] = (1, 8, 32)) -> None:
    """Print chunks/s and tokens/s per batch size and thread count, measured in this process."""
    print("the floor: all-MiniLM-L6-v2 alone in this process, texts embedded back to back")
    print(f"  {'texts':<22} {'tokens':>6} {'threads':>7} " + " ".join(f"{f'batch {b}':>18}" for b in batch_sizes))
    models = {threads: MiniLmEmbedder(threads=threads) for threads in (1, 2)}
    for label, texts in (("notes (title + para)", notes), ("full chunks (~700 ch)", chunks)):
        tokens = statistics.mean(models[1].token_count(text) for text in texts)
        for threads, model in models.items():
            cells = []
            for batch_size in batch_sizes:
                model.batch_size = batch_size
                model.embed_sync(texts[:batch_size])  # warm up
                began = time.perf_counter()
                model.embed_sync(texts)
                rate = len(texts) / (time.perf_counter() - began)
                cells.append(f"{rate:6.0f}/s {rate * tokens:6.0f} tok/s")
            print(f"  {label:<22} {tokens:>6.0f} {threads:>7} " + " ".join(f"{cell:>18}" for cell in cells))


# -------------------------------------------------------------------------------------------
# The load
# -------------------------------------------------------------------------------------------


@dataclass
class Outcomes:
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def p50_ms(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else 0.0

    def p99_ms(self) -> float:
        return statistics.quantiles(self.latencies_ms, n=100)[98] if len(self.latencies_ms) > 1 else self.p50_ms()


async def open_loop(per_second: float, seconds: float, action: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """Start `action(n)` at a steady `per_second` for `seconds`, whatever the earlier ones are
    doing; returns when every started action has finished."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    started: list[asyncio.Task[None]] = []
    for n in range(int(per_second * seconds)):
        await asyncio.sleep(max(0.0, began + n / per_second - loop.time()))
        started.append(asyncio.create_task(action(n)))
    await asyncio.gather(*started)


async def timed(outcomes: Outcomes, call: Awaitable[Reply]) -> Reply:
    began = time.perf_counter()
    reply = await call
    outcomes.latencies_ms.append((time.perf_counter() - began) * 1000)
    if not reply.ok:
        outcomes.errors.append(f"{reply.method}: {reply.code.name}: {reply.details}")
    return reply


async def create_note(
    envoy: Transport, owner: Account, space_id: str, title: str, content: str, outcomes: Outcomes
) -> str | None:
    request = knowledge_pb2.CreateDocumentRequest(space_id=space_id, title=title, content=content)
    reply = await timed(outcomes, envoy.unary(f"{K}/CreateDocument", request, token=owner.access_token, timeout=30))
    if not reply.ok:
        return None
    created = reply.unwrap()
    assert isinstance(created, knowledge_pb2.CreateDocumentResponse)
    return created.document.document_id


async def chunk_count(envoy: Transport, account: Account) -> int:
    reply = await envoy.unary(f"{V}/GetIndexStats", vector_pb2.GetIndexStatsRequest(), token=account.access_token)
    return int(reply.unwrap().chunk_count)  # type: ignore[attr-defined]


async def until_indexed(envoy: Transport, account: Account, expected: int) -> int:
    """Wait until the index holds `expected` chunks (or INDEXED_WAIT_S passes); returns how many
    are still missing."""
    deadline = time.monotonic() + INDEXED_WAIT_S
    while (count := await chunk_count(envoy, account)) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return max(0, expected - count)


def indexing_freshness(clickhouse_http: str, since_ns: int) -> tuple[int, float, float]:
    """(versions, p50 ms, p99 ms) of commit → searchable, from the vector service's index spans
    that ended after `since_ns` (each carries the delay it measured)."""
    client = connect(clickhouse_http)
    try:
        [row] = client.query(
            "SELECT count(), quantileExact(0.5)(f), quantileExact(0.99)(f) FROM ("
            " SELECT toFloat64(SpanAttributes['index.freshness_ms']) AS f FROM otel.otel_traces"
            " WHERE ServiceName = 'vector' AND mapContains(SpanAttributes, 'index.freshness_ms')"
            " AND Timestamp >= fromUnixTimestamp64Nano({since:Int64}))",
            parameters={"since": since_ns},
        ).result_rows
    finally:
        client.close()
    return int(row[0]), float(row[1] or 0.0), float(row[2] or 0.0)


@dataclass
class Stage:
    """The stack as the load sees it: Envoy, who writes, who reads, where."""

    envoy: Transport
    owner: Account
    reader: Account
    spaces: list[str]
    notes: list[tuple[str, str]] = field(default_factory=list)  # (space_id, document_id), seeded
    chunks: int = 0  # chunks the index should hold

    @classmethod
    async def open(cls, envoy: Transport) -> Stage:
        owner, reader = await sign_up(envoy, "owner"), await sign_up(envoy, "reader")
        spaces = []
        for n in range(SPACES):
            space = await create_space(envoy, owner, f"Notes {n}")
            await add_member(envoy, owner, space.space_id, reader.user_id, VIEWER)
            spaces.append(space.space_id)
        return cls(envoy, owner, reader, spaces)

    def expect(self, written: Sequence[tuple[str, str]]) -> None:
        self.chunks += sum(len(chunk_text(document_text(title, content))) for title, content in written)


async def seed(stage: Stage, notes: Sequence[tuple[str, str]]) -> None:
    seeding = Outcomes()
    began = time.perf_counter()
    slots = asyncio.Semaphore(8)

    async def one(title: str, content: str) -> None:
        async with slots:
            space_id = random.choice(stage.spaces)
            document_id = await create_note(stage.envoy, stage.owner, space_id, title, content, seeding)
            if document_id is not None:
                stage.notes.append((space_id, document_id))

    await asyncio.gather(*(one(title, content) for title, content in notes))
    stage.expect(notes)
    missing = await until_indexed(stage.envoy, stage.owner, stage.chunks)
    print(
        f"seeded {len(stage.notes):,} notes ({stage.chunks:,} chunks) in {SPACES} spaces, indexed in "
        f"{time.perf_counter() - began:.1f} s; {len(seeding.errors)} errors, {missing} chunks unindexed",
        flush=True,
    )


@dataclass
class Measured:
    load: MixedLoad
    writes: Outcomes = field(default_factory=Outcomes)
    searches: Outcomes = field(default_factory=Outcomes)
    reads: Outcomes = field(default_factory=Outcomes)
    written: int = 0
    unindexed: int = 0
    versions: int = 0
    fresh_p50_ms: float = 0.0
    fresh_p99_ms: float = 0.0
    cores: dict[str, float] = field(default_factory=dict)  # cores each process group used under the load
    idle_cores: float = 0.0

    @property
    def errors(self) -> list[str]:
        return self.writes.errors + self.searches.errors + self.reads.errors

    @property
    def fresh_ok(self) -> bool:
        return self.fresh_p99_ms <= FRESHNESS_P99_TARGET_MS and self.unindexed == 0 and self.versions == self.written

    @property
    def search_ok(self) -> bool:
        return self.searches.p99_ms() <= SEARCH_P99_TARGET_MS

    def cpu_ms_per(self, operations: int) -> dict[str, float]:
        """CPU milliseconds each process group spent per operation of the load."""
        return {name: cores * self.load.seconds * 1000 / operations for name, cores in self.cores.items()}


async def drive(stage: Stage, load: MixedLoad, faker: Faker, launcher: Launcher) -> Measured:
    """The load, open loop, then the wait until everything written is searchable. Every search
    asks something new (a repeated query would measure a cache, not the model)."""
    endpoints = {name: dict(r.component.endpoints()) for name, r in launcher.running.items()}
    groups = stack_processes(launcher)
    measured = Measured(load)
    written = [note(faker, load.sentences_per_note) for _ in range(int(load.writes_per_s * load.seconds))]
    queries = [faker.sentence(nb_words=random.randint(3, 7)) for _ in range(int(load.searches_per_s * load.seconds))]

    async def write(n: int) -> None:
        await create_note(stage.envoy, stage.owner, random.choice(stage.spaces), *written[n], measured.writes)

    async def search(n: int) -> None:
        request = vector_pb2.SearchRequest(query=queries[n], top_k=10)
        await timed(measured.searches, stage.envoy.unary(f"{V}/Search", request, token=stage.reader.access_token))

    async def read(n: int) -> None:
        space_id, document_id = stage.notes[n % len(stage.notes)]
        request = knowledge_pb2.GetDocumentRequest(space_id=space_id, document_id=document_id)
        await timed(measured.reads, stage.envoy.unary(f"{K}/GetDocument", request, token=stage.reader.access_token))

    since_ns, cpu_before = time.time_ns(), cpu_seconds(groups)
    idle_before, total_before = machine_idle_and_total_seconds()
    await asyncio.gather(
        open_loop(load.writes_per_s, load.seconds, write),
        open_loop(load.searches_per_s, load.seconds, search),
        open_loop(load.reads_per_s, load.seconds, read),
    )
    idle_after, total_after = machine_idle_and_total_seconds()
    seconds = (total_after - total_before) / CORES
    measured.cores = {name: (spent - cpu_before[name]) / seconds for name, spent in cpu_seconds(groups).items()}
    measured.idle_cores = (idle_after - idle_before) / seconds
    stage.expect(written)
    measured.written = len(written)
    measured.unindexed = await until_indexed(stage.envoy, stage.owner, stage.chunks)
    await asyncio.sleep(1.5)  # the vector service exports its last spans
    await flush_receiver(endpoints["otlp"]["http"])
    freshness = await asyncio.to_thread(indexing_freshness, endpoints["clickhouse"]["http"], since_ns)
    measured.versions, measured.fresh_p50_ms, measured.fresh_p99_ms = freshness
    return measured


async def cost_per_operation(stage: Stage, load: MixedLoad, faker: Faker, launcher: Launcher) -> None:
    """Writes alone, then searches alone, at the load's rates: CPU per operation by process,
    and what the whole load asks of the cores."""
    seconds = min(load.seconds, 10.0)
    writes = await drive(
        stage,
        MixedLoad(writes_per_s=load.writes_per_s, searches_per_s=0, reads_per_s=0, seconds=seconds),
        faker,
        launcher,
    )
    searches = await drive(
        stage,
        MixedLoad(writes_per_s=0, searches_per_s=load.searches_per_s, reads_per_s=0, seconds=seconds),
        faker,
        launcher,
    )
    per_write = writes.cpu_ms_per(writes.written)
    per_search = searches.cpu_ms_per(len(searches.searches.latencies_ms))
    names = [name for name, _ in sorted(per_write.items(), key=lambda item: -item[1] - per_search.get(item[0], 0.0))]
    names = [name for name in names if per_write[name] + per_search[name] >= 0.05]
    print(f"CPU per operation, each kind alone for {seconds:.0f} s at the rate above (ms, by process):")
    print(f"  {'':<14} {'all':>6} " + " ".join(f"{name:>12}" for name in names))
    for label, cost in (("note write", per_write), ("search", per_search)):
        print(f"  {label:<14} {sum(cost.values()):>6.1f} " + " ".join(f"{cost[name]:>12.1f}" for name in names))
    demand = (load.writes_per_s * sum(per_write.values()) + load.searches_per_s * sum(per_search.values())) / 1000
    print(
        f"  {load.writes_per_s:.0f} writes/s and {load.searches_per_s:.0f} searches/s ask {demand:.2f} of the "
        f"{CORES} cores (reads and the stack's idle work besides): above ~0.8 of them, queues and tails grow",
        flush=True,
    )


def print_mixed(rows: Sequence[Measured]) -> None:
    """One row per load level: freshness and search latency side by side, with the targets."""
    print(
        f"mixed load through Envoy, open loop (notes of {rows[0].load.sentences_per_note} sentences, "
        "one chunk each; all-MiniLM-L6-v2; every span traced):"
    )
    print(
        f"  {'writes/s':>8} {'searches/s':>10} {'reads/s':>7} | {'fresh p50':>9} {'fresh p99':>9} | "
        f"{'search p50':>10} {'search p99':>10} | {'write p99':>9} {'read p99':>8} | {'errors':>6} {'idle':>5}"
    )
    for m in rows:
        print(
            f"  {m.load.writes_per_s:>8.0f} {m.load.searches_per_s:>10.0f} {m.load.reads_per_s:>7.0f} | "
            f"{m.fresh_p50_ms:>6.0f} ms {m.fresh_p99_ms:>6.0f} ms{'' if m.fresh_ok else '!'} | "
            f"{m.searches.p50_ms():>7.1f} ms {m.searches.p99_ms():>7.1f} ms{'' if m.search_ok else '!'} | "
            f"{m.writes.p99_ms():>6.0f} ms {m.reads.p99_ms():>5.0f} ms | {len(m.errors):>6} {m.idle_cores:>5.2f}"
        )
    print(
        f"  targets: commit → searchable p99 ≤ {FRESHNESS_P99_TARGET_MS:.0f} ms with every version indexed, "
        f"search p99 ≤ {SEARCH_P99_TARGET_MS:.0f} ms, no errors ('!' marks a miss); idle: cores left idle"
    )


def verdict(target: Measured) -> bool:
    met = target.fresh_ok and target.search_ok and not target.errors
    print(
        f"at {target.load.writes_per_s:.0f} writes/s and {target.load.searches_per_s:.0f} searches/s: "
        f"commit → searchable p99 {target.fresh_p99_ms:.0f} ms (≤ {FRESHNESS_P99_TARGET_MS:.0f}: "
        f"{'met' if target.fresh_ok else 'MISSED'}), search p99 {target.searches.p99_ms():.1f} ms "
        f"(≤ {SEARCH_P99_TARGET_MS:.0f}: {'met' if target.search_ok else 'MISSED'}), {len(target.errors)} errors"
        + (f" (first: {target.errors[0]})" if target.errors else "")
    )
    return met


async def run_mixed(load: MixedLoad, scales: Sequence[float] = (0.5, 0.75, 1.0)) -> bool:
    """The model's floor, the cost of each operation, then the mixed load at each scale of the
    target rates on one seeded stack; True when the target load (scale 1) meets every target."""
    faker = Faker()
    Faker.seed(11)
    random.seed(11)
    seed_notes = [note(faker, load.sentences_per_note) for _ in range(load.seed_notes)]
    long_chunks = [c.text for _ in range(20) for c in chunk_text("\n\n".join(faker.text(700) for _ in range(5)))]
    floor([document_text(*pair) for pair in seed_notes[:200]], long_chunks[:60])
    rows = []
    async with isolated_launcher(profile("bench-search-mixed")) as launcher:
        envoy_ports = dict(launcher.running["envoy"].component.endpoints())
        envoy = transport_for("grpc", envoy_ports["http"], envoy_ports["grpc"])
        try:
            stage = await Stage.open(envoy)
            await seed(stage, seed_notes)
            await cost_per_operation(stage, load, faker, launcher)
            for scale in scales:
                scaled = replace(
                    load,
                    writes_per_s=load.writes_per_s * scale,
                    searches_per_s=load.searches_per_s * scale,
                    reads_per_s=load.reads_per_s * scale,
                )
                rows.append(await drive(stage, scaled, faker, launcher))
        finally:
            await envoy.aclose()
    print_mixed(rows)
    return verdict(rows[-1])
