"""`python -m loadtests.bench_activity`: the activity service's ingest and reads, measured.

On its own stack (profile bench-activity: moved ports, one trace in ten recorded):

1. Ingest, Kafka → queryable in ClickHouse. The bench produces N platform envelopes straight to
   Kafka with aiokafka (default 300,000 `knowledge.document.updated` events, document edits over
   1,000 spaces × 100 documents by 10,000 actors, ~600 bytes each, keyed by space as the
   knowledge service keys them) at a steady offered rate (default 25,000/s). The envelopes and
   their Kafka record batches (~200 records each) are built before the clock starts, so that the
   bench's own CPU during the ingest is little more than its sockets'. They go to a topic of
   their own, `bench.events.v1`, provisioned with the stack (3 partitions, as every platform
   topic): the activity service reads every topic matching its pattern, while on
   knowledge.events.v1 the vector service would embed and index 300k fake documents on the same
   two cores. Printed: events/s sustained, from the first produce until the last of them is in
   `activity.events` (its recorded_at, read from ClickHouse; target ≥ 20,000/s), and the count
   recorded in each second. Meanwhile a probe produces a marker every 100 ms (an edit of a fresh
   document in a real space of the bench's account, on the same topic) and one client polls
   GetDocumentStats through Envoy for the oldest marker not yet seen, every 20 ms, until its
   `edits` is 1: produce → visible p50/p99 (target p99 ≤ 2 s), beside the same for 3 s on the
   idle service first. Where the time went: CPU of each process over the ingest, and the
   service's flushes (its event_ids lookup and insert, and the cycle between flushes) from the
   spans it records in the markers' traces (each marker carries a sampled trace context).
2. Reads at 1M and 10M stored events. The store is topped up server-side (INSERT … SELECT FROM
   numbers, in 1M blocks) with a skew: one hot space (real, the account's) holds 10% of the
   events over 1,000 documents (popularity skewed: the top document has ~3% of the views), the
   rest is spread over 1,000 spaces × 100 documents, one of them a second real space of the
   account (the typical case, ~0.09% of the events); kinds 70% views, 10% edits, 20% searches;
   actors from 10,000; occurred_at uniform over the last 35 days. Once ClickHouse's merges
   settle, 4 clients call each RPC through Envoy over native gRPC for S seconds: GetTopDocuments
   (limit 10) over LAST_MONTH and LAST_DAY on the hot and the typical space, GetDocumentStats
   (LAST_MONTH) on random hot-space documents: p50/p99, req/s, CPU per request. Beside each, the
   floor: the repository's own queries (services.activity.repository.ActivityStore) called
   straight against ClickHouse the same way. Target: p99 ≤ 100 ms at 10M for every RPC.
Any failed RPC, empty ranking, failed send or event not recorded is an error; errors or a
missed target make the exit code 1.
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
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from clickhouse_connect.driver.client import Client

from clients.transports import NATIVE_GRPC, Transport, transport_for
from fixtures.accounts import Account, sign_up
from fixtures.activity import LAST_DAY, LAST_MONTH, document_stats, stats_when, top_documents
from fixtures.knowledge import create_space
from loadtests.cpu import BENCH_CLIENT, ProcessGroups, cpu_seconds, machine_idle_and_total_seconds, stack_processes
from observability.clickhouse import connect
from observability.testing import flush_receiver
from services.activity.domain import Window
from services.activity.repository import ActivityStore
from services.api.activity.v1 import activity_pb2
from services.api.events.v1 import envelope_pb2, events_pb2
from services.kit.clickhouse import open_clickhouse
from services.kit.events import SCHEMA_VERSION
from services.kit.kafka import new_producer
from services.kit.protos import timestamp
from simulations.launcher import isolated_launcher
from simulations.platform import PLATFORM
from simulations.profiles import profile
from simulations.topology import Topology

PROFILE = profile("bench-activity")
T = TypeVar("T")
TOPIC = "bench.events.v1"  # matches the activity service's pattern; nothing else reads it
BULK_TYPE = "knowledge.document.updated"
MARKER_TYPE = "knowledge.document.created"  # counted apart from the bulk, recorded the same way
# Targets (the activity issue's).
INGEST_TARGET = 20_000.0
VISIBLE_P99_TARGET_MS = 2000.0
READ_P99_TARGET_MS = 100.0
# The shape of the data: synthetic ids are '00000000-0000-4000-<group>-<number, 12 digits>'.
ACTORS, SPACES, DOCUMENTS, HOT_DOCUMENTS, HISTORY_DAYS = 10_000, 1000, 100, 1000, 35
ACTOR, SEEDED_SPACE, HOT_DOCUMENT, SEEDED_DOCUMENT = "8000", "9000", "a000", "b000"
INGEST_SPACE, INGEST_DOCUMENT = "c000", "d000"
CONTENT = "An edited paragraph of a knowledge document, as the event carries its new state. " * 3
PROBE_EVERY_S, POLL_EVERY_S, VISIBLE_GIVE_UP_S, IDLE_PROBE_S = 0.1, 0.02, 30.0, 3.0
DRAIN_GIVE_UP_S = 120.0
CLIENTS, TOP_LIMIT = 4, 10
SEED_BLOCK = 1_000_000
MERGES_SETTLE_S = 60.0


def synthetic_id(group: str, number: int) -> str:
    return f"00000000-0000-4000-{group}-{number:012d}"


def bench_topology() -> Topology:
    """The platform with the bench's topic provisioned, so the activity service's pattern
    subscription holds it from the start (a later topic is noticed only within 30 s)."""
    kafka = dict(PLATFORM.settings["kafka"])
    kafka["topics"] = f"{kafka['topics']},{TOPIC}"
    return Topology(PLATFORM.components, {**PLATFORM.settings, "kafka": kafka})


# ------------------------------------------------------------------------------------ ingest


def bulk_records(count: int, seed: int = 20261208) -> list[tuple[bytes, bytes]]:
    """(key, value) Kafka records: envelopes of document edits as the knowledge service writes
    them (keyed by space), over SPACES × DOCUMENTS by ACTORS."""
    rng = random.Random(seed)
    occurred_at = timestamp(datetime.now(UTC))
    records = []
    for _ in range(count):
        space = rng.randrange(SPACES)
        space_id = synthetic_id(INGEST_SPACE, space)
        document_id = synthetic_id(INGEST_DOCUMENT, space * DOCUMENTS + rng.randrange(DOCUMENTS))
        actor_id = synthetic_id(ACTOR, rng.randrange(ACTORS))
        payload = events_pb2.DocumentUpdated(
            space_id=space_id,
            document_id=document_id,
            version=rng.randrange(2, 50),
            title="A document",
            content=CONTENT,
            author_id=actor_id,
        )
        envelope = envelope_pb2.EventEnvelope(
            event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            event_type=BULK_TYPE,
            schema_version=SCHEMA_VERSION,
            occurred_at=occurred_at,
            producer="knowledge",
            actor_user_id=actor_id,
            subject_ids={"space_id": space_id, "document_id": document_id},
            partition_key=space_id,
            payload=payload.SerializeToString(),
        )
        records.append((space_id.encode(), envelope.SerializeToString()))
    return records


@dataclass
class Batch:
    """A Kafka record batch for one partition."""

    partition: int
    builder: BatchBuilder
    records: int = 0

    def add(self, key: bytes, value: bytes) -> bool:
        if self.builder.append(timestamp=None, key=key, value=value) is None:
            return False  # full
        self.records += 1
        return True


async def batches_of(producer: AIOKafkaProducer, records: Sequence[tuple[bytes, bytes]]) -> list[Batch]:
    """The records in Kafka record batches, each for the partition its key maps to (as a keyed
    send would), in the order they fill up: built before the clock starts, so that while the
    ingest is measured the bench's own CPU goes to little more than the sockets."""
    partitions = sorted(await producer.partitions_for(TOPIC))
    partitioner = DefaultPartitioner()
    partition_of: dict[bytes, int] = {}
    open_batches: dict[int, Batch] = {}
    batches: list[Batch] = []
    for key, value in records:
        if key not in partition_of:
            partition_of[key] = partitioner(key, partitions, partitions)
        partition = partition_of[key]
        batch = open_batches.get(partition)
        if batch is None or not batch.add(key, value):
            if batch is not None:
                batches.append(batch)
            batch = open_batches[partition] = Batch(partition, producer.create_batch())
            batch.add(key, value)
    batches += open_batches.values()
    return batches


@dataclass
class Sent:
    first: float  # epoch seconds of the first send
    last: float  # … and of the last
    failed: int  # records in batches the broker did not acknowledge


async def produce_steadily(producer: AIOKafkaProducer, batches: Sequence[Batch], rate: float) -> Sent:
    """Send each batch when the offered rate has reached its first record; each batch's
    acknowledgement is checked once all are sent."""
    deliveries: list[asyncio.Future[object]] = []
    first = time.time()
    began = time.perf_counter()
    offered = 0
    for batch in batches:
        await asyncio.sleep(max(0.0, began + offered / rate - time.perf_counter()))
        deliveries.append(await producer.send_batch(batch.builder, TOPIC, partition=batch.partition))
        offered += batch.records
    last = time.time()
    outcomes = await asyncio.gather(*deliveries, return_exceptions=True)
    failed = sum(
        batch.records for batch, outcome in zip(batches, outcomes, strict=True) if isinstance(outcome, BaseException)
    )
    return Sent(first, last, failed)


def bulk_recorded(clickhouse: Client) -> tuple[int, float]:
    """Bulk events in the store, and when the last of them was recorded (epoch seconds)."""
    count, last = clickhouse.query(
        f"SELECT count(), toUnixTimestamp64Micro(max(recorded_at)) FROM activity.events WHERE source = '{BULK_TYPE}'"
    ).result_rows[0]
    return int(count), int(last) / 1e6


def recorded_per_second(clickhouse: Client, since: float) -> list[int]:
    """Bulk events recorded in each whole second from `since` on."""
    rows = clickhouse.query(
        "SELECT intDiv(toUnixTimestamp64Micro(recorded_at) - {since:Int64}, 1000000) AS second, count() "
        f"FROM activity.events WHERE source = '{BULK_TYPE}' GROUP BY second ORDER BY second",
        parameters={"since": int(since * 1e6)},
    ).result_rows
    counts = {int(second): int(count) for second, count in rows}
    return [counts.get(second, 0) for second in range(max(counts, default=-1) + 1)]


@dataclass
class Probe:
    """Markers produced every PROBE_EVERY_S; one client polls for the oldest one not yet seen.
    Markers share one key, so one partition: they are recorded in the order produced, and
    polling the oldest first misses none (a later one seen at once costs one more call)."""

    producer: AIOKafkaProducer
    envoy: Transport
    account: Account
    space_id: str
    pending: deque[tuple[str, float]] = field(default_factory=deque)
    delays_ms: list[float] = field(default_factory=list)
    trace_ids: list[str] = field(default_factory=list)  # each marker starts a sampled trace
    missed: int = 0
    errors: list[str] = field(default_factory=list)

    def envelope(self, document_id: str) -> bytes:
        return envelope_pb2.EventEnvelope(
            event_id=str(uuid.uuid4()),
            event_type=MARKER_TYPE,
            schema_version=SCHEMA_VERSION,
            occurred_at=timestamp(datetime.now(UTC)),
            producer="knowledge",
            actor_user_id=self.account.user_id,
            subject_ids={"space_id": self.space_id, "document_id": document_id},
            partition_key=self.space_id,
            payload=events_pb2.DocumentCreated(space_id=self.space_id, document_id=document_id).SerializeToString(),
        ).SerializeToString()

    async def mark(self) -> None:
        document_id, trace_id = str(uuid.uuid4()), uuid.uuid4().hex
        # A sampled trace context, as an outbox relay's publish span would send: the service
        # records its handling of the marker's batch (the lookup, the insert) in that trace.
        headers = [("traceparent", f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01".encode())]
        produced = time.perf_counter()
        await self.producer.send_and_wait(
            TOPIC, value=self.envelope(document_id), key=self.space_id.encode(), headers=headers
        )
        self.pending.append((document_id, produced))
        self.trace_ids.append(trace_id)

    async def produce(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.mark()
            await asyncio.sleep(PROBE_EVERY_S)

    async def watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set() or self.pending:
            if not self.pending:
                await asyncio.sleep(POLL_EVERY_S)
                continue
            document_id, produced = self.pending[0]
            reply = await document_stats(self.envoy, self.account, self.space_id, document_id, LAST_MONTH)
            if not reply.ok:
                self.errors.append(f"GetDocumentStats: {reply.code.name}: {reply.details}")
                self.pending.popleft()
            elif isinstance(reply.message, activity_pb2.GetDocumentStatsResponse) and reply.message.edits >= 1:
                self.delays_ms.append((time.perf_counter() - produced) * 1000)
                self.pending.popleft()
                continue
            elif time.perf_counter() - produced > VISIBLE_GIVE_UP_S:
                self.missed += 1
                self.pending.popleft()
            await asyncio.sleep(POLL_EVERY_S)

    async def around(self, work: Awaitable[T]) -> tuple[T, list[float]]:
        """Probe while `work` runs (then until every marker is seen or given up); its result
        and the delays measured meanwhile."""
        self.delays_ms, self.trace_ids = [], []
        stop = asyncio.Event()
        tasks = [asyncio.create_task(self.produce(stop)), asyncio.create_task(self.watch(stop))]
        try:
            result = await work
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        return result, self.delays_ms


def percentile(values: Sequence[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


@dataclass
class Ingest:
    events: int
    sent: Sent
    recorded: int
    last_recorded: float  # epoch seconds
    per_second: list[int]

    @property
    def seconds(self) -> float:
        return self.last_recorded - self.sent.first

    @property
    def rate(self) -> float:
        return self.recorded / self.seconds if self.seconds > 0 else 0.0


async def ingest(producer: AIOKafkaProducer, batches: Sequence[Batch], rate: float, ch: Client) -> Ingest:
    """Produce the batches; wait until the store holds all their events (or DRAIN_GIVE_UP_S
    after the offered stream should have ended)."""
    events = sum(batch.records for batch in batches)
    sending = asyncio.create_task(produce_steadily(producer, batches, rate))
    deadline = time.perf_counter() + events / rate + DRAIN_GIVE_UP_S
    recorded, last = 0, 0.0
    while recorded < events and time.perf_counter() < deadline:
        await asyncio.sleep(0.25)
        recorded, last = await asyncio.to_thread(bulk_recorded, ch)
    sent = await sending
    per_second = await asyncio.to_thread(recorded_per_second, ch, sent.first)
    return Ingest(events, sent, recorded, last, per_second)


PROCESS_SPAN, LOOKUP_SPAN, INSERT_SPAN = f"process {TOPIC}", "SELECT activity.event_ids", "INSERT activity.events"
TRACED_SPANS_SQL = (
    "SELECT SpanName, toUnixTimestamp64Nano(Timestamp), Duration, SpanAttributes['activity.batch.events'] "
    "FROM otel.otel_traces WHERE TraceId IN {ids:Array(String)} AND SpanName IN {names:Array(String)}"
)


async def traced_spans(ch: Client, receiver_http: str, trace_ids: Sequence[str]) -> list[tuple[str, int, int, str]]:
    """The activity service's spans in the markers' traces, once they stop arriving (≤ 10 s):
    (name, start ns, duration ns, events in the flush)."""
    parameters = {"ids": list(trace_ids), "names": [PROCESS_SPAN, LOOKUP_SPAN, INSERT_SPAN]}
    rows: list[tuple[str, int, int, str]] = []
    for _ in range(20):
        await flush_receiver(receiver_http)
        result = await asyncio.to_thread(ch.query, TRACED_SPANS_SQL, parameters=parameters)
        previous, rows = len(rows), [(str(a), int(b), int(c), str(d)) for a, b, c, d in result.result_rows]
        if rows and len(rows) == previous:
            break
        await asyncio.sleep(0.5)
    return rows


def flush_summary(spans: Sequence[tuple[str, int, int, str]]) -> str:
    """Where a flush's time goes in the service, from the spans of the flushes that carried a
    marker (every flush, under load: a marker goes every 100 ms). A flush's spans are repeated
    in each marker's trace it carried: one copy each counts."""
    lookups = {start: (duration, events) for name, start, duration, events in spans if name == LOOKUP_SPAN}
    inserts = {start: duration for name, start, duration, _ in spans if name == INSERT_SPAN}
    waits = [duration / 1e6 for name, _, duration, _ in spans if name == PROCESS_SPAN]
    if not lookups:
        return "  inside the activity service: no flush traced (the markers' spans did not arrive)"
    starts = sorted(lookups)
    cycles = [(later - earlier) / 1e6 for earlier, later in itertools.pairwise(starts)]
    lookup_ms = [duration / 1e6 for duration, _ in lookups.values()]
    insert_ms = [duration / 1e6 for duration in inserts.values()]
    events = [int(count) for _, count in lookups.values() if count.isdigit()]
    cycle, lookup, insert = percentile(cycles, 50), percentile(lookup_ms, 50), percentile(insert_ms, 50)
    return (
        f"  inside the activity service ({len(lookups)} flushes traced by the markers): p50 "
        f"{percentile(events, 50):,.0f} events a flush; event_ids lookup p50 {lookup:,.0f} ms "
        f"(p99 {percentile(lookup_ms, 99):,.0f}), insert p50 {insert:,.0f} ms (p99 {percentile(insert_ms, 99):,.0f}); "
        f"a flush starts every p50 {cycle:,.0f} ms, so ≈ {cycle - lookup - insert:,.0f} ms of each goes to the "
        f"consumer (fetching, decoding, converting the next batch); a marker's batch takes p50 "
        f"{percentile(waits, 50):,.0f} ms from its decoding to stored"
    )


def cpu_summary(groups: ProcessGroups, before: dict[str, float], seconds: float) -> str:
    spent = {name: after - before[name] for name, after in cpu_seconds(groups).items()}
    ranked = sorted(spent.items(), key=lambda item: -item[1])
    shown = [f"{name} {used:.1f} s ({used / seconds:.0%})" for name, used in ranked if used >= 0.05 * seconds]
    rest = sum(used for name, used in ranked if used < 0.05 * seconds)
    return ", ".join([*shown, f"the rest {rest:.1f} s"])


async def ingest_part(
    launcher_groups: ProcessGroups,
    bulk: AIOKafkaProducer,
    probe: Probe,
    batches: Sequence[Batch],
    rate: float,
    ch: Client,
    receiver_http: str,
) -> tuple[bool, int]:
    """Part 1, printed; whether its targets were met, and its errors."""
    # The first marker waits for the consumer group to hold the topic's partitions.
    document_id = str(uuid.uuid4())
    await probe.producer.send_and_wait(TOPIC, value=probe.envelope(document_id), key=probe.space_id.encode())
    await stats_when(probe.envoy, probe.account, probe.space_id, document_id, lambda s: s.edits == 1, LAST_MONTH)
    _, idle_ms = await probe.around(asyncio.sleep(IDLE_PROBE_S))

    cpu_before, (idle_before, total_before) = cpu_seconds(launcher_groups), machine_idle_and_total_seconds()
    began = time.perf_counter()
    measured, loaded_ms = await probe.around(ingest(bulk, batches, rate, ch))
    elapsed = time.perf_counter() - began
    idle_after, total_after = machine_idle_and_total_seconds()
    busy = 1 - (idle_after - idle_before) / max(total_after - total_before, 1e-9)

    sent = measured.sent
    rate_ok = measured.recorded == measured.events and measured.rate >= INGEST_TARGET
    visible_p99 = percentile(loaded_ms, 99)
    visible_ok = visible_p99 <= VISIBLE_P99_TARGET_MS
    unrecorded = measured.events - measured.recorded
    errors = sent.failed + unrecorded + probe.missed + len(probe.errors)
    print(
        f"ingest: {measured.events:,} events offered at {rate:,.0f}/s to {TOPIC} (3 partitions), sent in "
        f"{sent.last - sent.first:.1f} s ({measured.events / max(sent.last - sent.first, 1e-9):,.0f}/s), "
        f"{sent.failed} sends failed"
    )
    print(
        f"  sustained: {measured.recorded:,} recorded in {measured.seconds:.1f} s from the first produce: "
        f"{measured.rate:,.0f} events/s (target ≥ {INGEST_TARGET:,.0f}/s: {'met' if rate_ok else 'MISSED'}); "
        f"the last recorded {measured.last_recorded - sent.last:.1f} s after the last produce; "
        f"{unrecorded:,} not recorded"
    )
    print(f"  recorded in each second (thousands): {' '.join(f'{n / 1000:.1f}' for n in measured.per_second)}")
    print(
        f"  produce → visible in GetDocumentStats through Envoy (a marker every {PROBE_EVERY_S * 1000:.0f} ms, "
        f"polled every {POLL_EVERY_S * 1000:.0f} ms): under ingest p50 {percentile(loaded_ms, 50):,.0f} ms, "
        f"p99 {visible_p99:,.0f} ms over {len(loaded_ms)} markers (target p99 ≤ {VISIBLE_P99_TARGET_MS:,.0f} ms: "
        f"{'met' if visible_ok else 'MISSED'}); idle p50 {percentile(idle_ms, 50):,.0f} ms, "
        f"p99 {percentile(idle_ms, 99):,.0f} ms over {len(idle_ms)}; {probe.missed} not seen within "
        f"{VISIBLE_GIVE_UP_S:.0f} s; {len(probe.errors)} failed calls"
    )
    for error in probe.errors[:3]:
        print(f"    error: {error}")
    print(
        f"  CPU over the ingest ({elapsed:.1f} s; machine {busy:.0%} busy of {os.cpu_count()} cores; "
        f"% of one core): {cpu_summary(launcher_groups, cpu_before, elapsed)}",
        flush=True,
    )
    print(flush_summary(await traced_spans(ch, receiver_http, probe.trace_ids)), flush=True)
    return rate_ok and visible_ok, errors


# ------------------------------------------------------------------------------------- reads

SEED_SQL = """
INSERT INTO activity.events (event_id, actor_id, kind, space_id, document_id, occurred_at, source, attributes)
SELECT event_id, actor_id, kind, space_id, document_id, occurred_at, 'client', map()
FROM (
    SELECT
        generateUUIDv4(number) AS event_id,
        toUUID(concat('00000000-0000-4000-{actor}-', leftPad(toString(cityHash64(number, 1) % {actors}), 12, '0')))
            AS actor_id,
        multiIf(cityHash64(number, 4) % 10 < 7, 1, cityHash64(number, 4) % 10 < 8, 2, 3) AS kind,
        cityHash64(number, 2) % 10 = 0 AS hot,
        cityHash64(number, 5) % {spaces} AS other,
        toUInt64(pow((cityHash64(number, 3) % 1000000) / 1000000, 2) * if(hot, {hot_documents}, {documents})) AS doc,
        if(hot, toUUID('{hot_space}'), if(other = 0, toUUID('{typical_space}'),
            toUUID(concat('00000000-0000-4000-{seeded_space}-', leftPad(toString(other), 12, '0'))))) AS space_id,
        if(kind = 3, toUUID('00000000-0000-0000-0000-000000000000'),
            toUUID(concat('00000000-0000-4000-', if(hot, '{hot_document}', '{seeded_document}'), '-',
                leftPad(toString(if(hot, doc, other * {documents} + doc)), 12, '0')))) AS document_id,
        now64(6) - toIntervalMicrosecond(cityHash64(number, 6) % ({days} * 86400 * 1000000)) AS occurred_at
    FROM numbers({start}, {count})
)
SETTINGS max_insert_block_size = 1000000
"""


def stored(ch: Client) -> int:
    return int(ch.query("SELECT count() FROM activity.events").result_rows[0][0])


def seed(ch: Client, hot_space: str, typical_space: str, start: int, count: int) -> None:
    """`count` more skewed events, numbered from `start` (every number gives other events)."""
    for block in range(start, start + count, SEED_BLOCK):
        sql = SEED_SQL.format(
            actor=ACTOR,
            actors=ACTORS,
            spaces=SPACES,
            hot_documents=HOT_DOCUMENTS,
            documents=DOCUMENTS,
            hot_space=uuid.UUID(hot_space),
            typical_space=uuid.UUID(typical_space),
            seeded_space=SEEDED_SPACE,
            hot_document=HOT_DOCUMENT,
            seeded_document=SEEDED_DOCUMENT,
            days=HISTORY_DAYS,
            start=block,
            count=min(SEED_BLOCK, start + count - block),
        )
        ch.command(sql)


def settle_merges(ch: Client) -> tuple[float, int]:
    """Wait until no merge runs in the activity database (at most MERGES_SETTLE_S); seconds
    waited and the active parts left."""
    began = time.perf_counter()
    while time.perf_counter() - began < MERGES_SETTLE_S:
        if not int(ch.query("SELECT count() FROM system.merges WHERE database = 'activity'").result_rows[0][0]):
            break
        time.sleep(0.5)
    parts = int(ch.query("SELECT count() FROM system.parts WHERE database = 'activity' AND active").result_rows[0][0])
    return time.perf_counter() - began, parts


Call = Callable[[random.Random], Awaitable[str]]  # "" when the answer is right, else the fault


@dataclass(frozen=True)
class ReadCase:
    rpc: str
    scope: str
    served: Call  # through Envoy
    floor: Call  # the repository's query, straight to ClickHouse


def window_name(window: int) -> str:
    return Window(window).name


def top_case(
    envoy: Transport, account: Account, store: ActivityStore, scope: str, space_id: str, window: int
) -> ReadCase:
    async def served(rng: random.Random) -> str:
        reply = await top_documents(envoy, account, space_id, window, TOP_LIMIT)
        if not reply.ok:
            return f"GetTopDocuments: {reply.code.name}: {reply.details}"
        response = reply.message
        assert isinstance(response, activity_pb2.GetTopDocumentsResponse)
        return "" if response.documents else f"GetTopDocuments ranked nothing in the {scope} space"

    async def floor(rng: random.Random) -> str:
        top = await store.top_documents(space_id, datetime.now(UTC) - Window(window).length, TOP_LIMIT)
        return "" if top else f"top_documents ranked nothing in the {scope} space"

    return ReadCase("GetTopDocuments", f"{scope} space, {window_name(window)}", served, floor)


def stats_case(envoy: Transport, account: Account, store: ActivityStore, space_id: str) -> ReadCase:
    def document(rng: random.Random) -> str:
        return synthetic_id(HOT_DOCUMENT, rng.randrange(HOT_DOCUMENTS))

    async def served(rng: random.Random) -> str:
        reply = await document_stats(envoy, account, space_id, document(rng), LAST_MONTH)
        return "" if reply.ok else f"GetDocumentStats: {reply.code.name}: {reply.details}"

    async def floor(rng: random.Random) -> str:
        await store.document_stats(space_id, document(rng), datetime.now(UTC) - Window.LAST_MONTH.length)
        return ""

    return ReadCase("GetDocumentStats", "hot space, LAST_MONTH", served, floor)


@dataclass
class Timing:
    latencies_ms: list[float]
    seconds: float
    faults: list[str]
    cpu_ms: dict[str, float] = field(default_factory=dict)  # per request, by process group

    @property
    def rate(self) -> float:
        return len(self.latencies_ms) / self.seconds


async def timed(call: Call, seconds: float, groups: ProcessGroups) -> Timing:
    """CLIENTS callers in a closed loop for `seconds`, after a warm-up of a few calls each."""
    faults: list[str] = []
    for n in range(3):
        faults += [fault for fault in await asyncio.gather(*(call(random.Random(-n)) for _ in range(CLIENTS))) if fault]
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def caller(n: int) -> None:
        rng = random.Random(n)
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            try:
                fault = await call(rng)
            except Exception as error:
                fault = repr(error)
            latencies.append((time.perf_counter() - began) * 1000)
            if fault:
                faults.append(fault)

    cpu_before = cpu_seconds(groups)
    began = time.perf_counter()
    await asyncio.gather(*(caller(n) for n in range(CLIENTS)))
    elapsed = time.perf_counter() - began
    calls = max(len(latencies), 1)
    cpu_ms = {name: (spent - cpu_before[name]) * 1000 / calls for name, spent in cpu_seconds(groups).items()}
    return Timing(latencies, elapsed, faults, cpu_ms)


@dataclass
class ReadRow:
    events: int
    case: ReadCase
    served: Timing
    floor: Timing

    def render(self) -> str:
        served, floor, cpu = self.served, self.floor, self.served.cpu_ms
        return (
            f"  {self.events / 1e6:>5.1f}M {self.case.rpc:<17} {self.case.scope:<26} "
            f"{percentile(served.latencies_ms, 50):>7.1f} {percentile(served.latencies_ms, 99):>7.1f} "
            f"{served.rate:>7.0f} {percentile(floor.latencies_ms, 50):>9.1f} "
            f"{percentile(floor.latencies_ms, 99):>9.1f} "
            f"{floor.rate:>7.0f} {cpu.get('activity', 0.0):>8.2f} {cpu.get('clickhouse', 0.0):>10.2f} "
            f"{cpu.get('envoy', 0.0):>5.2f} {cpu.get(BENCH_CLIENT, 0.0):>6.2f} "
            f"{len(served.faults) + len(floor.faults):>6}"
        )


READ_HEADER = (
    f"  {'events':>6} {'rpc':<17} {'window/space':<26} {'p50 ms':>7} {'p99 ms':>7} {'req/s':>7} "
    f"{'floor p50':>9} {'floor p99':>9} {'floor/s':>7} {'CPU ms/req: activity':>8} {'clickhouse':>10} "
    f"{'envoy':>5} {'client':>6} {'errors':>6}"
)


async def read_part(
    groups: ProcessGroups,
    envoy: Transport,
    account: Account,
    ch: Client,
    clickhouse_url: str,
    spaces: tuple[str, str],
    sizes: Sequence[int],
    seconds: float,
) -> tuple[bool, int]:
    """Part 2, printed; whether the target was met at the largest size, and the errors."""
    hot_space, typical_space = spaces
    client = await open_clickhouse(clickhouse_url, "activity")
    store = ActivityStore(client, "activity")
    cases = [
        top_case(envoy, account, store, "hot", hot_space, LAST_MONTH),
        top_case(envoy, account, store, "hot", hot_space, LAST_DAY),
        top_case(envoy, account, store, "typical", typical_space, LAST_MONTH),
        top_case(envoy, account, store, "typical", typical_space, LAST_DAY),
        stats_case(envoy, account, store, hot_space),
    ]
    rows: list[ReadRow] = []
    numbered = 0  # the seed's numbers used so far
    try:
        for size in sizes:
            before = await asyncio.to_thread(stored, ch)
            began = time.perf_counter()
            await asyncio.to_thread(seed, ch, hot_space, typical_space, numbered, max(0, size - before))
            numbered += max(0, size - before)
            seeded_s = time.perf_counter() - began
            waited, parts = await asyncio.to_thread(settle_merges, ch)
            events = await asyncio.to_thread(stored, ch)
            print(
                f"stored events: {events:,} ({events - before:,} seeded in {seeded_s:.1f} s; merges settled in "
                f"{waited:.1f} s, {parts} active parts in the activity database)",
                flush=True,
            )
            if size == sizes[0]:
                print(
                    f"reads, {CLIENTS} clients in a closed loop for {seconds:.0f} s per row; served: native gRPC "
                    "through Envoy; floor: the repository's query straight to ClickHouse (ActivityStore)"
                )
                print(READ_HEADER)
            for case in cases:
                served = await timed(case.served, seconds, groups)
                floor = await timed(case.floor, seconds, groups)
                row = ReadRow(events, case, served, floor)
                rows.append(row)
                print(row.render(), flush=True)
                for fault in [*served.faults, *floor.faults][:3]:
                    print(f"    error: {fault}")
    finally:
        await client.close()
    largest = [row for row in rows if row.events == rows[-1].events] if rows else []
    worst = max((percentile(row.served.latencies_ms, 99) for row in largest), default=float("nan"))
    met = bool(largest) and worst <= READ_P99_TARGET_MS
    errors = sum(len(row.served.faults) + len(row.floor.faults) for row in rows)
    print(
        f"  target: p99 ≤ {READ_P99_TARGET_MS:.0f} ms through Envoy at {sizes[-1] / 1e6:.0f}M stored events, "
        f"every row: worst p99 {worst:.1f} ms ({'met' if met else 'MISSED'})"
    )
    return met, errors


# --------------------------------------------------------------------------------------- run


async def run(events: int, rate: float, sizes: Sequence[int], seconds: float) -> int:
    began = time.perf_counter()
    records = bulk_records(events)
    print(f"{len(records):,} envelopes built in {time.perf_counter() - began:.1f} s (before the stack starts)")
    async with isolated_launcher(PROFILE, topology=bench_topology()) as launcher:
        endpoints = {name: dict(r.component.endpoints()) for name, r in launcher.running.items()}
        envoy = transport_for(NATIVE_GRPC, endpoints["envoy"]["http"], endpoints["envoy"]["grpc"])
        clickhouse_url, bootstrap = endpoints["clickhouse"]["http"], endpoints["kafka"]["bootstrap"]
        ch = connect(clickhouse_url)
        account = await sign_up(envoy, "activity-bench")
        probe_space, hot_space, typical_space = [
            (await create_space(envoy, account, name)).space_id for name in ("Probe", "Hot", "Typical")
        ]
        # Batches of ~200 records (~8 ms of the offered stream at 25,000/s).
        bulk = AIOKafkaProducer(bootstrap_servers=bootstrap, client_id="bench-activity", max_batch_size=128 * 1024)
        markers = new_producer(bootstrap, client_id="bench-activity-probe")
        await bulk.start()
        await markers.start()
        groups = stack_processes(launcher)
        try:
            batches = await batches_of(bulk, records)
            del records
            probe = Probe(markers, envoy, account, probe_space)
            ingest_met, ingest_errors = await ingest_part(
                groups, bulk, probe, batches, rate, ch, endpoints["otlp"]["http"]
            )
        finally:
            await bulk.stop()
            await markers.stop()
        reads_met, read_errors = await read_part(
            groups, envoy, account, ch, clickhouse_url, (hot_space, typical_space), sizes, seconds
        )
        ch.close()
        await envoy.aclose()
    errors = ingest_errors + read_errors
    met = ingest_met and reads_met
    print(
        f"targets: ingest ≥ {INGEST_TARGET:,.0f} events/s and produce → visible p99 ≤ {VISIBLE_P99_TARGET_MS:,.0f} ms "
        f"({'met' if ingest_met else 'MISSED'}); reads p99 ≤ {READ_P99_TARGET_MS:.0f} ms at {sizes[-1]:,} events "
        f"({'met' if reads_met else 'MISSED'}); errors: {errors} (target 0); {time.perf_counter() - began:.0f} s in all"
    )
    return 0 if met and errors == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000, help="events produced for the ingest")
    parser.add_argument("--rate", type=float, default=25_000.0, help="offered ingest rate, events/s")
    parser.add_argument("--sizes", default="1000000,10000000", help="stored events the reads are measured at")
    parser.add_argument("--seconds", type=float, default=3.0, help="per read row, served and floor each")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    sys.exit(asyncio.run(run(args.events, args.rate, sizes, args.seconds)))


if __name__ == "__main__":
    main()
