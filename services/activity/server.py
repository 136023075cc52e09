"""The gRPC adapter of the activity service: proto in, use case, proto out."""

from __future__ import annotations

from typing import Any

from services.activity.domain import ActivityEvent, ReportedEvent
from services.activity.service import ActivityService
from services.api.activity.v1 import activity_pb2, activity_pb2_grpc
from services.kit.auth import current_principal
from services.kit.protos import moment_of, timestamp

SERVICE_NAME = "activity.v1.ActivityService"


def caller_id() -> str:
    return current_principal().user_id


def reported(event: activity_pb2.ActivityEvent, field: str) -> ReportedEvent:
    occurred_at = moment_of(event.occurred_at, f"{field}.occurred_at") if event.HasField("occurred_at") else None
    return ReportedEvent(
        event.event_id, event.kind, event.space_id, event.document_id, occurred_at, dict(event.attributes)
    )


def event_message(event: ActivityEvent) -> activity_pb2.ActivityEvent:
    return activity_pb2.ActivityEvent(
        event_id=event.event_id,
        kind=int(event.kind),  # type: ignore[arg-type]
        space_id=event.space_id,
        document_id=event.document_id,
        occurred_at=timestamp(event.occurred_at),
        attributes=dict(event.attributes),
    )


class ActivityServer(activity_pb2_grpc.ActivityServiceServicer):
    def __init__(self, service: ActivityService) -> None:
        self.service = service

    async def TrackEvent(
        self, request: activity_pb2.TrackEventRequest, context: Any
    ) -> activity_pb2.TrackEventResponse:
        event = request.event if request.HasField("event") else activity_pb2.ActivityEvent()
        recorded = await self.service.track_event(caller_id(), reported(event, "event"))
        return activity_pb2.TrackEventResponse(accepted_count=recorded.accepted, duplicate_count=recorded.duplicates)

    async def TrackEvents(
        self, request: activity_pb2.TrackEventsRequest, context: Any
    ) -> activity_pb2.TrackEventsResponse:
        events = [reported(event, f"events[{index}]") for index, event in enumerate(request.events)]
        recorded = await self.service.track_events(caller_id(), events)
        return activity_pb2.TrackEventsResponse(accepted_count=recorded.accepted, duplicate_count=recorded.duplicates)

    async def GetUserTimeline(
        self, request: activity_pb2.GetUserTimelineRequest, context: Any
    ) -> activity_pb2.GetUserTimelineResponse:
        start = moment_of(request.start_time, "start_time") if request.HasField("start_time") else None
        end = moment_of(request.end_time, "end_time") if request.HasField("end_time") else None
        page = await self.service.timeline(caller_id(), request.page_size, request.page_token, start, end)
        return activity_pb2.GetUserTimelineResponse(
            events=[event_message(event) for event in page.items], next_page_token=page.next_page_token
        )

    async def GetDocumentStats(
        self, request: activity_pb2.GetDocumentStatsRequest, context: Any
    ) -> activity_pb2.GetDocumentStatsResponse:
        stats = await self.service.document_stats(caller_id(), request.space_id, request.document_id, request.window)
        response = activity_pb2.GetDocumentStatsResponse(
            views=stats.views, unique_viewers=stats.unique_viewers, edits=stats.edits
        )
        if stats.last_viewed_at is not None:
            response.last_viewed_at.CopyFrom(timestamp(stats.last_viewed_at))
        return response

    async def GetTopDocuments(
        self, request: activity_pb2.GetTopDocumentsRequest, context: Any
    ) -> activity_pb2.GetTopDocumentsResponse:
        top = await self.service.top_documents(caller_id(), request.space_id, request.window, request.limit)
        return activity_pb2.GetTopDocumentsResponse(
            documents=[
                activity_pb2.TopDocument(
                    document_id=doc.document_id, views=doc.views, unique_viewers=doc.unique_viewers
                )
                for doc in top
            ]
        )
