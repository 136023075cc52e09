"""observability.traces' pure parts (TraceTree, SpanMatch) and the assertion helpers of
observability.testing, on Span objects built by hand: no ClickHouse involved."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from fixtures.spans import handmade_span
from observability.testing import assert_connected, assert_no_errors, assert_path, assert_under
from observability.traces import Span, SpanMatch, TraceTree, span

TRACE = "0af7651916cd43dd8448eb211c80319c"
MISSING_PARENT = "ffffffffffffffff"


make = functools.partial(handmade_span, TRACE)  # a span of the one trace these tests build


# gateway: GET /documents                       (root)
#   gateway: redis GET                         (starts first, listed last below)
#   knowledge: GetDocument
#     knowledge: SELECT documents
#     knowledge: publish document.viewed       (producer)
#       notifications: consume document.viewed (consumer, ERROR)
ROOT = make("00000000000000a1", "", "gateway", "GET /documents", 0, 120, attributes={"http.route": "/documents"})
CACHE = make("00000000000000a2", ROOT.span_id, "gateway", "redis GET", 1, 2, kind="Client")
SERVER = make(
    "00000000000000b1",
    ROOT.span_id,
    "knowledge",
    "GetDocument",
    5,
    80,
    attributes={"rpc.method": "GetDocument", "rpc.system": "grpc"},
)
QUERY = make("00000000000000b2", SERVER.span_id, "knowledge", "SELECT documents", 10, 20, kind="Client")
PRODUCE = make("00000000000000b3", SERVER.span_id, "knowledge", "publish document.viewed", 40, 5, kind="Producer")
CONSUME = make(
    "00000000000000c1",
    PRODUCE.span_id,
    "notifications",
    "consume document.viewed",
    50,
    30.5,
    kind="Consumer",
    status="Error",
    message="timeout",
)
ALL = [ROOT, CACHE, SERVER, QUERY, PRODUCE, CONSUME]


@pytest.fixture
def tree() -> TraceTree:
    return TraceTree(reversed(ALL))  # arrival order does not matter


@pytest.fixture
def broken() -> TraceTree:
    """The same request whose consumer's parent (the producer span) never arrived."""
    lost = make("00000000000000d1", MISSING_PARENT, "notifications", "consume", 50, 7, kind="Consumer")
    handler = make("00000000000000d2", lost.span_id, "notifications", "send email", 52, 3)
    return TraceTree([ROOT, SERVER, lost, handler])


# ----------------------------------------------------------------- structure


def test_connected_tree_has_one_root_and_no_orphans(tree: TraceTree) -> None:
    assert tree.trace_id == TRACE
    assert tree.roots() == [ROOT]
    assert tree.orphans() == []
    assert tree.is_connected()
    assert tree.services() == {"gateway", "knowledge", "notifications"}
    assert tree.errors() == [CONSUME]


def test_spans_and_children_are_ordered_by_start_not_arrival(tree: TraceTree) -> None:
    assert tree.spans == ALL
    assert tree.children(ROOT.span_id) == [CACHE, SERVER]
    assert tree.children(SERVER.span_id) == [QUERY, PRODUCE]
    assert tree.children(CONSUME.span_id) == []
    assert tree.children("does-not-exist") == []


def test_children_starting_together_are_ordered_by_span_id() -> None:
    first = make("0000000000000001", ROOT.span_id, "knowledge", "b", 3, 1)
    second = make("0000000000000002", ROOT.span_id, "knowledge", "a", 3, 1)
    assert TraceTree([second, ROOT, first]).children(ROOT.span_id) == [first, second]


def test_span_whose_parent_never_arrived_is_a_root_and_an_orphan(broken: TraceTree) -> None:
    lost = broken.by_id["00000000000000d1"]
    assert broken.roots() == [ROOT, lost]
    assert broken.orphans() == [lost]  # its child's parent did arrive
    assert not broken.is_connected()


def test_two_parentless_spans_are_not_connected_though_nothing_is_orphaned() -> None:
    other = make("00000000000000e1", "", "gateway", "GET /health", 200, 1)
    two_roots = TraceTree([ROOT, other])
    assert two_roots.orphans() == []
    assert two_roots.roots() == [ROOT, other]
    assert not two_roots.is_connected()


def test_empty_tree() -> None:
    empty = TraceTree([])
    assert empty.trace_id == ""
    assert empty.roots() == []
    assert empty.orphans() == []
    assert empty.errors() == []
    assert not empty.is_connected()
    assert empty.find(span()) == []
    assert empty.has_path([])
    assert not empty.has_path([span("gateway")])
    assert empty.render() == "(no spans)"


def test_ancestors_nearest_first(tree: TraceTree, broken: TraceTree) -> None:
    assert tree.ancestors(CONSUME) == [PRODUCE, SERVER, ROOT]
    assert tree.ancestors(CACHE) == [ROOT]
    assert tree.ancestors(ROOT) == []
    lost, handler = broken.by_id["00000000000000d1"], broken.by_id["00000000000000d2"]
    assert broken.ancestors(lost) == []
    assert broken.ancestors(handler) == [lost]


# ----------------------------------------------------------------- matching


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        (span(), ALL),
        (span("knowledge"), [SERVER, QUERY, PRODUCE]),
        (span(name="GetDocument"), [SERVER]),
        (span(name=r"^(GET|SELECT) "), [ROOT, QUERY]),  # a regular expression ...
        (span(name="document"), [ROOT, QUERY, PRODUCE, CONSUME]),  # ... searched anywhere in the name
        (span(name=r"document\.viewed$"), [PRODUCE, CONSUME]),
        (span(name="Document$"), [SERVER]),
        (span(kind="Client"), [CACHE, QUERY]),
        (span("knowledge", kind="Client"), [QUERY]),  # every given field must match
        (span("gateway", name="GetDocument"), []),
        (span(**{"rpc.method": "GetDocument"}), [SERVER]),
        (span(**{"rpc.method": "GetDocument", "rpc.system": "grpc"}), [SERVER]),
        (span(**{"rpc.method": "GetDocument", "rpc.system": "http"}), []),
        (span(**{"rpc.method": "ListDocuments"}), []),
        (span(**{"http.route": "/documents"}), [ROOT]),
        (span("knowledge", name="Get", kind="Server", **{"rpc.system": "grpc"}), [SERVER]),
        (span(service="nobody"), []),
    ],
    ids=lambda value: str(value) if isinstance(value, SpanMatch) else "",
)
def test_find(tree: TraceTree, match: SpanMatch, expected: list[Span]) -> None:
    assert tree.find(match) == expected


def test_span_match_str() -> None:
    assert str(span()) == "span()"
    assert str(span("knowledge")) == "span(service='knowledge')"
    assert str(span(name=r"^Get\w+", kind="Server")) == r"span(name='^Get\\w+', kind='Server')"
    assert (
        str(span("knowledge", "GetDocument", "Server", **{"rpc.method": "GetDocument"}))
        == "span(service='knowledge', name='GetDocument', kind='Server', rpc.method='GetDocument')"
    )


@pytest.mark.parametrize(
    "steps",
    [
        [],
        [span("notifications")],
        [span("gateway"), span("knowledge", kind="Server"), span(kind="Producer"), span(kind="Consumer")],
        [span("gateway"), span("notifications")],  # gaps between steps are allowed
        [span("gateway"), span(kind="Consumer")],
        [span("knowledge"), span("knowledge"), span("notifications")],  # two distinct knowledge ancestors
        [span(name="GET /documents"), span(name="SELECT")],
        [span(**{"http.route": "/documents"}), span(**{"rpc.method": "GetDocument"})],
    ],
    ids=lambda steps: " → ".join(map(str, steps)) or "no steps",
)
def test_has_path(tree: TraceTree, steps: list[SpanMatch]) -> None:
    assert tree.has_path(steps)


@pytest.mark.parametrize(
    "steps",
    [
        [span("nobody")],
        [span(kind="Consumer"), span("gateway")],  # order matters: the reverse is no path
        [span(kind="Producer"), span("knowledge", kind="Server")],
        [span("notifications"), span("notifications")],  # one span cannot be two steps
        [span("knowledge", name="GetDocument"), span("knowledge", name="GetDocument")],
        [span("knowledge"), span("knowledge"), span("knowledge"), span("notifications")],
        [span(kind="Client"), span(kind="Consumer")],  # siblings' descendants, not its own
        [span("gateway", name="redis"), span("knowledge")],
        [span("nobody"), span(kind="Consumer")],
    ],
    ids=lambda steps: " → ".join(map(str, steps)),
)
def test_has_no_path(tree: TraceTree, steps: list[SpanMatch]) -> None:
    assert not tree.has_path(steps)


def test_path_stops_at_a_missing_parent(broken: TraceTree) -> None:
    assert broken.has_path([span("gateway"), span("knowledge")])
    assert not broken.has_path([span("gateway"), span("notifications")])
    assert broken.has_path([span("notifications", name="consume"), span("notifications", name="send email")])


# ----------------------------------------------------------------- rendering


def test_render_shows_the_tree_with_offsets_durations_and_status(tree: TraceTree) -> None:
    lines = tree.render().splitlines()
    assert lines[0] == f"trace {TRACE}: 6 spans, services gateway, knowledge, notifications"
    assert lines[1:] == [
        "├─ +    0.0 ms  gateway: GET /documents [Server] 120.00 ms",
        "  ├─ +    1.0 ms  gateway: redis GET [Client] 2.00 ms",
        "  ├─ +    5.0 ms  knowledge: GetDocument [Server] 80.00 ms",
        "    ├─ +   10.0 ms  knowledge: SELECT documents [Client] 20.00 ms",
        "    ├─ +   40.0 ms  knowledge: publish document.viewed [Producer] 5.00 ms",
        "      ├─ +   50.0 ms  notifications: consume document.viewed [Consumer] 30.50 ms ERROR timeout",
    ]


def test_render_marks_orphans_and_keeps_their_subtree(broken: TraceTree) -> None:
    rendered = broken.render()
    assert "4 spans" in rendered
    orphan_lines = [line for line in rendered.splitlines() if "(parent missing)" in line]
    assert orphan_lines == ["├─ +   50.0 ms  notifications: consume [Consumer] 7.00 ms  (parent missing)"]
    assert "  ├─ +   52.0 ms  notifications: send email [Server] 3.00 ms" in rendered.splitlines()


def test_error_without_message_still_shows_its_status() -> None:
    failed = make("00000000000000f1", "", "auth", "Login", 0, 1.25, status="Error")
    ok = make("00000000000000f2", failed.span_id, "auth", "check", 0.5, 0.5, status="Ok")
    lines = TraceTree([failed, ok]).render().splitlines()
    assert lines[1].endswith("auth: Login [Server] 1.25 ms ERROR")
    assert lines[2].endswith("auth: check [Server] 0.50 ms")  # Ok is not an error


# ----------------------------------------------------------------- assertions


def failure_of(check: Callable[[], None]) -> str:
    with pytest.raises(AssertionError) as caught:
        check()
    return str(caught.value)


def test_assert_path(tree: TraceTree) -> None:
    assert_path(tree, span("gateway"), span("knowledge", kind="Server"), span(kind="Consumer"))
    message = failure_of(lambda: assert_path(tree, span(kind="Consumer"), span("gateway")))
    assert "no path span(kind='Consumer') → span(service='gateway')" in message
    assert tree.render() in message


def test_assert_no_errors(tree: TraceTree, broken: TraceTree) -> None:
    assert_no_errors(broken)
    message = failure_of(lambda: assert_no_errors(tree))
    assert "1 error span(s)" in message
    assert f"  {CONSUME.describe()}" in message
    assert tree.render() in message


def test_assert_under(tree: TraceTree) -> None:
    assert_under(tree, span("knowledge"), budget_ms=80)  # the budget itself is within it
    message = failure_of(lambda: assert_under(tree, span("knowledge"), budget_ms=50))
    assert "over the 50 ms budget" in message
    assert f"  {SERVER.describe()}" in message
    assert f"  {QUERY.describe()}" not in message.split("\nin:\n")[0]  # only the slow ones are listed
    assert tree.render() in message


def test_assert_under_needs_a_matching_span(tree: TraceTree) -> None:
    message = failure_of(lambda: assert_under(tree, span("billing"), budget_ms=1_000))
    assert "no span(service='billing')" in message
    assert tree.render() in message


def test_assert_connected(tree: TraceTree, broken: TraceTree) -> None:
    assert_connected(tree)
    message = failure_of(lambda: assert_connected(broken))
    assert "2 roots" in message
    assert f"(parent {MISSING_PARENT})" in message
    assert "(parent missing)" in message
    assert broken.render() in message


def test_assert_connected_fails_on_two_roots() -> None:
    two_roots = TraceTree([ROOT, make("00000000000000e1", "", "gateway", "GET /health", 200, 1)])
    message = failure_of(lambda: assert_connected(two_roots))
    assert "2 roots" in message
    assert two_roots.render() in message


def test_assert_connected_fails_on_no_spans() -> None:
    assert "(no spans)" in failure_of(lambda: assert_connected(TraceTree([])))


def test_spans_in_a_parent_cycle_are_neither_connected_nor_hidden() -> None:
    origin = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)

    def item(span_id: str, parent: str) -> Span:
        return Span("t" * 32, span_id, parent, f"op-{span_id}", "Internal", "svc", origin, 1_000_000, "Unset", "")

    tree = TraceTree([item("root", ""), item("x", "y"), item("y", "x")])
    assert {s.span_id for s in tree.unreachable()} == {"x", "y"}
    assert not tree.is_connected()
    assert "2 span(s) in a parent cycle" in tree.render()
    assert tree.ancestors(tree.by_id["x"]) == [tree.by_id["y"]]
