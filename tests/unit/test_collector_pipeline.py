"""observability.collector.pipeline.SpanPipeline with an in-memory insert function."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from observability.collector.pipeline import SpanPipeline
from observability.collector.spans import Row


class Recorder:
    """An insert function that records batches and fails its first `failures` calls."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls = 0
        self.batches: list[list[Row]] = []

    async def __call__(self, rows: Sequence[Row]) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("clickhouse is down")
        self.batches.append(list(rows))

    @property
    def rows(self) -> list[Row]:
        return [row for batch in self.batches for row in batch]


def rows(start: int, count: int) -> list[Row]:
    return [(i,) for i in range(start, start + count)]


Factory = Callable[..., SpanPipeline]


@pytest.fixture
async def pipeline_of() -> AsyncIterator[Factory]:
    made: list[SpanPipeline] = []

    def make(insert: Recorder, **options: Any) -> SpanPipeline:
        pipeline = SpanPipeline(insert, **options)
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:  # no writer task outlives its test
        await pipeline.close(deadline_s=0.5)


async def test_batches_are_cut_at_batch_size(pipeline_of: Factory) -> None:
    recorder = Recorder()
    pipeline = pipeline_of(recorder, batch_size=3, max_delay_s=30)
    pipeline.start()
    assert pipeline.offer(rows(0, 6))
    # With a 30 s delay only full batches can be written within the wait.
    assert await pipeline.flushed(timeout_s=5)
    assert recorder.batches == [rows(0, 3), rows(3, 3)]
    assert pipeline.stats.written == 6
    assert pipeline.stats.batches == 2
    assert pipeline.stats.buffered == 0


async def test_partial_batch_waits_for_more_rows(pipeline_of: Factory) -> None:
    recorder = Recorder()
    pipeline = pipeline_of(recorder, batch_size=3, max_delay_s=30)
    pipeline.start()
    assert pipeline.offer(rows(0, 4))
    assert not await pipeline.flushed(timeout_s=0.2)  # one row is still waiting for company
    assert recorder.batches == [rows(0, 3)]
    assert pipeline.offer(rows(4, 2))
    assert await pipeline.flushed(timeout_s=5)
    assert recorder.batches == [rows(0, 3), rows(3, 3)]


async def test_small_batch_is_written_after_max_delay(pipeline_of: Factory) -> None:
    recorder = Recorder()
    pipeline = pipeline_of(recorder, batch_size=1000, max_delay_s=0.05)
    pipeline.start()
    began = time.monotonic()
    assert pipeline.offer(rows(0, 2))
    assert await pipeline.flushed(timeout_s=5)
    waited = time.monotonic() - began
    assert recorder.batches == [rows(0, 2)]
    assert 0.04 <= waited < 2


async def test_offer_refuses_what_does_not_fit(pipeline_of: Factory) -> None:
    pipeline = pipeline_of(Recorder(), capacity=5)  # not started: nothing drains the buffer
    assert pipeline.offer(rows(0, 3))
    assert not pipeline.offer(rows(3, 3))  # 6 > 5: refused as a whole
    assert pipeline.offer(rows(3, 2))  # exactly full is fine
    assert not pipeline.offer(rows(5, 1))
    stats = pipeline.stats
    assert (stats.received, stats.accepted, stats.refused, stats.buffered) == (9, 5, 4, 5)


async def test_offer_of_nothing_is_accepted(pipeline_of: Factory) -> None:
    pipeline = pipeline_of(Recorder())
    pipeline.start()
    assert pipeline.offer([])
    assert await pipeline.flushed(timeout_s=1)
    assert pipeline.stats.accepted == 0


async def test_failed_inserts_are_retried_and_written_once(pipeline_of: Factory) -> None:
    recorder = Recorder(failures=3)
    pipeline = pipeline_of(recorder, batch_size=10, max_delay_s=0.01, first_retry_s=0.005, max_retry_s=0.01)
    pipeline.start()
    assert pipeline.offer(rows(0, 4))
    assert await pipeline.flushed(timeout_s=5)
    assert recorder.calls == 4
    assert recorder.batches == [rows(0, 4)]
    assert pipeline.stats.insert_failures == 3
    assert pipeline.stats.written == 4
    assert pipeline.stats.batches == 1


async def test_rows_offered_during_retries_are_kept_in_order(pipeline_of: Factory) -> None:
    recorder = Recorder(failures=2)
    pipeline = pipeline_of(recorder, batch_size=3, max_delay_s=0.01, first_retry_s=0.01, max_retry_s=0.01)
    pipeline.start()
    assert pipeline.offer(rows(0, 3))
    assert pipeline.offer(rows(3, 2))
    assert await pipeline.flushed(timeout_s=5)
    assert recorder.rows == rows(0, 5)
    assert recorder.batches[0] == rows(0, 3)


async def test_close_writes_everything_buffered(pipeline_of: Factory) -> None:
    recorder = Recorder()
    pipeline = pipeline_of(recorder, batch_size=4, max_delay_s=30)
    pipeline.start()
    assert pipeline.offer(rows(0, 6))
    stats = await pipeline.close(deadline_s=5)
    assert recorder.rows == rows(0, 6)
    assert (stats.written, stats.dropped, stats.buffered) == (6, 0, 0)
    assert not pipeline.offer(rows(6, 1))  # closed: refused
    assert pipeline.stats.refused == 1


async def test_close_of_an_idle_pipeline_returns_promptly(pipeline_of: Factory) -> None:
    pipeline = pipeline_of(Recorder())
    pipeline.start()
    stats = await asyncio.wait_for(pipeline.close(deadline_s=5), timeout=2)
    assert stats.dropped == 0


async def test_close_with_failing_insert_counts_dropped(pipeline_of: Factory) -> None:
    recorder = Recorder(failures=10**9)
    pipeline = pipeline_of(recorder, batch_size=2, max_delay_s=0.01, first_retry_s=0.01, max_retry_s=0.01)
    pipeline.start()
    assert pipeline.offer(rows(0, 5))
    assert not await pipeline.flushed(timeout_s=0.05)
    stats = await pipeline.close(deadline_s=0.1)
    assert stats.written == 0
    assert stats.dropped == 5
    assert stats.buffered == 0
    assert stats.insert_failures >= 1
    assert recorder.batches == []


async def test_close_twice_is_harmless(pipeline_of: Factory) -> None:
    recorder = Recorder(failures=10**9)
    pipeline = pipeline_of(recorder, batch_size=2, max_delay_s=0.01, first_retry_s=0.01, max_retry_s=0.01)
    pipeline.start()
    assert pipeline.offer(rows(0, 3))
    first = await pipeline.close(deadline_s=0.05)
    assert first.dropped == 3
    second = await pipeline.close(deadline_s=0.05)  # e.g. a signal handler and a finally block
    assert second.dropped == 3
    assert second.written == 0
