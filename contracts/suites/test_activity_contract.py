"""Contract of activity.v1.ActivityService: every RPC through Envoy over gRPC, gRPC-Web and
JSON, for success and for each documented error. The activity service does not own documents,
so most tests track events about document ids of their own making, in real spaces (membership
is checked); the tests that count edits or leave out deleted documents write real documents
through the knowledge service and wait for its events to be recorded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from clients.transports import Transport
from contracts.expect import (
    expect_error,
    expect_invalid_field,
    expect_needs_a_valid_token,
    expect_ok,
    expect_outsiders_and_missing_spaces_denied,
)
from contracts.registry import contract
from contracts.values import MALFORMED_IDS, new_id
from fixtures.accounts import sign_up
from fixtures.activity import (
    ASKED,
    EDITED,
    GET_DOCUMENT_STATS,
    GET_TOP_DOCUMENTS,
    GET_USER_TIMELINE,
    LAST_DAY,
    LAST_HOUR,
    LAST_MONTH,
    LAST_WEEK,
    PLATFORM_EVENT,
    SEARCHED,
    SIGNED_IN,
    SPACE_CHANGED,
    TRACK_EVENT,
    TRACK_EVENTS,
    VIEWED,
    Event,
    document_stats,
    event,
    stamp,
    stats_when,
    timeline,
    top_documents,
    track,
    track_all,
    viewed,
    whole_timeline,
)
from fixtures.documents import eventually
from fixtures.knowledge import create_document, create_space, delete_document, new_team, update_document
from services.api.activity.v1 import activity_pb2


def tracked_fields(found: Event) -> tuple[Any, ...]:
    return (
        found.event_id,
        found.kind,
        found.space_id,
        found.document_id,
        found.occurred_at.ToMicroseconds(),
        dict(found.attributes),
    )


def at_microseconds(sent: Event) -> Event:
    """The event as the service keeps it: its time to the microsecond."""
    kept = Event()
    kept.CopyFrom(sent)
    kept.occurred_at.FromMicroseconds(sent.occurred_at.ToMicroseconds())
    return kept


def client_events(events: list[Event]) -> list[Event]:
    """Tracked events only (platform-derived ones carry an event_type)."""
    return [found for found in events if "event_type" not in found.attributes]


# ------------------------------------------------------------------ TrackEvent


@contract("activity.v1.ActivityService/TrackEvent")
async def test_track_event_records_the_event_once_and_counts_a_resubmission_as_a_duplicate(
    transport: Transport, setup_transport: Transport
) -> None:
    now = datetime.now(UTC)
    team = await new_team(setup_transport)
    sent = event(
        VIEWED,
        team.space_id,
        new_id(),
        at=now - timedelta(minutes=3, microseconds=7),
        attributes={"via": "search", "query": "quarterly plan", "rank": "2"},
    )
    first = expect_ok(
        await transport.unary(TRACK_EVENT, activity_pb2.TrackEventRequest(event=sent), token=team.viewer.access_token),
        activity_pb2.TrackEventResponse,
    )
    again = expect_ok(
        await transport.unary(TRACK_EVENT, activity_pb2.TrackEventRequest(event=sent), token=team.viewer.access_token),
        activity_pb2.TrackEventResponse,
    )
    assert (first.accepted_count, first.duplicate_count) == (1, 0)
    assert (again.accepted_count, again.duplicate_count) == (0, 1)
    recorded = client_events(await whole_timeline(setup_transport, team.viewer))
    assert [tracked_fields(found) for found in recorded] == [tracked_fields(at_microseconds(sent))]


@contract("activity.v1.ActivityService/TrackEvent")
async def test_track_event_accepts_each_client_kind_with_the_ids_it_takes(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    account = team.editor
    sent = [
        event(SEARCHED, attributes={"query": "across every space"}),
        event(SEARCHED, team.space_id, attributes={"query": "in one space", "result_count": "7"}),
        event(ASKED),
        event(activity_pb2.ACTIVITY_KIND_CANVAS_EDITED, team.space_id),
        event(activity_pb2.ACTIVITY_KIND_CANVAS_EDITED, team.space_id, new_id()),
        event(EDITED, team.space_id, new_id()),
        event(SIGNED_IN),
    ]
    for one in sent:
        reply = await transport.unary(
            TRACK_EVENT, activity_pb2.TrackEventRequest(event=one), token=account.access_token
        )
        assert expect_ok(reply, activity_pb2.TrackEventResponse).accepted_count == 1
    recorded = {found.event_id: found for found in await whole_timeline(setup_transport, account)}
    for one in sent:
        assert tracked_fields(recorded[one.event_id]) == tracked_fields(at_microseconds(one))


@contract("activity.v1.ActivityService/TrackEvent")
async def test_track_event_accepts_values_at_their_limits(transport: Transport, setup_transport: Transport) -> None:
    now = datetime.now(UTC)
    account = await sign_up(setup_transport)
    space = await create_space(setup_transport, account)
    # 20 entries: 64-character keys with 256-character values, and a 1-character key with an empty value.
    attributes = {f"{index:02d}" + "é" * 62: "✓" * 256 for index in range(19)} | {"k": ""}
    edges = [
        viewed(space.space_id, new_id(), at=now - timedelta(days=29, hours=23)),
        event(SEARCHED, at=datetime.now(UTC) + timedelta(minutes=4)),
        event(SEARCHED, attributes=attributes),
    ]
    for one in edges:
        reply = await transport.unary(
            TRACK_EVENT, activity_pb2.TrackEventRequest(event=one), token=account.access_token
        )
        assert expect_ok(reply, activity_pb2.TrackEventResponse).accepted_count == 1
    recorded = {found.event_id: found for found in await whole_timeline(setup_transport, account)}
    assert dict(recorded[edges[2].event_id].attributes) == attributes


def invalid_events(space_id: str, now: datetime) -> list[tuple[str, Event]]:
    """(field named in the error, an event breaking that field's limit)."""
    document_id = new_id()
    too_many = {f"key{index}": "value" for index in range(21)}
    return [
        *[("event_id", event(VIEWED, space_id, document_id, event_id=bad)) for bad in MALFORMED_IDS],
        ("kind", event(0, space_id, document_id)),
        ("kind", event(SPACE_CHANGED, space_id)),
        ("kind", event(PLATFORM_EVENT)),
        ("space_id", event(VIEWED, "", document_id)),
        ("space_id", event(VIEWED, "not-a-uuid", document_id)),
        ("document_id", event(VIEWED, space_id, "")),
        ("document_id", event(EDITED, space_id, MALFORMED_IDS[0])),
        ("space_id", event(SIGNED_IN, space_id)),
        ("document_id", event(SIGNED_IN, "", document_id)),
        ("space_id", event(SEARCHED, "", document_id)),
        ("occurred_at", viewed(space_id, document_id, at=now - timedelta(days=30, minutes=1))),
        ("occurred_at", viewed(space_id, document_id, at=datetime.now(UTC) + timedelta(minutes=6))),
        ("attributes", event(SEARCHED, attributes=too_many)),
        ("attributes", event(SEARCHED, attributes={"": "empty key"})),
        ("attributes", event(SEARCHED, attributes={"k" * 65: "long key"})),
        ("attributes", event(SEARCHED, attributes={"query": "q" * 257})),
    ]


@contract("activity.v1.ActivityService/TrackEvent", "INVALID_ARGUMENT")
async def test_track_event_rejects_a_field_beyond_its_limit_and_stores_nothing(
    transport: Transport, setup_transport: Transport
) -> None:
    now = datetime.now(UTC)
    account = await sign_up(setup_transport)
    space = await create_space(setup_transport, account)
    cases = invalid_events(space.space_id, now)
    without_time = viewed(space.space_id, new_id())
    without_time.ClearField("occurred_at")
    cases.append(("occurred_at", without_time))
    for field, bad in cases:
        reply = await transport.unary(
            TRACK_EVENT, activity_pb2.TrackEventRequest(event=bad), token=account.access_token
        )
        expect_invalid_field(reply, f"event.{field}")
    assert client_events(await whole_timeline(setup_transport, account)) == []


@contract("activity.v1.ActivityService/TrackEvent", "UNAUTHENTICATED")
async def test_track_event_needs_a_valid_token(transport: Transport) -> None:
    request = activity_pb2.TrackEventRequest(event=event(SEARCHED))
    await expect_needs_a_valid_token(transport, TRACK_EVENT, request)


@contract("activity.v1.ActivityService/TrackEvent", "PERMISSION_DENIED")
async def test_track_event_in_a_space_the_caller_is_not_in_or_that_does_not_exist_is_denied(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    await expect_outsiders_and_missing_spaces_denied(
        transport,
        TRACK_EVENT,
        lambda space_id: activity_pb2.TrackEventRequest(event=viewed(space_id, new_id())),
        team.outsider,
        team.space_id,
    )
    assert client_events(await whole_timeline(setup_transport, team.outsider)) == []


# ----------------------------------------------------------------- TrackEvents


@contract("activity.v1.ActivityService/TrackEvents")
async def test_track_events_stores_each_new_id_once_and_counts_repeats_as_duplicates(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    account = team.viewer
    known = viewed(team.space_id, new_id())
    await track(setup_transport, account, known)
    fresh = [viewed(team.space_id, new_id()), event(SEARCHED, attributes={"query": "roadmap"})]
    batch = [fresh[0], known, fresh[1], fresh[0]]
    reply = await transport.unary(
        TRACK_EVENTS, activity_pb2.TrackEventsRequest(events=batch), token=account.access_token
    )
    response = expect_ok(reply, activity_pb2.TrackEventsResponse)
    assert (response.accepted_count, response.duplicate_count) == (2, 2)
    recorded = client_events(await whole_timeline(setup_transport, account))
    assert sorted(found.event_id for found in recorded) == sorted(one.event_id for one in [known, *fresh])


@contract("activity.v1.ActivityService/TrackEvents")
async def test_track_events_takes_500_events_at_once(transport: Transport, setup_transport: Transport) -> None:
    now = datetime.now(UTC)
    account = await sign_up(setup_transport)
    space = await create_space(setup_transport, account)
    batch = [viewed(space.space_id, new_id(), at=now - timedelta(seconds=index)) for index in range(500)]
    reply = await transport.unary(
        TRACK_EVENTS, activity_pb2.TrackEventsRequest(events=batch), token=account.access_token
    )
    response = expect_ok(reply, activity_pb2.TrackEventsResponse)
    assert (response.accepted_count, response.duplicate_count) == (500, 0)
    assert len(client_events(await whole_timeline(setup_transport, account))) == 500


@contract("activity.v1.ActivityService/TrackEvents", "INVALID_ARGUMENT")
async def test_track_events_rejects_an_empty_or_oversized_batch_or_a_bad_event_and_stores_none(
    transport: Transport, setup_transport: Transport
) -> None:
    now = datetime.now(UTC)
    account = await sign_up(setup_transport)
    space = await create_space(setup_transport, account)
    oversized = [event(SEARCHED) for _ in range(501)]
    for batch in ([], oversized):
        reply = await transport.unary(
            TRACK_EVENTS, activity_pb2.TrackEventsRequest(events=batch), token=account.access_token
        )
        expect_invalid_field(reply, "events")
    good = [viewed(space.space_id, new_id()) for _ in range(3)]
    for field, bad in invalid_events(space.space_id, now)[::3]:
        reply = await transport.unary(
            TRACK_EVENTS, activity_pb2.TrackEventsRequest(events=[*good, bad]), token=account.access_token
        )
        expect_invalid_field(reply, f"events[3].{field}")
    assert client_events(await whole_timeline(setup_transport, account)) == [], "nothing of a refused batch"


@contract("activity.v1.ActivityService/TrackEvents", "UNAUTHENTICATED")
async def test_track_events_needs_a_valid_token(transport: Transport) -> None:
    await expect_needs_a_valid_token(transport, TRACK_EVENTS, activity_pb2.TrackEventsRequest(events=[event(ASKED)]))


@contract("activity.v1.ActivityService/TrackEvents", "PERMISSION_DENIED")
async def test_track_events_naming_a_space_the_caller_is_not_in_is_denied_by_index_and_stores_none(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    own_space = await create_space(setup_transport, team.outsider)
    for foreign in (team.space_id, new_id()):
        batch = [viewed(own_space.space_id, new_id()), event(SEARCHED), viewed(foreign, new_id())]
        reply = await transport.unary(
            TRACK_EVENTS, activity_pb2.TrackEventsRequest(events=batch), token=team.outsider.access_token
        )
        expect_error(reply, grpc.StatusCode.PERMISSION_DENIED, f"space {foreign}", "events[2]")
    assert client_events(await whole_timeline(setup_transport, team.outsider)) == []


# ------------------------------------------------------------- GetUserTimeline


@contract("activity.v1.ActivityService/GetUserTimeline")
async def test_get_user_timeline_lists_only_the_callers_events_newest_first_page_by_page(
    transport: Transport, setup_transport: Transport
) -> None:
    now = datetime.now(UTC)
    team = await new_team(setup_transport)
    tie = now - timedelta(minutes=10)
    mine = [viewed(team.space_id, new_id(), at=now - timedelta(minutes=minutes)) for minutes in (1, 2, 3, 20)]
    mine += [viewed(team.space_id, new_id(), at=tie) for _ in range(3)]
    await track_all(setup_transport, team.viewer, mine)
    await track_all(setup_transport, team.editor, [viewed(team.space_id, new_id(), at=now)])
    expected_order = sorted(mine, key=lambda one: (one.occurred_at.ToMicroseconds(), one.event_id), reverse=True)

    pages: list[list[str]] = []
    page_sizes: list[int] = []
    token = ""
    while True:
        reply = await transport.unary(
            GET_USER_TIMELINE,
            activity_pb2.GetUserTimelineRequest(page_size=3, page_token=token),
            token=team.viewer.access_token,
        )
        page = expect_ok(reply, activity_pb2.GetUserTimelineResponse)
        pages.append([found.event_id for found in client_events(list(page.events))])
        page_sizes.append(len(page.events))
        token = page.next_page_token
        if not token:
            break
    listed = [event_id for page_ids in pages for event_id in page_ids]
    assert listed == [one.event_id for one in expected_order], "newest first, ties by event_id (descending)"
    assert all(size == 3 for size in page_sizes[:-1]), page_sizes
    assert 1 <= page_sizes[-1] <= 3, page_sizes


@contract("activity.v1.ActivityService/GetUserTimeline")
async def test_get_user_timeline_keeps_to_the_time_range_and_pages_20_by_default(
    transport: Transport, setup_transport: Transport
) -> None:
    now = datetime.now(UTC)
    account = await sign_up(setup_transport)
    space = await create_space(setup_transport, account)
    times = [now - timedelta(hours=hours) for hours in range(1, 26)]
    await track_all(setup_transport, account, [viewed(space.space_id, new_id(), at=moment) for moment in times])
    start, end = times[19], times[4]
    reply = await transport.unary(
        GET_USER_TIMELINE,
        activity_pb2.GetUserTimelineRequest(start_time=stamp(start), end_time=stamp(end)),
        token=account.access_token,
    )
    ranged = expect_ok(reply, activity_pb2.GetUserTimelineResponse)
    assert [found.occurred_at.ToDatetime(tzinfo=UTC) for found in ranged.events] == times[5:20], (
        "start_time ≤ occurred_at < end_time"
    )
    assert ranged.next_page_token == ""
    # Bounds at the ends of Timestamp's range (0001 to 9999) are bounds like any other.
    first_moment, last_moment = datetime(1, 1, 1, 0, 0, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)
    for start_time, end_time, count in (
        (None, first_moment, 0),
        (last_moment, None, 0),
        (first_moment, last_moment, 25),
    ):
        request = activity_pb2.GetUserTimelineRequest(page_size=100)
        if start_time is not None:
            request.start_time.CopyFrom(stamp(start_time))
        if end_time is not None:
            request.end_time.CopyFrom(stamp(end_time))
        reply = await transport.unary(GET_USER_TIMELINE, request, token=account.access_token)
        found = client_events(list(expect_ok(reply, activity_pb2.GetUserTimelineResponse).events))
        assert len(found) == count, (start_time, end_time)
    first = expect_ok(
        await transport.unary(GET_USER_TIMELINE, activity_pb2.GetUserTimelineRequest(), token=account.access_token),
        activity_pb2.GetUserTimelineResponse,
    )
    assert len(first.events) == 20
    assert first.next_page_token


@contract("activity.v1.ActivityService/GetUserTimeline", "INVALID_ARGUMENT")
async def test_get_user_timeline_rejects_a_bad_page_size_token_or_range(
    transport: Transport, setup_transport: Transport
) -> None:
    now = datetime.now(UTC)
    account = await sign_up(setup_transport)
    await track_all(setup_transport, account, [event(SEARCHED) for _ in range(3)])
    page = expect_ok(await timeline(setup_transport, account, page_size=1), activity_pb2.GetUserTimelineResponse)
    earlier = now - timedelta(days=1)
    cases: list[tuple[str, activity_pb2.GetUserTimelineRequest]] = [
        ("page_size", activity_pb2.GetUserTimelineRequest(page_size=-1)),
        ("page_size", activity_pb2.GetUserTimelineRequest(page_size=101)),
        ("page_token", activity_pb2.GetUserTimelineRequest(page_token="not-a-token")),
        # A token is only valid for the same range.
        ("page_token", activity_pb2.GetUserTimelineRequest(page_token=page.next_page_token, start_time=stamp(earlier))),
        ("start_time", activity_pb2.GetUserTimelineRequest(start_time=stamp(now), end_time=stamp(now))),
        ("start_time", activity_pb2.GetUserTimelineRequest(start_time=stamp(now), end_time=stamp(earlier))),
    ]
    for field, request in cases:
        expect_invalid_field(await transport.unary(GET_USER_TIMELINE, request, token=account.access_token), field)


@contract("activity.v1.ActivityService/GetUserTimeline", "UNAUTHENTICATED")
async def test_get_user_timeline_needs_a_valid_token(transport: Transport) -> None:
    await expect_needs_a_valid_token(transport, GET_USER_TIMELINE, activity_pb2.GetUserTimelineRequest())


# ------------------------------------------------------------ GetDocumentStats


@contract("activity.v1.ActivityService/GetDocumentStats")
async def test_get_document_stats_counts_views_viewers_and_edits_in_the_window(
    transport: Transport, setup_transport: Transport
) -> None:
    now = datetime.now(UTC)
    team = await new_team(setup_transport)
    document = await create_document(setup_transport, team.editor, team.space_id, "Runbook", "Restart the queue.")
    document = await update_document(setup_transport, team.editor, document, content="Drain, then restart.")
    document_id = document.document_id
    last_view = now - timedelta(minutes=5)
    await track_all(
        setup_transport,
        team.viewer,
        [
            viewed(team.space_id, document_id, at=last_view),
            viewed(team.space_id, document_id, at=now - timedelta(minutes=30)),
            viewed(team.space_id, document_id, at=now - timedelta(hours=3)),
            viewed(team.space_id, document_id, at=now - timedelta(days=3)),
        ],
    )
    await track(setup_transport, team.owner, viewed(team.space_id, document_id, at=now - timedelta(hours=2)))
    # The two edits are the knowledge service's created and updated events.
    await stats_when(setup_transport, team.viewer, team.space_id, document_id, lambda stats: stats.edits == 2)
    expected = {LAST_HOUR: (2, 1, 2), LAST_DAY: (4, 2, 2), LAST_WEEK: (5, 2, 2), LAST_MONTH: (5, 2, 2)}
    for window, (views, viewers, edits) in expected.items():
        reply = await document_stats(transport, team.viewer, team.space_id, document_id, window)
        stats = expect_ok(reply, activity_pb2.GetDocumentStatsResponse)
        assert (stats.views, stats.unique_viewers, stats.edits) == (views, viewers, edits), window
        assert stats.last_viewed_at.ToMicroseconds() == stamp(last_view).ToMicroseconds()


@contract("activity.v1.ActivityService/GetDocumentStats")
async def test_get_document_stats_of_an_unknown_document_is_zero_and_last_view_is_ever(
    transport: Transport, setup_transport: Transport
) -> None:
    now = datetime.now(UTC)
    account = await sign_up(setup_transport)
    space = await create_space(setup_transport, account)
    unknown = expect_ok(
        await document_stats(transport, account, space.space_id, new_id(), LAST_MONTH),
        activity_pb2.GetDocumentStatsResponse,
    )
    assert (unknown.views, unknown.unique_viewers, unknown.edits) == (0, 0, 0)
    assert not unknown.HasField("last_viewed_at"), "never viewed: unset"
    document_id = new_id()
    long_ago = now - timedelta(days=20)
    await track(setup_transport, account, viewed(space.space_id, document_id, at=long_ago))
    old = expect_ok(
        await document_stats(transport, account, space.space_id, document_id, LAST_DAY),
        activity_pb2.GetDocumentStatsResponse,
    )
    assert old.views == 0, "the view is outside the window"
    assert old.last_viewed_at.ToMicroseconds() == stamp(long_ago).ToMicroseconds(), "but is the last view ever"


@contract("activity.v1.ActivityService/GetDocumentStats", "INVALID_ARGUMENT")
async def test_get_document_stats_rejects_bad_ids_or_an_unspecified_window(
    transport: Transport, setup_transport: Transport
) -> None:
    account = await sign_up(setup_transport)
    space = await create_space(setup_transport, account)
    for bad in MALFORMED_IDS:
        expect_invalid_field(await document_stats(transport, account, bad, new_id()), "space_id")
        expect_invalid_field(await document_stats(transport, account, space.space_id, bad), "document_id")
    expect_invalid_field(await document_stats(transport, account, space.space_id, new_id(), 0), "window")


@contract("activity.v1.ActivityService/GetDocumentStats", "UNAUTHENTICATED")
async def test_get_document_stats_needs_a_valid_token(transport: Transport) -> None:
    request = activity_pb2.GetDocumentStatsRequest(space_id=new_id(), document_id=new_id(), window=LAST_DAY)
    await expect_needs_a_valid_token(transport, GET_DOCUMENT_STATS, request)


@contract("activity.v1.ActivityService/GetDocumentStats", "PERMISSION_DENIED")
async def test_get_document_stats_of_a_space_the_caller_is_not_in_is_denied(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    document_id = new_id()
    await track(setup_transport, team.viewer, viewed(team.space_id, document_id))
    await expect_outsiders_and_missing_spaces_denied(
        transport,
        GET_DOCUMENT_STATS,
        lambda space_id: activity_pb2.GetDocumentStatsRequest(
            space_id=space_id, document_id=document_id, window=LAST_DAY
        ),
        team.outsider,
        team.space_id,
    )


# ------------------------------------------------------------- GetTopDocuments


@contract("activity.v1.ActivityService/GetTopDocuments")
async def test_get_top_documents_ranks_by_views_then_document_id_within_the_window(
    transport: Transport, setup_transport: Transport
) -> None:
    now = datetime.now(UTC)
    team = await new_team(setup_transport)
    first, second, third, tied_a, tied_b, old = sorted(new_id() for _ in range(6))
    views = {first: 5, second: 3, third: 2, tied_b: 1, tied_a: 1}
    by_viewer = [team.viewer, team.editor, team.owner]
    for document_id, count in views.items():
        for index in range(count):
            await track(
                setup_transport,
                by_viewer[index % 3],
                viewed(team.space_id, document_id, at=now - timedelta(minutes=index)),
            )
    await track(setup_transport, team.viewer, viewed(team.space_id, old, at=now - timedelta(days=2)))
    reply = await top_documents(transport, team.viewer, team.space_id, LAST_DAY)
    top = expect_ok(reply, activity_pb2.GetTopDocumentsResponse)
    assert [(doc.document_id, doc.views, doc.unique_viewers) for doc in top.documents] == [
        (first, 5, 3),
        (second, 3, 3),
        (third, 2, 2),
        (tied_a, 1, 1),
        (tied_b, 1, 1),
    ], "most viewed first, ties by document_id; the two-day-old view is outside the day"
    week = expect_ok(
        await top_documents(transport, team.viewer, team.space_id, LAST_WEEK, 2), activity_pb2.GetTopDocumentsResponse
    )
    assert [doc.document_id for doc in week.documents] == [first, second], "limit"
    month = expect_ok(
        await top_documents(transport, team.viewer, team.space_id, LAST_MONTH), activity_pb2.GetTopDocumentsResponse
    )
    assert old in [doc.document_id for doc in month.documents]


@contract("activity.v1.ActivityService/GetTopDocuments")
async def test_get_top_documents_returns_10_by_default_and_leaves_out_deleted_documents(
    transport: Transport, setup_transport: Transport
) -> None:
    account = await sign_up(setup_transport)
    space = await create_space(setup_transport, account)
    doomed = await create_document(setup_transport, account, space.space_id, "Old plan", "Superseded.")
    others = sorted(new_id() for _ in range(11))
    await track_all(
        setup_transport,
        account,
        [viewed(space.space_id, doomed.document_id) for _ in range(3)]
        + [viewed(space.space_id, document_id) for document_id in others],
    )
    before = expect_ok(await top_documents(transport, account, space.space_id), activity_pb2.GetTopDocumentsResponse)
    assert [doc.document_id for doc in before.documents] == [doomed.document_id, *others[:9]]
    await delete_document(setup_transport, account, doomed)

    async def without_deleted() -> activity_pb2.GetTopDocumentsResponse | None:
        top = expect_ok(await top_documents(transport, account, space.space_id), activity_pb2.GetTopDocumentsResponse)
        return top if doomed.document_id not in [doc.document_id for doc in top.documents] else None

    after = await eventually(without_deleted, "the deleted document left out of top documents", 30)
    assert [doc.document_id for doc in after.documents] == others[:10]


@contract("activity.v1.ActivityService/GetTopDocuments", "INVALID_ARGUMENT")
async def test_get_top_documents_rejects_a_bad_space_window_or_limit(
    transport: Transport, setup_transport: Transport
) -> None:
    account = await sign_up(setup_transport)
    space = await create_space(setup_transport, account)
    for bad in MALFORMED_IDS:
        expect_invalid_field(await top_documents(transport, account, bad), "space_id")
    expect_invalid_field(await top_documents(transport, account, space.space_id, window=0), "window")
    for limit in (-1, 101):
        expect_invalid_field(await top_documents(transport, account, space.space_id, limit=limit), "limit")


@contract("activity.v1.ActivityService/GetTopDocuments", "UNAUTHENTICATED")
async def test_get_top_documents_needs_a_valid_token(transport: Transport) -> None:
    request = activity_pb2.GetTopDocumentsRequest(space_id=new_id(), window=LAST_DAY)
    await expect_needs_a_valid_token(transport, GET_TOP_DOCUMENTS, request)


@contract("activity.v1.ActivityService/GetTopDocuments", "PERMISSION_DENIED")
async def test_get_top_documents_of_a_space_the_caller_is_not_in_is_denied(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    await track(setup_transport, team.viewer, viewed(team.space_id, new_id()))
    await expect_outsiders_and_missing_spaces_denied(
        transport,
        GET_TOP_DOCUMENTS,
        lambda space_id: activity_pb2.GetTopDocumentsRequest(space_id=space_id, window=LAST_DAY),
        team.outsider,
        team.space_id,
    )
