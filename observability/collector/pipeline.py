"""The span pipeline: a bounded buffer between the OTLP endpoints and ClickHouse.

- Batching: a batch is written when it reaches `batch_size` rows or `max_delay_s` after its
  first row, whichever comes first. ClickHouse wants about one insert per second per table:
  every insert makes new parts (here two, with the trace-id view) to merge later. At a trickle
  of ~400 spans/s, inserting every 200 ms cost the engine 0.12 of a core, every second 0.03.
- Back-pressure: the buffer holds at most `capacity` rows. An export that does not fit is
  refused as a whole (OTLP's retryable UNAVAILABLE / HTTP 503), so the exporter retries it
  later; it is counted in `refused`, never silently dropped.
- Retries: a failed insert is retried with exponential backoff, keeping the batch; while
  ClickHouse is down the buffer fills and back-pressure takes over.
- Shutdown: `close()` stops intake and writes everything buffered (within a deadline); rows
  still unwritten at the deadline are counted in `dropped` and reported.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass

from observability.collector.spans import Row

log = logging.getLogger("observability.collector")

InsertRows = Callable[[Sequence[Row]], Awaitable[None]]


@dataclass
class PipelineStats:
    received: int = 0  # spans offered by exporters
    accepted: int = 0  # taken into the buffer
    refused: int = 0  # not taken (buffer full); the exporter was told to retry
    rejected: int = 0  # malformed spans (bad ids), reported back in partial_success
    written: int = 0  # inserted into ClickHouse
    dropped: int = 0  # accepted but not written by the shutdown deadline
    insert_failures: int = 0
    batches: int = 0
    buffered: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class SpanPipeline:
    def __init__(
        self,
        insert: InsertRows,
        *,
        capacity: int = 200_000,
        batch_size: int = 10_000,
        max_delay_s: float = 1.0,
        first_retry_s: float = 0.2,
        max_retry_s: float = 5.0,
    ) -> None:
        self.insert = insert
        self.capacity = capacity
        self.batch_size = batch_size
        self.max_delay_s = max_delay_s
        self.first_retry_s = first_retry_s
        self.max_retry_s = max_retry_s
        self.stats = PipelineStats()
        self._buffer: list[Row] = []
        self._first_row_at: float | None = None
        self._has_rows = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="span-writer")

    def offer(self, rows: Sequence[Row]) -> bool:
        """Take all rows or none. False means: full (or closing), tell the exporter to retry."""
        self.stats.received += len(rows)
        if self._closing or len(self._buffer) + len(rows) > self.capacity:
            self.stats.refused += len(rows)
            return False
        if not rows:
            return True
        if not self._buffer:
            self._first_row_at = time.monotonic()
        self._buffer.extend(rows)
        self.stats.accepted += len(rows)
        self.stats.buffered = len(self._buffer)
        self._idle.clear()
        self._has_rows.set()
        return True

    async def flushed(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything accepted so far is written; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self, deadline_s: float = 10.0) -> PipelineStats:
        """Refuse new spans, write what is buffered, stop."""
        self._closing = True
        self._has_rows.set()
        if self._writer is not None and not self._writer.done():  # a second close() has nothing to wait for
            try:
                await asyncio.wait_for(asyncio.shield(self._writer), deadline_s)
            except TimeoutError:
                self._writer.cancel()
                await asyncio.wait([self._writer])  # let it unwind; its CancelledError is not the caller's
                self.stats.dropped += len(self._buffer)
                log.error("shutdown deadline passed: %d spans were not written", len(self._buffer))
                self._buffer.clear()
        self.stats.buffered = len(self._buffer)
        return self.stats

    async def _write_loop(self) -> None:
        while True:
            await self._has_rows.wait()
            if not self._buffer:
                self._has_rows.clear()
                self._idle.set()
                if self._closing:
                    return
                continue
            await self._wait_for_batch()
            batch = self._buffer[: self.batch_size]
            await self._insert_with_retries(batch)
            del self._buffer[: len(batch)]
            self._first_row_at = time.monotonic() if self._buffer else None
            self.stats.buffered = len(self._buffer)

    async def _wait_for_batch(self) -> None:
        """Until the batch is full, its first row is old enough, or we are closing."""
        while len(self._buffer) < self.batch_size and not self._closing:
            waited = time.monotonic() - (self._first_row_at or time.monotonic())
            remaining = self.max_delay_s - waited
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, 0.02))

    async def _insert_with_retries(self, batch: list[Row]) -> None:
        delay = self.first_retry_s
        while True:
            try:
                await self.insert(batch)
            except Exception as error:
                self.stats.insert_failures += 1
                log.warning("insert of %d spans failed (%s); retrying in %.1f s", len(batch), error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_s)
                continue
            self.stats.written += len(batch)
            self.stats.batches += 1
            return
