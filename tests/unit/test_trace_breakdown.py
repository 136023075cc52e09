"""Where a set of requests spent their time, from their spans: own time per span, within the
request, adding up to the request's time."""

from __future__ import annotations

import pytest

from fixtures.spans import handmade_span
from observability.breakdown import breakdown, own_time_ns, render_markdown, request_kind
from observability.traces import Span, TraceTree


def span(
    trace: str, span_id: str, parent: str, service: str, name: str, start_ms: float, ms: float, error: str = ""
) -> Span:
    return handmade_span(
        trace, span_id, parent, service, name, start_ms, ms, status="Error" if error else "Unset", message=error
    )


def search_trace(trace: str, total_ms: float, embed_ms: float) -> TraceTree:
    """Envoy 0..total; the vector service inside it; an embedding inside that; and an event
    consumed after the answer (outside the request's time)."""
    return TraceTree(
        [
            span(trace, "a", "", "envoy", "vector vector.v1.VectorService", 0, total_ms),
            span(trace, "b", "a", "vector", "vector.v1.VectorService/Search", 1, total_ms - 2),
            span(trace, "c", "b", "vector", "embed query", 2, embed_ms),
            span(trace, "d", "b", "vector", "process events", total_ms + 5, 50),
        ]
    )


def test_the_kind_of_a_request_is_its_first_service_span_under_the_edge() -> None:
    tree = search_trace("t1", 10, 4)
    assert request_kind(tree, tree.roots()[0]) == "vector.v1.VectorService/Search"


def test_own_time_excludes_children_and_what_falls_outside_the_request() -> None:
    tree = search_trace("t1", 10, 4)
    window = (tree.by_id["a"].start_ns, tree.by_id["a"].end_ns)
    own = {item.name: own_time_ns(tree, item, window) / 1e6 for item in tree.spans}
    assert own == pytest.approx(
        {
            "vector vector.v1.VectorService": 2.0,
            "vector.v1.VectorService/Search": 4.0,
            "embed query": 4.0,
            "process events": 0.0,
        }
    )


def test_shares_add_up_to_the_requests_time_and_the_slowest_come_first() -> None:
    result = breakdown([search_trace("t1", 10, 4), search_trace("t2", 30, 20)])
    [kind] = result.kinds
    assert (kind.name, kind.count, kind.p50_ms, kind.slowest_trace) == ("vector.v1.VectorService/Search", 2, 20.0, "t2")
    shares = {s.span_name: s for s in result.shares}
    assert sum(s.share for s in result.shares) == pytest.approx(1.0)
    assert shares["embed query"].share == pytest.approx(24 / 40)
    assert shares["process events"].share == 0.0
    assert shares["process events"].count == 2
    assert [trace for trace, _, _ in result.slowest] == ["t2", "t1"]


def test_error_spans_are_counted_with_a_trace_to_open() -> None:
    failing = TraceTree(
        [
            span("t3", "a", "", "envoy", "chat chat.v1.ChatService", 0, 5),
            span("t3", "b", "a", "chat", "chat.v1.ChatService/Ask", 1, 3, error="UNAVAILABLE"),
        ]
    )
    result = breakdown([failing, search_trace("t1", 10, 4)])
    assert result.errors == [("chat", "chat.v1.ChatService/Ask", "UNAVAILABLE", 1, "t3")]
    assert next(k for k in result.kinds if k.name == "chat.v1.ChatService/Ask").errors == 1
    assert "`t3`" in render_markdown(result, traces=2)


def test_a_websocket_session_is_listed_but_not_among_the_slowest_requests() -> None:
    session = TraceTree(
        [
            span("t4", "a", "", "envoy", "ingress", 0, 60_000),
            span("t4", "b", "a", "canvas", "WS /v1/canvas/ws connect", 1, 3),
        ]
    )
    result = breakdown([session, search_trace("t1", 10, 4)])
    assert {k.name for k in result.kinds} == {"WS /v1/canvas/ws connect", "vector.v1.VectorService/Search"}
    assert [trace for trace, _, _ in result.slowest] == ["t1"]
