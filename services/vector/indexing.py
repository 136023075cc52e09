"""Keeping the index in step with the knowledge service's events.

Document created/updated: chunk the title and content, embed the chunks, replace the
document's chunks with them — unless the index already holds a newer version (events of one
space arrive in order, but a redelivery or a reindex can bring an older one). Document deleted:
drop its chunks (again unless a newer version is indexed). Membership changed: the user's
cached access is dropped, so their next search asks the knowledge service again.

Freshness — from the document's commit (the event's occurred_at) to its chunks being
searchable — is measured for every indexed version, kept as a rolling window for GetIndexStats
and the benchmarks, and set on the span.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

from opentelemetry import trace

from services.api.events.v1 import events_pb2
from services.kit.access import AccessCache
from services.kit.consumer import EventHandler, PermanentEventError
from services.kit.events import EventEnvelope
from services.vector.chunking import chunk_text
from services.vector.embeddings import Embedder
from services.vector.index import ChunkIndex, IndexedChunk

DOCUMENT_WRITTEN = ("knowledge.document.created", "knowledge.document.updated")
DOCUMENT_DELETED = "knowledge.document.deleted"
_tracer = trace.get_tracer("services.vector.indexing")

MEMBERSHIP_CHANGED = ("knowledge.member.added", "knowledge.member.role_changed", "knowledge.member.removed")


@dataclass(frozen=True)
class FreshnessSummary:
    samples: int
    p50_ms: float
    p99_ms: float
    last_indexed_at: datetime | None


class Freshness:
    """Commit → searchable delays of the last `window` indexed versions."""

    def __init__(self, window: int = 10_000) -> None:
        self.delays_ms: deque[float] = deque(maxlen=window)
        self.last_indexed_at: datetime | None = None

    def record(self, committed_at: datetime, indexed_at: datetime) -> float:
        delay_ms = max(0.0, (indexed_at - committed_at).total_seconds() * 1000)
        self.delays_ms.append(delay_ms)
        self.last_indexed_at = indexed_at
        return delay_ms

    def summary(self) -> FreshnessSummary:
        delays = sorted(self.delays_ms)
        if not delays:
            return FreshnessSummary(0, 0.0, 0.0, self.last_indexed_at)
        p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
        return FreshnessSummary(len(delays), statistics.median(delays), p99, self.last_indexed_at)


def document_text(title: str, content: str) -> str:
    """What gets chunked: the title leads, so a search for it finds the document."""
    return f"{title}\n\n{content}" if content.strip() else title


class Indexer:
    def __init__(self, index: ChunkIndex, embedder: Embedder, access: AccessCache) -> None:
        self.index = index
        self.embedder = embedder
        self.access = access
        self.freshness = Freshness()

    def handlers(self) -> dict[str, EventHandler]:
        handlers: dict[str, EventHandler] = {name: self.document_written for name in DOCUMENT_WRITTEN}
        handlers[DOCUMENT_DELETED] = self.document_deleted
        handlers.update({name: self.membership_changed for name in MEMBERSHIP_CHANGED})
        return handlers

    async def document_written(self, envelope: EventEnvelope) -> None:
        event = decode_document(envelope)
        if event.version < 1 or not event.document_id or not event.space_id:
            raise PermanentEventError(f"{envelope.event_type} without a document id, space id or version ≥ 1")
        await self.index_version(
            event.space_id,
            event.document_id,
            event.version,
            document_text(event.title, event.content),
            envelope.occurred_at.ToDatetime(tzinfo=UTC),
        )

    async def index_version(
        self, space_id: str, document_id: str, version: int, text: str, committed_at: datetime, *, again: bool = False
    ) -> bool:
        """Embed and index one document version; False when it is already there (unless asked
        to index it `again`, as a reindex does) or a newer version is."""
        span = trace.get_current_span()
        known = await self.index.indexed_version(document_id)
        if known is not None and (known > version or (known == version and not again)):
            span.set_attribute("index.skipped", f"version {version}; the index holds {known}")
            return False
        chunks = chunk_text(text)
        with _tracer.start_as_current_span("embed chunks", attributes={"embedding.model": self.embedder.name}):
            vectors = await self.embedder.embed([chunk.text for chunk in chunks])
        indexed = [IndexedChunk(chunk.index, chunk.text, vector) for chunk, vector in zip(chunks, vectors, strict=True)]
        with _tracer.start_as_current_span("index upsert", attributes={"index.document_id": document_id}):
            applied = await self.index.upsert_document(space_id, document_id, version, indexed)
        if applied:
            delay_ms = self.freshness.record(committed_at, datetime.now(UTC))
            span.set_attributes({"index.chunks": len(indexed), "index.freshness_ms": round(delay_ms, 1)})
        return applied

    async def document_deleted(self, envelope: EventEnvelope) -> None:
        event = events_pb2.DocumentDeleted.FromString(envelope.payload)
        if not event.document_id or not event.space_id:
            raise PermanentEventError("knowledge.document.deleted without a document or space id")
        await self.index.delete_document(event.space_id, event.document_id, event.version)

    async def membership_changed(self, envelope: EventEnvelope) -> None:
        user_id = envelope.subject_ids.get("user_id")
        if not user_id:
            raise PermanentEventError(f"{envelope.event_type} without a user_id subject")
        self.access.forget(user_id)


def decode_document(envelope: EventEnvelope) -> events_pb2.DocumentCreated | events_pb2.DocumentUpdated:
    kind = events_pb2.DocumentCreated if envelope.event_type.endswith("created") else events_pb2.DocumentUpdated
    try:
        return kind.FromString(envelope.payload)
    except Exception as error:
        raise PermanentEventError(f"{envelope.event_type} payload does not decode: {error}") from error
