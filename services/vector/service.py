"""Vector use cases: search as the caller, reindex a space, report the index's state."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from opentelemetry import trace

from services.kit.access import AccessCache
from services.kit.auth import Principal
from services.kit.errors import PermissionDenied
from services.kit.ids import parse_id
from services.vector.chunking import snippet
from services.vector.domain import clip_snippet, search_query, searchable_spaces
from services.vector.embeddings import Embedder
from services.vector.index import ChunkIndex, Hit, IndexStats
from services.vector.indexing import FreshnessSummary, Indexer, document_text
from services.vector.reindexing import ReindexQueue

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
        self,
        index: ChunkIndex,
        embedder: Embedder,
        access: AccessCache,
        indexer: Indexer,
        source: SpaceSource,
        reindex_per_caller: int = 2,
    ) -> None:
        self.index = index
        self.embedder = embedder
        self.access = access
        self.indexer = indexer
        self.source = source
        self.reindexing = ReindexQueue(self._reindex_document, per_caller=reindex_per_caller)

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
        """Queue every current document of the space for re-embedding; returns how many. A
        space already queued is not queued twice (see services.vector.reindexing)."""
        space_id = parse_id(space_id, "space_id")
        if not await self.source.may_edit(caller.user_id, space_id):
            raise PermissionDenied(f"reindexing space {space_id} needs the editor role or higher in it")
        job = self.reindexing.queued(space_id)
        if job is None:
            self.reindexing.check_caller(caller)
            job = self.reindexing.submit(space_id, caller, await self.source.document_ids(space_id))
        return len(job.document_ids)

    async def _reindex_document(self, space_id: str, document_id: str) -> None:
        """One document of a reindex job, read as the caller who asked for it."""
        document = await self.source.document(space_id, document_id)
        if document is None:
            return  # deleted meanwhile: its deletion event removes its chunks
        await self.indexer.index_version(
            space_id,
            document.document_id,
            document.version,
            document_text(document.title, document.content),
            datetime.now(UTC),
            again=True,
        )

    async def stats(self) -> tuple[IndexStats, FreshnessSummary]:
        return await self.index.stats(), self.indexer.freshness.summary()
