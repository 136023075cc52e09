"""The canvas domain: limits, versions, and the rules that keep sessions consistent
(a snapshot rolled forward to one canvas version; a session's next change)."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime

import pytest

from services.canvas.domain import (
    MAX_NODES,
    Change,
    ChangeKind,
    CursorThrottle,
    Node,
    Role,
    Sequencer,
    StaleVersion,
    check_client_request_id,
    check_coordinate,
    check_current,
    check_room,
    moved,
    placed,
    placement,
    removed,
    require_role,
    rolled_forward,
)
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

SPACE, ALICE = str(uuid.uuid4()), str(uuid.uuid4())
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def a_node(label: str = "Idea") -> Node:
    return placed(placement("", label, 10, 20, 0, 0), SPACE, str(uuid.uuid4()), ALICE, NOW)


# ------------------------------------------------------------------ limits


@pytest.mark.parametrize("value", [-1_000_000.0, 0.0, 999_999.5, 1_000_000.0])
def test_coordinates_within_a_million_either_way_are_accepted(value: float) -> None:
    assert check_coordinate(value, "x") == value


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1_000_000.5, -2e6])
def test_coordinates_outside_or_not_finite_are_refused_naming_the_field(value: float) -> None:
    with pytest.raises(InvalidArgument) as refused:
        check_coordinate(value, "y")
    assert refused.value.field == "y"


def test_sizes_default_when_zero_and_are_bounded() -> None:
    spot = placement("", "", 0, 0, 0, 0)
    assert (spot.width, spot.height) == (200.0, 100.0)
    assert placement("", "", 0, 0, 100_000, 0.5).width == 100_000
    for width in (-1.0, 100_000.5, math.nan):
        with pytest.raises(InvalidArgument) as refused:
            placement("", "", 0, 0, width, 0)
        assert refused.value.field == "width"


def test_labels_are_trimmed_and_counted_in_code_points() -> None:
    assert placement("", "  é  ", 0, 0, 0, 0).label == "é"
    assert len(placement("", "😀" * 200, 0, 0, 0, 0).label) == 200
    with pytest.raises(InvalidArgument, match="label"):
        placement("", "x" * 201, 0, 0, 0, 0)


def test_client_request_ids_are_kept_as_sent_up_to_64_characters() -> None:
    assert check_client_request_id("  spaced  ") == "  spaced  "
    assert check_client_request_id("r" * 64) == "r" * 64
    with pytest.raises(InvalidArgument, match="client_request_id"):
        check_client_request_id("r" * 65)


def test_a_full_canvas_takes_no_more_nodes() -> None:
    check_room(MAX_NODES - 1)
    with pytest.raises(FailedPrecondition, match="5000"):
        check_room(MAX_NODES)


def test_viewers_read_but_only_editors_and_owners_change() -> None:
    require_role(Role.VIEWER, Role.VIEWER, "joining", SPACE)
    require_role(Role.OWNER, Role.EDITOR, "moving nodes", SPACE)
    with pytest.raises(PermissionDenied, match="your role is viewer"):
        require_role(Role.VIEWER, Role.EDITOR, "moving nodes", SPACE)
    with pytest.raises(PermissionDenied, match="not a member"):
        require_role(0, Role.VIEWER, "joining", SPACE)


# ------------------------------------------------------------------ versions


def test_every_change_bumps_the_node_version_and_records_who_made_it() -> None:
    node = a_node()
    assert node.version == 1
    bob = str(uuid.uuid4())
    after = moved(node, 5, 6, bob, NOW)
    assert (after.x, after.y, after.version, after.updated_by, after.label) == (5, 6, 2, bob, node.label)
    gone = removed(after, ALICE, NOW)
    assert (gone.version, gone.x) == (3, 5)


def test_a_change_needs_the_current_version() -> None:
    node = a_node()
    assert check_current(node, node.node_id, SPACE, 1) is node
    with pytest.raises(StaleVersion) as stale:
        check_current(moved(node, 1, 1, ALICE, NOW), node.node_id, SPACE, 1)
    assert stale.value.current.version == 2
    with pytest.raises(NotFound):
        check_current(None, node.node_id, SPACE, 1)


# ------------------------------------------------------------------ snapshots


def change(node: Node, kind: ChangeKind, canvas_version: int) -> Change:
    return Change(node, kind, ALICE, canvas_version)


def test_a_snapshot_read_during_changes_is_rolled_forward_to_one_canvas_version() -> None:
    """The counter read 2 before the nodes and 6 after; the read saw some changes of 3..6 and
    not others: rolled forward, the canvas is exactly its state at 6."""
    kept, moved_away, gone, late = a_node("kept"), a_node("moves"), a_node("goes"), a_node("late")
    moved_twice = moved(moved(moved_away, 1, 1, ALICE, NOW), 2, 2, ALICE, NOW)
    removal = removed(gone, ALICE, NOW)
    changes = [
        change(moved(moved_away, 1, 1, ALICE, NOW), ChangeKind.MOVED, 3),
        change(late, ChangeKind.PLACED, 4),
        change(moved_twice, ChangeKind.MOVED, 5),
        change(removal, ChangeKind.REMOVED, 6),
    ]
    # The read saw the first move (version 2) but not the second, nor the late placement,
    # and still saw the node that was removed.
    read = [kept, moved(moved_away, 1, 1, ALICE, NOW), gone]
    canvas = rolled_forward(SPACE, read, 6, changes)
    assert canvas.canvas_version == 6
    assert canvas.nodes == {kept.node_id: kept, moved_away.node_id: moved_twice, late.node_id: late}


def test_rolling_forward_never_takes_a_node_back_to_an_older_version() -> None:
    node = a_node()
    newer = moved(moved(node, 1, 1, ALICE, NOW), 9, 9, ALICE, NOW)
    canvas = rolled_forward(SPACE, [newer], 3, [change(moved(node, 1, 1, ALICE, NOW), ChangeKind.MOVED, 2)])
    assert canvas.nodes[node.node_id] == newer


def test_a_node_placed_and_removed_within_the_window_is_not_in_the_snapshot() -> None:
    node = a_node()
    changes = [change(node, ChangeKind.PLACED, 1), change(removed(node, ALICE, NOW), ChangeKind.REMOVED, 2)]
    assert rolled_forward(SPACE, [], 2, changes).nodes == {}


def test_a_move_of_a_node_the_snapshot_does_not_hold_does_not_bring_it_back() -> None:
    node = a_node()
    assert rolled_forward(SPACE, [], 2, [change(moved(node, 1, 1, ALICE, NOW), ChangeKind.MOVED, 2)]).nodes == {}


# ------------------------------------------------------------------ sessions


def test_a_session_delivers_the_next_version_drops_old_ones_and_sees_gaps() -> None:
    sequencer = Sequencer(delivered=7)
    assert [sequencer.classify(version) for version in (6, 7, 8, 9, 20)] == ["old", "old", "next", "gap", "gap"]


def test_cursor_moves_go_out_at_most_twenty_times_a_second() -> None:
    throttle = CursorThrottle()
    assert throttle.wait_s(100.0) == 0
    throttle.sent(100.0)
    assert throttle.wait_s(100.01) == pytest.approx(0.04)
    assert throttle.wait_s(100.05) == 0
