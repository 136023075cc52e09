"""Vector use cases: search as the caller, reindex a space, report the index's state."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from opentelemetry import trace

from services.kit.auth import Principal
from services.kit.errors import PermissionDenied
from services.kit.ids import parse_id
from services.kit.server import set_deadline_in
from services.vector.access import AccessCache
from services.vector.chunking import snippet
from services.vector.domain import clip_snippet, search_query, searchable_spaces
from services.vector.embeddings import Embedder
from services.vector.index import ChunkIndex, Hit, IndexStats
from services.vector.indexing import FreshnessSummary, Indexer, document_text

log = logging.getLogger("services.vector")
_tracer = trace.get_tracer("services.vector.search")


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    snippets: list[str]
    took_ms: int


@dataclass(frozen=True)
class CurrentDocument:
    document_id: str
    version: int
    title: str
    content: str


@dataclass(frozen=True)
class SpaceSource:
    """What a reindex needs from the knowledge service, asked as the caller."""

    may_edit: Callable[[str, str], Awaitable[bool]]  # (user_id, space_id) → editor or owner?
    document_ids: Callable[[str], Awaitable[list[str]]]  # space_id → its live documents
    document: Callable[[str, str], Awaitable[CurrentDocument | None]]  # (space_id, document_id) → content


class VectorService:
    def __init__(
        self, index: ChunkIndex, embedder: Embedder, access: AccessCache, indexer: Indexer, source: SpaceSource
    ) -> None:
        self.index = index
        self.embedder = embedder
        self.access = access
        self.indexer = indexer
        self.source = source
        self._reindexing: set[asyncio.Task[None]] = set()

    async def search(self, caller: Principal, text: str, top_k: int, space_ids: list[str]) -> SearchResult:
        began = time.monotonic()
        query = search_query(text, top_k, space_ids)
        spaces = searchable_spaces(query.space_ids, await self.access.readable(caller.user_id))
        hits: list[Hit] = []
        if spaces:
            with _tracer.start_as_current_span("embed query", attributes={"embedding.model": self.embedder.name}):
                [vector] = await self.embedder.embed([query.text])
            with _tracer.start_as_current_span("index search", attributes={"index.spaces": len(spaces)}):
                hits = await self.index.search(vector, query.top_k, spaces)
        snippets = [clip_snippet(snippet(hit.text, query.text)) for hit in hits]
        return SearchResult(hits, snippets, int((time.monotonic() - began) * 1000))

    async def reindex_space(self, caller: Principal, space_id: str) -> int:
        """Queue every current document of the space for re-embedding; returns how many."""
        space_id = parse_id(space_id, "space_id")
        if not await self.source.may_edit(caller.user_id, space_id):
            raise PermissionDenied(f"reindexing space {space_id} needs the editor role or higher in it")
        document_ids = await self.source.document_ids(space_id)
        task = asyncio.create_task(self._reindex(space_id, document_ids))
        self._reindexing.add(task)
        task.add_done_callback(self._reindexing.discard)
        return len(document_ids)

    async def _reindex(self, space_id: str, document_ids: list[str]) -> None:
        """In the background, still as the caller (the task copies the call's context)."""
        set_deadline_in(None)  # it outlives the RPC that queued it
        for document_id in document_ids:
            try:
                document = await self.source.document(space_id, document_id)
                if document is None:
                    continue  # deleted meanwhile: its deletion event removes its chunks
                await self.indexer.index_version(
                    space_id,
                    document.document_id,
                    document.version,
                    document_text(document.title, document.content),
                    datetime.now(UTC),
                    again=True,
                )
            except Exception:
                log.exception("reindexing document %s of space %s failed", document_id, space_id)

    async def stats(self) -> tuple[IndexStats, FreshnessSummary]:
        return await self.index.stats(), self.indexer.freshness.summary()

    async def close(self) -> None:
        for task in list(self._reindexing):
            task.cancel()
        await asyncio.gather(*self._reindexing, return_exceptions=True)
