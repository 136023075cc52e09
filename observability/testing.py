"""Asserting on traces in tests.

    async with traces.action("create a document") as action:
        await stub.CreateDocument(request, metadata=action.metadata())
    tree = await action.trace(span("envoy"), span("knowledge", kind="Server"), span(kind="Consumer"))
    assert_path(tree, span("envoy"), span("knowledge", kind="Server"), span(kind="Producer"), span(kind="Consumer"))
    assert_no_errors(tree)
    assert_under(tree, span("knowledge", name="CreateDocument"), budget_ms=250)

The test's action is a real root span exported by the test process, and its context goes out
with the request (gRPC metadata or HTTP headers), so everything the request causes joins that
one trace. `action.trace()` waits deterministically: it flushes the test's own spans, asks the
receiver to flush, and queries until every expected span is present or the deadline passes;
a failure shows the rendered tree.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import aiohttp
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from observability.traces import SpanMatch, TraceStore, TraceTree

POLL_INTERVAL_S = 0.1


class TraceNotComplete(AssertionError):
    pass


class Action:
    """One test action: its root span and the context to send with each request."""

    def __init__(self, capture: TraceCapture, root: trace.Span) -> None:
        self.capture = capture
        self.root = root
        self.trace_id = format(root.get_span_context().trace_id, "032x")

    def headers(self) -> dict[str, str]:
        """W3C trace context (and baggage) for an HTTP request made within this action."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(self.root))
        return carrier

    def metadata(self, *extra: tuple[str, str]) -> list[tuple[str, str]]:
        """The same, as gRPC metadata, plus any other entries (e.g. authorization)."""
        return [*self.headers().items(), *extra]

    async def trace(self, *expected: SpanMatch, timeout_s: float = 20.0) -> TraceTree:
        """The trace, once every expected span is in it; fails with the tree after timeout_s."""
        return await self.capture.wait_for(self.trace_id, expected, timeout_s)


class TraceCapture:
    def __init__(self, store: TraceStore, provider: TracerProvider, receiver_http: str) -> None:
        self.store = store
        self.provider = provider
        self.receiver_http = receiver_http
        self.tracer = provider.get_tracer("tests")

    @asynccontextmanager
    async def action(self, name: str) -> AsyncIterator[Action]:
        with self.tracer.start_as_current_span(f"test: {name}", kind=SpanKind.CLIENT) as root:
            yield Action(self, root)

    async def wait_for(self, trace_id: str, expected: tuple[SpanMatch, ...], timeout_s: float) -> TraceTree:
        self.provider.force_flush(timeout_millis=5_000)
        return await wait_for_trace(self.store, self.receiver_http, trace_id, expected, timeout_s)


async def flush_receiver(receiver_http: str) -> None:
    """The OTLP receiver writes everything it holds to ClickHouse now."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.post(f"{receiver_http}/flush") as response,
    ):
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"the receiver at {receiver_http} did not flush: HTTP {response.status}")


async def wait_for_trace(
    store: TraceStore, receiver_http: str, trace_id: str, expected: Sequence[SpanMatch], timeout_s: float
) -> TraceTree:
    """The trace once every expected span is in it: asks the receiver to write what it holds,
    queries, and repeats; TraceNotComplete with the tree so far after timeout_s."""
    deadline = time.monotonic() + timeout_s
    tree = TraceTree([])
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while True:
            async with session.post(f"{receiver_http}/flush") as response:
                await response.read()
            tree = await asyncio.to_thread(store.trace, trace_id)
            missing = [match for match in expected if not tree.find(match)]
            if tree.spans and not missing:
                return tree
            if time.monotonic() > deadline:
                raise TraceNotComplete(
                    f"trace {trace_id} still lacks {', '.join(map(str, missing)) or 'any span'} "
                    f"after {timeout_s:.0f} s:\n{tree.render()}"
                )
            await asyncio.sleep(POLL_INTERVAL_S)


# ------------------------------------------------------------- assertions


def assert_path(tree: TraceTree, *steps: SpanMatch) -> None:
    """Each step is a descendant of the one before (e.g. envoy → service → producer → consumer)."""
    if not tree.has_path(steps):
        raise AssertionError(f"no path {' → '.join(map(str, steps))} in:\n{tree.render()}")


def assert_no_errors(tree: TraceTree) -> None:
    errors = tree.errors()
    if errors:
        listed = "\n".join(f"  {s.describe()}" for s in errors)
        raise AssertionError(f"{len(errors)} error span(s):\n{listed}\nin:\n{tree.render()}")


def assert_under(tree: TraceTree, match: SpanMatch, budget_ms: float) -> None:
    """Every span that matches finished within the budget (and at least one matches)."""
    found = tree.find(match)
    if not found:
        raise AssertionError(f"no {match} in:\n{tree.render()}")
    slow = [s for s in found if s.duration_ms > budget_ms]
    if slow:
        listed = "\n".join(f"  {s.describe()}" for s in slow)
        raise AssertionError(f"over the {budget_ms:.0f} ms budget:\n{listed}\nin:\n{tree.render()}")


def assert_connected(tree: TraceTree) -> None:
    """One root, and every span's parent arrived: nothing lost, no context dropped."""
    if not tree.is_connected():
        orphans = "\n".join(f"  {s.describe()} (parent {s.parent_span_id})" for s in tree.orphans())
        raise AssertionError(f"{len(tree.roots())} roots; orphans:\n{orphans}\nin:\n{tree.render()}")
