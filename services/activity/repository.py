"""The activity store in ClickHouse: writing a batch of events, and the queries behind the
RPCs. The schema and the reasons for its order keys are in migrations/0001_events.sql.

Reads and writes go through ClickHouse's HTTP interface (clickhouse-connect's async client).
Its HTTP spans are suppressed in favour of database spans: a read is a span named for its
statement and table in the caller's trace, and the writer (services.activity.writer) records
its lookups and inserts in the traces of the events they carry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from clickhouse_connect.driver.asyncclient import AsyncClient
from clickhouse_connect.driver.external import ExternalData
from clickhouse_connect.driver.query import QueryResult
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from services.activity.domain import ActivityEvent, DocumentStats, Kind, TopDocument
from services.kit.pagination import Cursor
from services.kit.telemetry import untraced

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
NONE = "00000000-0000-0000-0000-000000000000"
EVENT_COLUMNS = ["event_id", "actor_id", "kind", "space_id", "document_id", "occurred_at", "source", "attributes"]
# Insert settings: a repeated insert with the same token is dropped, in the views too.
DEDUPLICATE = {"deduplicate_blocks_in_dependent_materialized_views": 1}
_tracer = trace.get_tracer("services.activity.repository")


def database_attributes(operation: str, table: str) -> dict[str, str]:
    return {"db.system.name": "clickhouse", "db.operation.name": operation, "db.collection.name": table}


def row_of(event: ActivityEvent) -> list[object]:
    return [
        event.event_id,
        event.actor_id or NONE,
        int(event.kind),
        event.space_id or NONE,
        event.document_id or NONE,
        event.occurred_at,
        event.source,
        dict(event.attributes),
    ]


def batch_token(events: Sequence[ActivityEvent]) -> str:
    """The deduplication token of an insert: the same events give the same token."""
    digest = hashlib.sha256()
    for event in events:
        digest.update(event.event_id.encode())
    return digest.hexdigest()


def id_or_empty(value: object) -> str:
    text = str(value)
    return "" if text == NONE else text


# What DateTime64 holds. A bound outside it is the same bound as its edge: no event is earlier
# than 1900 or later than 2299.
EARLIEST, LATEST = datetime(1900, 1, 1, tzinfo=UTC), datetime(2299, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def within_range(moment: datetime) -> datetime:
    return min(max(moment, EARLIEST), LATEST)


def utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class ActivityStore:
    def __init__(self, client: AsyncClient, database: str) -> None:
        self.client = client
        self.database = database

    def table(self, name: str) -> str:
        return f"`{self.database}`.{name}"

    async def select(self, table: str, query: str, parameters: dict[str, object]) -> QueryResult:
        """Run a read as one database span of the caller's trace."""
        with (
            _tracer.start_as_current_span(
                f"SELECT {self.database}.{table}", kind=SpanKind.CLIENT, attributes=database_attributes("SELECT", table)
            ),
            untraced(),
        ):
            return await self.client.query(query, parameters=parameters)

    # -- writing -------------------------------------------------------------------------

    async def recorded_ids(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these event ids are recorded already."""
        if not event_ids:
            return set()
        batch = ExternalData(file_name="batch", data="\n".join(event_ids).encode(), structure=["event_id UUID"])
        with untraced():
            result = await self.client.query(
                f"SELECT toString(event_id) FROM {self.table('event_ids')} WHERE event_id IN batch",
                external_data=batch,
            )
        return {row[0] for row in result.result_rows}

    async def insert(self, events: Sequence[ActivityEvent]) -> None:
        """Insert events (none of them recorded yet) in one insert; the views follow in it."""
        with untraced():
            await self.client.insert(
                self.table("events"),
                [row_of(event) for event in events],
                column_names=EVENT_COLUMNS,
                settings={**DEDUPLICATE, "insert_deduplication_token": batch_token(events)},
            )

    # -- reading -------------------------------------------------------------------------

    async def timeline(
        self,
        actor_id: str,
        start: datetime | None,
        end: datetime | None,
        after: Cursor | None,
        limit: int,
    ) -> list[ActivityEvent]:
        """The actor's events newest first (ties by event id, descending), after the cursor."""
        conditions = ["actor_id = {actor:UUID}"]
        parameters: dict[str, object] = {"actor": actor_id, "limit": limit}
        if start is not None:
            conditions.append("occurred_at >= {start:DateTime64(6, 'UTC')}")
            parameters["start"] = within_range(start)
        if end is not None:
            conditions.append("occurred_at < {end:DateTime64(6, 'UTC')}")
            parameters["end"] = within_range(end)
        if after is not None:
            # The first condition lets the primary key skip what is newer; the second breaks ties.
            conditions.append("occurred_at <= {after_time:DateTime64(6, 'UTC')}")
            conditions.append(
                "(occurred_at, toString(event_id)) < ({after_time:DateTime64(6, 'UTC')}, {after_id:String})"
            )
            parameters |= {"after_time": within_range(after.moment), "after_id": after.key}
        query = (
            "SELECT toString(event_id), kind, toString(actor_id), toString(space_id), toString(document_id), "
            f"occurred_at, attributes, source FROM {self.table('events')} WHERE {' AND '.join(conditions)} "
            "ORDER BY occurred_at DESC, toString(event_id) DESC LIMIT {limit:UInt32}"
        )
        result = await self.select("events", query, parameters)
        return [
            ActivityEvent(
                event_id,
                Kind(kind),
                id_or_empty(actor),
                id_or_empty(space),
                id_or_empty(document),
                utc(occurred_at),
                dict(attributes),
                source,
            )
            for event_id, kind, actor, space, document, occurred_at, attributes, source in result.result_rows
        ]

    async def document_stats(self, space_id: str, document_id: str, since: datetime) -> DocumentStats:
        query = (
            "SELECT countIf(kind = 1 AND occurred_at >= {since:DateTime64(6, 'UTC')}), "
            "uniqExactIf(actor_id, kind = 1 AND occurred_at >= {since:DateTime64(6, 'UTC')}), "
            "countIf(kind = 2 AND occurred_at >= {since:DateTime64(6, 'UTC')}), "
            "countIf(kind = 1), maxIf(occurred_at, kind = 1) "
            f"FROM {self.table('document_events')} "
            "WHERE space_id = {space:UUID} AND kind IN (1, 2) AND document_id = {document:UUID}"
        )
        parameters = {"space": space_id, "document": document_id, "since": since}
        result = await self.select("document_events", query, parameters)
        views, unique_viewers, edits, ever_viewed, last_viewed = result.result_rows[0]
        return DocumentStats(views, unique_viewers, edits, utc(last_viewed) if ever_viewed else None)

    async def top_documents(self, space_id: str, since: datetime, limit: int) -> list[TopDocument]:
        """The most viewed documents not known to be deleted. The ranking is found from view
        counts alone; unique viewers (the costlier count) only for the documents ranked."""
        views_in_window = (
            f"FROM {self.table('document_events')} "
            "WHERE space_id = {space:UUID} AND kind = 1 AND occurred_at >= {since:DateTime64(6, 'UTC')}"
        )
        query = (
            "SELECT toString(document_id) AS id, count() AS views, uniqExact(actor_id) "
            f"{views_in_window} AND document_id IN ("
            f"  SELECT document_id {views_in_window} AND document_id NOT IN ("
            f"    SELECT document_id FROM {self.table('deleted_documents')} WHERE space_id = {{space:UUID}})"
            "  GROUP BY document_id ORDER BY count() DESC, toString(document_id) LIMIT {limit:UInt32}) "
            "GROUP BY document_id ORDER BY views DESC, id"
        )
        parameters = {"space": space_id, "since": since, "limit": limit}
        result = await self.select("document_events", query, parameters)
        return [TopDocument(document_id, views, unique) for document_id, views, unique in result.result_rows]
