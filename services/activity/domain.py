"""The activity domain: events and their limits, how a platform event becomes an activity
event, time windows, and the timeline's order. Pure: no I/O.

Two kinds of events land in one store: what clients report their user did (TrackEvent), and
what the platform's own events say happened (every `<service>.events.v1` topic). Both are
identified by their event id, and an id is recorded once whatever its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import IntEnum

from services.kit.errors import InvalidArgument
from services.kit.ids import CANONICAL_UUID, parse_id
from services.kit.pagination import Cursor, is_time_and_id

BATCH_MAX = 500
ATTRIBUTES_MAX = 20
ATTRIBUTE_KEY_MAX = 64
ATTRIBUTE_VALUE_MAX = 256
PAST_LIMIT = timedelta(days=30)
FUTURE_LIMIT = timedelta(minutes=5)
TOP_LIMIT_MAX = 100
TOP_LIMIT_DEFAULT = 10
CLIENT_SOURCE = "client"


class Kind(IntEnum):
    """activity.v1.ActivityKind's numbers."""

    DOCUMENT_VIEWED = 1
    DOCUMENT_EDITED = 2
    SEARCHED = 3
    ASKED = 4
    CANVAS_EDITED = 5
    SIGNED_IN = 6
    SPACE_CHANGED = 7
    PLATFORM_EVENT = 8


# Kinds a client may report, and which ids each needs: (space_id, document_id) each
# "required", "optional" or "empty".
CLIENT_KINDS: Mapping[Kind, tuple[str, str]] = {
    Kind.DOCUMENT_VIEWED: ("required", "required"),
    Kind.DOCUMENT_EDITED: ("required", "required"),
    Kind.SEARCHED: ("optional", "optional"),
    Kind.ASKED: ("optional", "optional"),
    Kind.CANVAS_EDITED: ("required", "optional"),
    Kind.SIGNED_IN: ("empty", "empty"),
}

# Platform event types and the kind they are recorded as; any other type (a future topic's
# too) is a PLATFORM_EVENT.
PLATFORM_KINDS: Mapping[str, Kind] = {
    "auth.user.signed_up": Kind.SIGNED_IN,
    "knowledge.space.created": Kind.SPACE_CHANGED,
    "knowledge.member.added": Kind.SPACE_CHANGED,
    "knowledge.member.role_changed": Kind.SPACE_CHANGED,
    "knowledge.member.removed": Kind.SPACE_CHANGED,
    "knowledge.document.created": Kind.DOCUMENT_EDITED,
    "knowledge.document.updated": Kind.DOCUMENT_EDITED,
    "knowledge.document.deleted": Kind.DOCUMENT_EDITED,
    "chat.question.asked": Kind.ASKED,
    "canvas.node.placed": Kind.CANVAS_EDITED,
    "canvas.node.moved": Kind.CANVAS_EDITED,
    "canvas.node.removed": Kind.CANVAS_EDITED,
}
DOCUMENT_DELETED = "knowledge.document.deleted"


class Window(IntEnum):
    """activity.v1.TimeWindow's numbers and how far back each reaches."""

    LAST_HOUR = 1
    LAST_DAY = 2
    LAST_WEEK = 3
    LAST_MONTH = 4

    @property
    def length(self) -> timedelta:
        return {
            Window.LAST_HOUR: timedelta(hours=1),
            Window.LAST_DAY: timedelta(days=1),
            Window.LAST_WEEK: timedelta(days=7),
            Window.LAST_MONTH: timedelta(days=30),
        }[self]


@dataclass(frozen=True)
class ActivityEvent:
    event_id: str
    kind: Kind
    actor_id: str  # "" for a system action
    space_id: str  # "" when none
    document_id: str  # "" when none
    occurred_at: datetime  # aware, UTC, to the microsecond
    attributes: Mapping[str, str] = field(default_factory=dict)
    source: str = CLIENT_SOURCE  # "client", or the platform event's type


@dataclass(frozen=True)
class ReportedEvent:
    """An event as a client sent it (the proto's fields, unchecked)."""

    event_id: str
    kind: int
    space_id: str
    document_id: str
    occurred_at: datetime | None
    attributes: Mapping[str, str]


@dataclass(frozen=True)
class Recorded:
    """What a write did: events stored, and those whose id was recorded already."""

    accepted: int
    duplicates: int


@dataclass(frozen=True)
class DocumentStats:
    views: int
    unique_viewers: int
    edits: int
    last_viewed_at: datetime | None


@dataclass(frozen=True)
class TopDocument:
    document_id: str
    views: int
    unique_viewers: int


def client_event(reported: ReportedEvent, actor_id: str, now: datetime, field_prefix: str) -> ActivityEvent:
    """A reported event, checked against its documented limits; errors name `field_prefix`.field."""

    def name(part: str) -> str:
        return f"{field_prefix}.{part}"

    event_id = parse_id(reported.event_id, name("event_id"))
    kind = client_kind(reported.kind, name("kind"))
    space_rule, document_rule = CLIENT_KINDS[kind]
    space_id = optional_id(reported.space_id, name("space_id"), space_rule, kind)
    document_id = optional_id(reported.document_id, name("document_id"), document_rule, kind)
    if document_id and not space_id:
        raise InvalidArgument(name("space_id"), "is required with a document_id: a document lives in a space")
    occurred_at = checked_time(reported.occurred_at, now, name("occurred_at"))
    attributes = checked_attributes(reported.attributes, name("attributes"))
    return ActivityEvent(event_id, kind, actor_id, space_id, document_id, occurred_at, attributes)


def client_kind(number: int, field_name: str) -> Kind:
    allowed = ", ".join(f"{kind.value} ({kind.name})" for kind in CLIENT_KINDS)
    if number not in CLIENT_KINDS:
        if number in (Kind.SPACE_CHANGED, Kind.PLATFORM_EVENT):
            problem = f"{Kind(number).name} is recorded from platform events only; clients report {allowed}"
        else:
            problem = f"must be one of {allowed}, got {number}"
        raise InvalidArgument(field_name, problem)
    return Kind(number)


def optional_id(raw: str, field_name: str, rule: str, kind: Kind) -> str:
    if rule == "required":
        return parse_id(raw, field_name)
    if not raw.strip():
        return ""
    if rule == "empty":
        raise InvalidArgument(field_name, f"must be empty for {kind.name}")
    return parse_id(raw, field_name)


def checked_time(moment: datetime | None, now: datetime, field_name: str) -> datetime:
    if moment is None:
        raise InvalidArgument(field_name, "is required: when the event happened")
    if moment < now - PAST_LIMIT:
        raise InvalidArgument(field_name, f"is more than 30 days in the past (server time {now.isoformat()})")
    if moment > now + FUTURE_LIMIT:
        raise InvalidArgument(field_name, f"is more than 5 minutes in the future (server time {now.isoformat()})")
    return moment


def checked_attributes(attributes: Mapping[str, str], field_name: str) -> dict[str, str]:
    if len(attributes) > ATTRIBUTES_MAX:
        raise InvalidArgument(field_name, f"must hold at most {ATTRIBUTES_MAX} entries, got {len(attributes)}")
    for key, value in sorted(attributes.items()):
        shown = key if len(key) <= 40 else key[:40] + "…"
        if not 1 <= len(key) <= ATTRIBUTE_KEY_MAX:
            raise InvalidArgument(
                field_name, f"keys must be 1–{ATTRIBUTE_KEY_MAX} characters, got {len(key)} ({shown!r})"
            )
        if len(value) > ATTRIBUTE_VALUE_MAX:
            raise InvalidArgument(
                field_name, f"the value of {shown!r} must be 0–{ATTRIBUTE_VALUE_MAX} characters, got {len(value)}"
            )
    return dict(attributes)


def client_batch(reported: Sequence[ReportedEvent], actor_id: str, now: datetime) -> list[ActivityEvent]:
    """A TrackEvents batch, every event checked (the first fault found is the error)."""
    if not 1 <= len(reported) <= BATCH_MAX:
        raise InvalidArgument("events", f"must hold 1–{BATCH_MAX} events, got {len(reported)}")
    return [client_event(event, actor_id, now, f"events[{index}]") for index, event in enumerate(reported)]


def spaces_named(events: Sequence[ActivityEvent]) -> dict[str, int]:
    """Each space a batch names → the index of the first event naming it."""
    first: dict[str, int] = {}
    for index, event in enumerate(events):
        if event.space_id:
            first.setdefault(event.space_id, index)
    return first


class PlatformEventRejected(Exception):
    """A platform event that can never be recorded (it breaks the envelope's contract)."""


def platform_event(
    event_id: str,
    event_type: str,
    producer: str,
    actor_id: str,
    subject_ids: Mapping[str, str],
    occurred_at: datetime,
) -> ActivityEvent:
    """The activity event a platform event is recorded as: its kind from its type, its space
    and document from its subject ids (where the kind has them), the other subject ids as
    attributes beside the type and producer. (Every platform event passes here: kept lean.)"""
    if not CANONICAL_UUID.match(event_id):
        raise PlatformEventRejected(f"event_id {event_id[:40]!r} is not a canonical UUID")
    if actor_id and not CANONICAL_UUID.match(actor_id):
        raise PlatformEventRejected(f"actor_user_id {actor_id[:40]!r} is not a canonical UUID")
    kind = PLATFORM_KINDS.get(event_type, Kind.PLATFORM_EVENT)
    placed = kind != Kind.SIGNED_IN
    space_id = document_id = ""
    attributes = {"event_type": event_type, "producer": producer}
    for name, value in subject_ids.items():
        if value and not CANONICAL_UUID.match(value):
            raise PlatformEventRejected(f"{name} {value[:40]!r} is not a canonical UUID")
        if placed and name == "space_id":
            space_id = value
        elif placed and name == "document_id":
            document_id = value
        else:
            attributes[name] = value
    if document_id and not space_id:  # a document is placed in its space, or not at all
        attributes["document_id"], document_id = document_id, ""
    return ActivityEvent(event_id, kind, actor_id, space_id, document_id, occurred_at, attributes, source=event_type)


def time_range(start: datetime | None, end: datetime | None) -> tuple[datetime | None, datetime | None]:
    if start is not None and end is not None and not start < end:
        raise InvalidArgument("start_time", "must be before end_time")
    return start, end


def window_of(number: int, field_name: str = "window") -> Window:
    if number not in Window._value2member_map_:
        names = ", ".join(f"{window.value} ({window.name})" for window in Window)
        raise InvalidArgument(field_name, f"must be one of {names}, got {number}")
    return Window(number)


def top_limit(limit: int) -> int:
    if limit == 0:
        return TOP_LIMIT_DEFAULT
    if not 1 <= limit <= TOP_LIMIT_MAX:
        raise InvalidArgument("limit", f"must be 1–{TOP_LIMIT_MAX} (0 means {TOP_LIMIT_DEFAULT}), got {limit}")
    return limit


class Listing:
    """GetUserTimeline as a paged listing: newest first, ties by event id (descending)."""

    value = "GetUserTimeline"

    def accepts(self, cursor: Cursor) -> bool:
        return is_time_and_id(cursor)


TIMELINE = Listing()


def timeline_cursor(event: ActivityEvent) -> Cursor:
    return Cursor.at(event.occurred_at, event.event_id)
