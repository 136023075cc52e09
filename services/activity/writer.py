"""Writing events to ClickHouse exactly once: a group commit with a deduplication step.

Every event this process records — a client's TrackEvent(s), a batch from the platform topics
— is handed to the one `EventWriter`, which writes what has queued in one flush:

1. drop ids repeated within the flush (the first occurrence wins);
2. look the remaining ids up in `event_ids` and drop those recorded already;
3. insert the rest in one insert (the materialized views follow inside it), with a
   deduplication token made of its ids, so that an insert retried after a lost reply is
   dropped by ClickHouse if its first attempt landed after all;
4. tell each submitter which of its events were stored and which were duplicates.

Flushes run one at a time, so no two inserts race for the same id in this process (the
lookup and the insert are not atomic in ClickHouse; one writer per process makes them so).
A second instance shares the work by Kafka partitions, which never hand one record to two
consumers of the group at once; what it cannot exclude is one client sending the same new
event to two instances at the same moment.

ClickHouse prefers few large inserts to many small ones: a flush starts as soon as the
previous one is done but no sooner than `min_interval_s` after it started, so under load
batches grow instead of inserts multiplying. A flush that fails is retried a few times, then
its submitters are told the store is unavailable; nothing is half-written (an insert is one
statement) and the consumer retries its batch until it is durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from services.activity.domain import ActivityEvent
from services.activity.repository import ActivityStore, database_attributes
from services.kit.errors import Unavailable

log = logging.getLogger("services.activity.writer")
_tracer = trace.get_tracer("services.activity.writer")


@dataclass
class Submission:
    events: Sequence[ActivityEvent]
    traces: Sequence[Context]  # where the flush's spans are recorded
    done: asyncio.Future[list[bool]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(frozen=True)
class FlushTimes:
    """When a flush looked ids up and inserted (monotonic-clock independent: epoch ns)."""

    lookup: tuple[int, int]
    insert: tuple[int, int] | None  # None: nothing new to insert
    events: int
    stored: int


def stored_flags(events: Sequence[ActivityEvent], new_ids: set[str]) -> list[bool]:
    """Per event: stored by this flush (the first occurrence of a new id), or a duplicate."""
    claimed: set[str] = set()
    flags = []
    for event in events:
        stored = event.event_id in new_ids and event.event_id not in claimed
        claimed.add(event.event_id)
        flags.append(stored)
    return flags


class EventWriter:
    def __init__(
        self,
        store: ActivityStore,
        *,
        max_batch: int = 20_000,
        min_interval_s: float = 0.1,
        max_queued: int = 100_000,
        attempts: int = 3,
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.min_interval_s = min_interval_s
        self.max_queued = max_queued
        self.attempts = attempts
        self.queue: deque[Submission] = deque()
        self.queued_events = 0
        self.wakeup = asyncio.Event()

    async def record(self, events: Sequence[ActivityEvent], traces: Sequence[Context] | None = None) -> list[bool]:
        """Write the events; per event, True when stored and False when its id was recorded
        already (or earlier in the same flush). Raises Unavailable when ClickHouse does not
        take them or too much is waiting."""
        if not events:
            return []
        if self.queued_events + len(events) > self.max_queued and self.queue:
            raise Unavailable("the activity store is behind on writes; try again in a moment")
        submission = Submission(events, list(traces) if traces is not None else [otel_context.get_current()])
        self.queue.append(submission)
        self.queued_events += len(events)
        self.wakeup.set()
        return await submission.done

    async def run(self) -> None:
        """Flush until cancelled."""
        last_start = 0.0
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.queue:
                await asyncio.sleep(max(0.0, last_start + self.min_interval_s - time.monotonic()))
                last_start = time.monotonic()
                await self.flush(self.take())

    def take(self) -> list[Submission]:
        """Queued submissions up to max_batch events (always at least one)."""
        taken = [self.queue.popleft()]
        count = len(taken[0].events)
        while self.queue and count + len(self.queue[0].events) <= self.max_batch:
            taken.append(self.queue.popleft())
            count += len(taken[-1].events)
        self.queued_events -= count
        return taken

    async def flush(self, submissions: Sequence[Submission]) -> None:
        events = [event for submission in submissions for event in submission.events]
        try:
            new_ids, times = await self.write_with_retries(events)
        except Exception as error:
            log.warning("a flush of %d events failed: %r", len(events), error)
            for submission in submissions:
                if not submission.done.done():
                    submission.done.set_exception(
                        Unavailable("the activity store is not answering right now; try again in a moment")
                    )
            return
        self.record_spans(submissions, times)
        flags = stored_flags(events, new_ids)
        offset = 0
        for submission in submissions:
            own = flags[offset : offset + len(submission.events)]
            offset += len(submission.events)
            if not submission.done.done():  # its caller may have given up waiting
                submission.done.set_result(own)

    async def write_with_retries(self, events: Sequence[ActivityEvent]) -> tuple[set[str], FlushTimes]:
        delay = 0.1
        for attempt in range(1, self.attempts):
            try:
                return await self.write(events)
            except Exception as error:
                log.warning("flush attempt %d failed, retrying in %.1f s: %r", attempt, delay, error)
                await asyncio.sleep(delay)
                delay *= 4
        return await self.write(events)  # the last attempt: its failure is the flush's

    async def write(self, events: Sequence[ActivityEvent]) -> tuple[set[str], FlushTimes]:
        """Steps 1–3 of the module docstring; the ids stored."""
        first_of_each: dict[str, ActivityEvent] = {}
        for event in events:
            first_of_each.setdefault(event.event_id, event)
        lookup_start = time.time_ns()
        recorded = await self.store.recorded_ids(list(first_of_each))
        lookup_end = time.time_ns()
        new = [event for event_id, event in first_of_each.items() if event_id not in recorded]
        insert: tuple[int, int] | None = None
        if new:
            await self.store.insert(new)
            insert = (lookup_end, time.time_ns())
        return {event.event_id for event in new}, FlushTimes((lookup_start, lookup_end), insert, len(events), len(new))

    def record_spans(self, submissions: Sequence[Submission], times: FlushTimes) -> None:
        """The flush's lookup and insert, as spans in every sampled trace it carried events of."""
        parents: dict[tuple[int, int], Context] = {}
        for submission in submissions:
            for context in submission.traces:
                span_context = trace.get_current_span(context).get_span_context()
                if span_context.is_valid and span_context.trace_flags.sampled:
                    parents.setdefault((span_context.trace_id, span_context.span_id), context)
        batch = {"activity.batch.events": times.events, "activity.batch.stored": times.stored}
        store = self.store
        for context in parents.values():
            lookup = _tracer.start_span(
                f"SELECT {store.database}.event_ids",
                context=context,
                kind=SpanKind.CLIENT,
                attributes={**database_attributes("SELECT", "event_ids"), **batch},
                start_time=times.lookup[0],
            )
            lookup.end(end_time=times.lookup[1])
            if times.insert is not None:
                insert = _tracer.start_span(
                    f"INSERT {store.database}.events",
                    context=context,
                    kind=SpanKind.CLIENT,
                    attributes={**database_attributes("INSERT", "events"), **batch},
                    start_time=times.insert[0],
                )
                insert.end(end_time=times.insert[1])
