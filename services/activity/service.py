"""The activity use cases: record what clients report, record the platform's events, and
answer timelines, document stats and top documents — each read only for those allowed to.

A caller's timeline holds only their own events. Stats and rankings are per space, for its
members (any role), asked through the kit's access cache, so a member removed from a space
stops seeing them as soon as RemoveMember has returned.

Windows slide and end now: they count every event since their start (a client stamping its
events a little ahead of the server's clock is counted at once).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from services.activity.domain import (
    TIMELINE,
    ActivityEvent,
    DocumentStats,
    PlatformEventRejected,
    Recorded,
    ReportedEvent,
    TopDocument,
    client_batch,
    client_event,
    platform_event,
    spaces_named,
    time_range,
    timeline_cursor,
    top_limit,
    window_of,
)
from services.activity.repository import ActivityStore
from services.activity.writer import EventWriter
from services.kit.access import AccessCache
from services.kit.batch_consumer import ConsumedEvent, Rejected
from services.kit.errors import InvalidArgument, PermissionDenied
from services.kit.ids import parse_id
from services.kit.pagination import Page, page_of, page_request
from services.kit.protos import moment_of

VIEWER = 1
MEMBERSHIP_CHANGED = ("knowledge.member.added", "knowledge.member.role_changed", "knowledge.member.removed")


def not_a_member(space_id: str, where: str = "") -> PermissionDenied:
    return PermissionDenied(
        f"you are not a member of space {space_id}{where}, or it does not exist; ask one of its owners to add you"
    )


class ActivityService:
    def __init__(
        self,
        store: ActivityStore,
        writer: EventWriter,
        access: AccessCache,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.writer = writer
        self.access = access
        self.clock = clock

    async def require_member(self, caller_id: str, space_id: str, where: str = "") -> None:
        if await self.access.role(caller_id, space_id) < VIEWER:
            raise not_a_member(space_id, where)

    # -- recording -----------------------------------------------------------------------

    async def track_event(self, caller_id: str, reported: ReportedEvent) -> Recorded:
        event = client_event(reported, caller_id, self.clock(), "event")
        if event.space_id:
            await self.require_member(caller_id, event.space_id)
        [stored] = await self.writer.record([event])
        return Recorded(int(stored), int(not stored))

    async def track_events(self, caller_id: str, reported: Sequence[ReportedEvent]) -> Recorded:
        """All or nothing: every event is checked, and every space permitted, before any is written."""
        events = client_batch(reported, caller_id, self.clock())
        for space_id, index in spaces_named(events).items():
            await self.require_member(caller_id, space_id, f" (events[{index}].space_id)")
        flags = await self.writer.record(events)
        stored = sum(flags)
        return Recorded(stored, len(flags) - stored)

    async def record_platform_events(self, consumed: Sequence[ConsumedEvent]) -> list[Rejected]:
        """A batch from the platform topics; the events that break the envelope's contract are
        returned to be dead-lettered, the rest written."""
        events: list[ActivityEvent] = []
        rejected: list[Rejected] = []
        for item in consumed:
            envelope = item.envelope
            if envelope.event_type in MEMBERSHIP_CHANGED:
                self.access.forget(envelope.subject_ids.get("user_id", ""))
            try:
                events.append(
                    platform_event(
                        envelope.event_id,
                        envelope.event_type,
                        envelope.producer,
                        envelope.actor_user_id,
                        envelope.subject_ids,
                        moment_of(envelope.occurred_at, "occurred_at"),
                    )
                )
            except (PlatformEventRejected, InvalidArgument) as error:
                rejected.append(Rejected(item, str(error)))
        await self.writer.record(events, [item.context for item in consumed])
        return rejected

    # -- reading -------------------------------------------------------------------------

    async def timeline(
        self,
        caller_id: str,
        page_size: int,
        page_token: str,
        start: datetime | None,
        end: datetime | None,
    ) -> Page[ActivityEvent]:
        start, end = time_range(start, end)
        scope = [caller_id, start.isoformat() if start else "", end.isoformat() if end else ""]
        request = page_request(page_size, page_token, TIMELINE, scope)
        rows = await self.store.timeline(caller_id, start, end, request.after, request.size + 1)
        return page_of(rows, request, TIMELINE, scope, timeline_cursor)

    async def document_stats(self, caller_id: str, space_id: str, document_id: str, window: int) -> DocumentStats:
        space_id = parse_id(space_id, "space_id")
        document_id = parse_id(document_id, "document_id")
        since = self.clock() - window_of(window).length
        await self.require_member(caller_id, space_id)
        return await self.store.document_stats(space_id, document_id, since)

    async def top_documents(self, caller_id: str, space_id: str, window: int, limit: int) -> list[TopDocument]:
        space_id = parse_id(space_id, "space_id")
        since = self.clock() - window_of(window).length
        count = top_limit(limit)
        await self.require_member(caller_id, space_id)
        return await self.store.top_documents(space_id, since, count)
