"""The activity domain's rules: what a client may report, how a platform event is recorded,
which events of a flush are stored, and the kit's ClickHouse migration files."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.activity.domain import (
    Kind,
    PlatformEventRejected,
    ReportedEvent,
    Window,
    client_batch,
    client_event,
    platform_event,
    spaces_named,
    top_limit,
    window_of,
)
from services.activity.repository import MIGRATIONS, batch_token
from services.activity.writer import stored_flags
from services.kit.clickhouse import read_migrations, sql_statements
from services.kit.errors import InvalidArgument
from services.kit.protos import moment_of, timestamp

NOW = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)
SPACE, DOCUMENT, USER = (str(uuid.uuid4()) for _ in range(3))


def reported(kind: int = 1, space: str = SPACE, document: str = DOCUMENT, **changes: object) -> ReportedEvent:
    fields: dict[str, object] = {
        "event_id": str(uuid.uuid4()),
        "kind": kind,
        "space_id": space,
        "document_id": document,
        "occurred_at": NOW,
        "attributes": {},
    }
    fields.update(changes)
    return ReportedEvent(**fields)  # type: ignore[arg-type]


def field_of(error: pytest.ExceptionInfo[InvalidArgument]) -> str:
    return error.value.field


def test_a_view_is_recorded_as_the_callers_with_its_ids_lower_cased() -> None:
    event = client_event(reported(space=SPACE.upper()), USER, NOW, "event")
    assert (event.kind, event.actor_id, event.space_id, event.document_id) == (
        Kind.DOCUMENT_VIEWED,
        USER,
        SPACE,
        DOCUMENT,
    )
    assert event.source == "client"


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (reported(event_id="nope"), "event.event_id"),
        (reported(kind=0), "event.kind"),
        (reported(kind=Kind.SPACE_CHANGED), "event.kind"),
        (reported(kind=Kind.PLATFORM_EVENT), "event.kind"),
        (reported(kind=42), "event.kind"),
        (reported(space=""), "event.space_id"),
        (reported(document=""), "event.document_id"),
        (reported(kind=Kind.SIGNED_IN, document=""), "event.space_id"),
        (reported(kind=Kind.SIGNED_IN, space=""), "event.document_id"),
        (reported(kind=Kind.SEARCHED, space=""), "event.space_id"),
        (reported(occurred_at=None), "event.occurred_at"),
        (reported(occurred_at=NOW - timedelta(days=30, seconds=1)), "event.occurred_at"),
        (reported(occurred_at=NOW + timedelta(minutes=5, seconds=1)), "event.occurred_at"),
        (reported(attributes={str(n): "" for n in range(21)}), "event.attributes"),
        (reported(attributes={"": "x"}), "event.attributes"),
        (reported(attributes={"k" * 65: "x"}), "event.attributes"),
        (reported(attributes={"k": "v" * 257}), "event.attributes"),
    ],
)
def test_a_field_beyond_its_limit_is_named(event: ReportedEvent, field: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        client_event(event, USER, NOW, "event")
    assert field_of(error) == field


def test_limits_are_inclusive_and_counted_in_code_points() -> None:
    edges = [
        reported(occurred_at=NOW - timedelta(days=30)),
        reported(occurred_at=NOW + timedelta(minutes=5)),
        reported(attributes={"é" * 64: "✓" * 256, **{str(n): "" for n in range(19)}}),
        reported(kind=Kind.SEARCHED, space="", document=""),
        reported(kind=Kind.CANVAS_EDITED, document=""),
    ]
    for event in edges:
        client_event(event, USER, NOW, "event")


def test_a_batch_names_the_index_of_its_first_bad_event_and_its_spaces() -> None:
    other = str(uuid.uuid4())
    with pytest.raises(InvalidArgument) as error:
        client_batch([reported(), reported(), reported(space="bad")], USER, NOW)
    assert field_of(error) == "events[2].space_id"
    for size in (0, 501):
        with pytest.raises(InvalidArgument, match="1–500"):
            client_batch([reported(kind=Kind.ASKED, space="", document="")] * size, USER, NOW)
    events = client_batch(
        [reported(), reported(kind=Kind.ASKED, space="", document=""), reported(space=other)], USER, NOW
    )
    assert spaces_named(events) == {SPACE: 0, other: 2}


@pytest.mark.parametrize(
    ("event_type", "subjects", "kind", "placed"),
    [
        ("auth.user.signed_up", {"user_id": USER}, Kind.SIGNED_IN, ("", "")),
        (
            "knowledge.document.deleted",
            {"space_id": SPACE, "document_id": DOCUMENT},
            Kind.DOCUMENT_EDITED,
            (SPACE, DOCUMENT),
        ),
        ("knowledge.member.added", {"space_id": SPACE, "user_id": USER}, Kind.SPACE_CHANGED, (SPACE, "")),
        ("canvas.node.moved", {"space_id": SPACE, "node_id": DOCUMENT}, Kind.CANVAS_EDITED, (SPACE, "")),
        ("chat.question.asked", {"conversation_id": DOCUMENT}, Kind.ASKED, ("", "")),
        ("ml.model_version.deployed", {"model_id": DOCUMENT}, Kind.PLATFORM_EVENT, ("", "")),
        ("future.thing.happened", {"space_id": SPACE}, Kind.PLATFORM_EVENT, (SPACE, "")),
    ],
)
def test_a_platform_event_takes_its_kind_from_its_type_and_its_place_from_its_subjects(
    event_type: str, subjects: dict[str, str], kind: Kind, placed: tuple[str, str]
) -> None:
    event_id = str(uuid.uuid4())
    event = platform_event(event_id, event_type, event_type.split(".", maxsplit=1)[0], USER, subjects, NOW)
    assert (event.event_id, event.kind, event.actor_id) == (event_id, kind, USER)
    assert (event.space_id, event.document_id) == placed
    assert event.source == event_type
    assert event.attributes["event_type"] == event_type
    unplaced = {name: value for name, value in subjects.items() if value not in placed}
    assert {name: event.attributes[name] for name in unplaced} == unplaced, "other subject ids stay visible"


def test_a_platform_event_breaking_the_envelope_contract_is_rejected() -> None:
    with pytest.raises(PlatformEventRejected):
        platform_event("", "auth.user.signed_up", "auth", USER, {"user_id": USER}, NOW)
    with pytest.raises(PlatformEventRejected, match="space_id"):
        platform_event(str(uuid.uuid4()), "knowledge.space.created", "knowledge", USER, {"space_id": "x"}, NOW)


def test_a_flush_stores_the_first_occurrence_of_each_new_id_only() -> None:
    new, old = str(uuid.uuid4()), str(uuid.uuid4())
    events = [client_event(reported(event_id=event_id), USER, NOW, "event") for event_id in (new, old, new, old, new)]
    assert stored_flags(events, {new}) == [True, False, False, False, False]
    assert batch_token(events) == batch_token(list(events)), "the same events, the same token"
    assert batch_token(events[:2]) != batch_token(events[:3])


def test_windows_and_limits() -> None:
    assert [window_of(number).length for number in (1, 2, 3, 4)] == [
        timedelta(hours=1),
        timedelta(days=1),
        timedelta(days=7),
        timedelta(days=30),
    ]
    assert window_of(2) is Window.LAST_DAY
    for bad in (0, 5):
        with pytest.raises(InvalidArgument, match="window"):
            window_of(bad)
    assert (top_limit(0), top_limit(1), top_limit(100)) == (10, 1, 100)
    for bad in (-1, 101):
        with pytest.raises(InvalidArgument, match="limit"):
            top_limit(bad)


def test_a_timestamp_outside_its_range_is_invalid_and_inside_is_kept_to_the_microsecond() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    stamp = timestamp(moment)
    stamp.nanos += 999  # below a microsecond: dropped
    assert moment_of(stamp, "at") == moment
    stamp.seconds = 253_402_300_800
    with pytest.raises(InvalidArgument, match="at"):
        moment_of(stamp, "at")


def test_the_migrations_are_numbered_and_every_statement_can_run_again(tmp_path: Path) -> None:
    migrations = read_migrations(MIGRATIONS, "activity")
    assert [migration.version for migration in migrations] == list(range(1, len(migrations) + 1))
    for migration in migrations:
        for statement in migration.statements:
            assert "IF NOT EXISTS" in statement, statement[:80]
            assert "{database}" not in statement
    assert sql_statements("-- a comment; with a semicolon\nSELECT 1;\n\nSELECT 2; ") == ["SELECT 1", "SELECT 2"]
    (tmp_path / "1_bad.sql").write_text("SELECT 1")
    with pytest.raises(ValueError, match="NNNN"):
        read_migrations(tmp_path, "activity")
    with pytest.raises(ValueError, match="database"):
        read_migrations(MIGRATIONS, "no-dashes; DROP")
