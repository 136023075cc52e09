"""The chunk index of the vector service: versioned documents' chunks and permission-filtered search.

One interface, :class:`ChunkIndex`, and two engines behind it:

- :class:`EdgeIndex` runs Qdrant's own Rust engine in-process (``qdrant-edge-py``): HNSW, payload
  indexes and a write-ahead log under a data directory. It is the default, with no server to run.
- :class:`QdrantServerIndex` talks to a Qdrant server through ``qdrant-client``'s async client;
  it is used when a Qdrant URL is configured (:func:`open_chunk_index`).

What both guarantee:

- **Only the latest version of a document is searchable.** ``upsert_document`` replaces every
  chunk of the document; an event for an older version than the one indexed is ignored (the
  call returns False), so events may arrive late, twice or out of order. The same version again
  is applied (a reindex rewrites it).
- **A deletion is remembered.** ``delete_document`` leaves a tombstone holding the deleted version,
  so a late upsert of that version or an older one cannot bring the document back; only a newer
  version can. ``delete_space`` tombstones every document of the space the same way.
- **Search never leaks.** Only chunks whose ``space_id`` is among the caller's ``space_ids`` are
  candidates (a filter inside the engine, on a payload index); no spaces means no results.
  ``Hit.score`` is the cosine similarity of the query and the chunk, best first, ties broken by
  document id then chunk index.

Which version of each document is indexed (or deleted) is kept in a second small collection of
the same engine, one record per document, so it survives restarts with the chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import qdrant_edge as qe
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.conversions.common_types import PointId

# Point ids are UUIDs derived from names in this namespace, so the same chunk of the same
# document version always lands on the same point (a re-applied event overwrites, never adds).
_POINT_NAMESPACE: Final = uuid.UUID("5b0c6f1e-3d4a-5e8f-9a1b-2c3d4e5f6a7b")

# Payload keys of a chunk point.
SPACE_ID: Final = "space_id"
DOCUMENT_ID: Final = "document_id"
VERSION: Final = "version"
CHUNK_INDEX: Final = "chunk_index"
TEXT: Final = "text"
# Payload keys of a document record (besides space_id, document_id and version).
DELETED: Final = "deleted"
CHUNK_COUNT: Final = "chunk_count"
INDEXED_AT: Final = "indexed_at"

# Edge: build HNSW for new points (and vacuum deleted ones) once this many chunks were written
# or deleted since the last optimisation, at open (see EdgeIndex for why not while serving).
DEFAULT_OPTIMIZE_AFTER: Final = 20_000


@dataclass(frozen=True, slots=True)
class IndexedChunk:
    """One chunk of a document version, embedded, ready to be indexed."""

    chunk_index: int
    text: str
    vector: Sequence[float]


@dataclass(frozen=True, slots=True)
class Hit:
    """One chunk that matched a search."""

    space_id: str
    document_id: str
    version: int
    chunk_index: int
    text: str
    score: float
    """Cosine similarity between the query vector and the chunk's vector, in [-1, 1]."""


@dataclass(frozen=True, slots=True)
class IndexStats:
    """Counts over the whole index."""

    chunk_count: int
    document_count: int
    """Documents with at least one chunk indexed."""
    space_count: int
    """Spaces with at least one chunk indexed."""
    last_indexed_at: datetime | None
    """When the most recently written document still indexed was written; None when empty."""


def unix_now() -> float:
    """Now as Unix time, to the microsecond: what a datetime holds, so a time read back from the
    index's storage gives the same datetime as the one kept in memory."""
    return round(time.time(), 6)


@dataclass(frozen=True, slots=True)
class DocumentRecord:
    """What the index knows about one document: its version, and whether that version deleted it."""

    document_id: str
    space_id: str
    version: int
    deleted: bool
    chunk_count: int
    indexed_at: float
    """Unix time of the write (the upsert or the deletion)."""

    def payload(self) -> dict[str, Any]:
        return {
            DOCUMENT_ID: self.document_id,
            SPACE_ID: self.space_id,
            VERSION: self.version,
            DELETED: self.deleted,
            CHUNK_COUNT: self.chunk_count,
            INDEXED_AT: self.indexed_at,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> DocumentRecord:
        return cls(
            document_id=str(payload[DOCUMENT_ID]),
            space_id=str(payload[SPACE_ID]),
            version=int(payload[VERSION]),
            deleted=bool(payload[DELETED]),
            chunk_count=int(payload[CHUNK_COUNT]),
            indexed_at=float(payload[INDEXED_AT]),
        )

    @property
    def live(self) -> bool:
        """Whether this document has chunks in the index."""
        return not self.deleted and self.chunk_count > 0


def upsert_applies(record: DocumentRecord | None, version: int) -> bool:
    """Whether an upsert of ``version`` replaces what ``record`` says is indexed.

    The same version is applied again (a reindex or a redelivered event rewrites identical
    chunks), except over its own deletion: a deletion at version v outranks an upsert at v.
    """
    if record is None:
        return True
    return version > record.version if record.deleted else version >= record.version


def delete_applies(record: DocumentRecord | None, version: int) -> bool:
    """Whether a deletion at ``version`` removes what ``record`` says is indexed (not a newer one)."""
    return record is None or version >= record.version


@runtime_checkable
class ChunkIndex(Protocol):
    """The vector service's index of document chunks. See the module docstring for guarantees."""

    dimensions: int

    async def upsert_document(
        self, space_id: str, document_id: str, version: int, chunks: Sequence[IndexedChunk]
    ) -> bool:
        """Make ``chunks`` the document's only chunks, unless a newer version is indexed or it
        was deleted at this version or later. Returns whether it was applied."""
        ...

    async def delete_document(self, space_id: str, document_id: str, version: int) -> bool:
        """Remove the document's chunks unless a newer version is indexed; returns whether applied."""
        ...

    async def delete_space(self, space_id: str) -> int:
        """Remove every chunk of the space; returns how many documents lost their chunks."""
        ...

    async def search(self, vector: Sequence[float], top_k: int, space_ids: Sequence[str]) -> list[Hit]:
        """The ``top_k`` chunks most similar to ``vector`` among the given spaces, best first."""
        ...

    async def stats(self) -> IndexStats:
        """Chunk, document and space counts over the whole index."""
        ...

    async def indexed_version(self, document_id: str) -> int | None:
        """The document version the index holds (with its chunks, none for an empty document);
        None if the document is unknown or deleted."""
        ...

    async def close(self) -> None:
        """Release the engine (flush to disk, close connections). The index is unusable after."""
        ...


def chunk_point_id(document_id: str, version: int, chunk_index: int) -> str:
    return str(uuid.uuid5(_POINT_NAMESPACE, f"chunk/{document_id}/{version}/{chunk_index}"))


def document_point_id(document_id: str) -> str:
    return str(uuid.uuid5(_POINT_NAMESPACE, f"document/{document_id}"))


def _check_version(version: int) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be an integer ≥ 1, got {version!r}")


def _check_chunks(chunks: Sequence[IndexedChunk], dimensions: int) -> None:
    seen: set[int] = set()
    for chunk in chunks:
        if chunk.chunk_index < 0 or chunk.chunk_index in seen:
            raise ValueError(f"chunk_index values must be distinct and ≥ 0, got {chunk.chunk_index} again")
        seen.add(chunk.chunk_index)
        if len(chunk.vector) != dimensions:
            raise ValueError(
                f"chunk {chunk.chunk_index} has a {len(chunk.vector)}-d vector, the index holds {dimensions}-d"
            )


def _check_query(vector: Sequence[float], top_k: int, dimensions: int) -> None:
    if top_k < 1:
        raise ValueError(f"top_k must be ≥ 1, got {top_k}")
    if len(vector) != dimensions:
        raise ValueError(f"the query vector is {len(vector)}-d, the index holds {dimensions}-d")


def _hit(payload: dict[str, Any], score: float) -> Hit:
    return Hit(
        space_id=str(payload[SPACE_ID]),
        document_id=str(payload[DOCUMENT_ID]),
        version=int(payload[VERSION]),
        chunk_index=int(payload[CHUNK_INDEX]),
        text=str(payload[TEXT]),
        # The engines compute cosine in float32; clamp the rounding that can step past ±1.
        score=min(1.0, max(-1.0, float(score))),
    )


def _ranked(hits: list[Hit]) -> list[Hit]:
    return sorted(hits, key=lambda h: (-h.score, h.document_id, h.chunk_index))


def _chunk_payload(space_id: str, document_id: str, version: int, chunk: IndexedChunk) -> dict[str, Any]:
    return {
        SPACE_ID: space_id,
        DOCUMENT_ID: document_id,
        VERSION: version,
        CHUNK_INDEX: chunk.chunk_index,
        TEXT: chunk.text,
    }


class _VersionedIndex(ABC):
    """The version rules of :class:`ChunkIndex` over an engine's primitive operations.

    One write at a time per index: the version check and the write it allows must not interleave
    with another write of the same document. (Across processes sharing one Qdrant server, the
    event stream's per-document ordering keeps two writers off one document.)
    """

    def __init__(self, dimensions: int) -> None:
        if dimensions < 1:
            raise ValueError(f"dimensions must be ≥ 1, got {dimensions}")
        self.dimensions = dimensions
        self._write_lock = asyncio.Lock()

    async def upsert_document(
        self, space_id: str, document_id: str, version: int, chunks: Sequence[IndexedChunk]
    ) -> bool:
        _check_version(version)
        _check_chunks(chunks, self.dimensions)
        async with self._write_lock:
            record = await self._get_record(document_id)
            if not upsert_applies(record, version):
                return False
            new = DocumentRecord(document_id, space_id, version, False, len(chunks), unix_now())
            await self._replace_chunks(record, new, chunks)
            await self._put_records([new])
            self._record_changed(record, new)
            return True

    async def delete_document(self, space_id: str, document_id: str, version: int) -> bool:
        _check_version(version)
        async with self._write_lock:
            record = await self._get_record(document_id)
            if not delete_applies(record, version):
                return False
            if record is not None and record.chunk_count:
                await self._remove_document_chunks(record)
            tombstone = DocumentRecord(document_id, space_id, version, True, 0, unix_now())
            await self._put_records([tombstone])
            self._record_changed(record, tombstone)
            return True

    async def delete_space(self, space_id: str) -> int:
        async with self._write_lock:
            records = [r for r in await self._space_records(space_id) if r.live]
            await self._remove_space_chunks(space_id)
            now = unix_now()
            tombstones = [DocumentRecord(r.document_id, r.space_id, r.version, True, 0, now) for r in records]
            await self._put_records(tombstones)
            for old, new in zip(records, tombstones, strict=True):
                self._record_changed(old, new)
            return len(records)

    async def indexed_version(self, document_id: str) -> int | None:
        record = await self._get_record(document_id)
        return record.version if record is not None and not record.deleted else None

    def _record_changed(self, old: DocumentRecord | None, new: DocumentRecord) -> None:
        """Hook for engines that keep derived state (counts) beside the records."""

    @abstractmethod
    async def _get_record(self, document_id: str) -> DocumentRecord | None: ...

    @abstractmethod
    async def _put_records(self, records: Sequence[DocumentRecord]) -> None: ...

    @abstractmethod
    async def _space_records(self, space_id: str) -> list[DocumentRecord]: ...

    @abstractmethod
    async def _replace_chunks(
        self, old: DocumentRecord | None, new: DocumentRecord, chunks: Sequence[IndexedChunk]
    ) -> None: ...

    @abstractmethod
    async def _remove_document_chunks(self, record: DocumentRecord) -> None: ...

    @abstractmethod
    async def _remove_space_chunks(self, space_id: str) -> None: ...


# --------------------------------------------------------------------------------------------
# qdrant-edge: in-process
# --------------------------------------------------------------------------------------------


# ACORN: when a filter is too broad for the payload index alone (many large spaces), the HNSW
# walk also explores neighbours of filtered-out nodes. At 100k chunks and a 100-space filter
# (a third of the points) it takes recall@10 from 0.85 to 1.0 for ~0.3 ms (measured); narrow
# filters are answered from the payload index and are unaffected.
_EDGE_SEARCH_PARAMS: Final = qe.SearchParams(acorn=qe.AcornSearchParams(enable=True))


def _edge_match(key: str, value: str) -> qe.FieldCondition:
    return qe.FieldCondition(key=key, match=qe.MatchValue(value))


class EdgeIndex(_VersionedIndex):
    """:class:`ChunkIndex` on qdrant-edge (Qdrant's engine in-process), persisted under a directory.

    ``data_dir/chunks`` holds one point per chunk (cosine, ``dimensions``-d) with keyword payload
    indexes on ``space_id`` and ``document_id``, created right when the shard is created so every
    segment, and every HNSW graph built later, has them: a filtered search then selects the
    caller's spaces through the index (exact scores, recall 1.0) instead of walking a graph that
    knows nothing of spaces (recall collapses to ~0.2 that way). ``data_dir/documents`` holds the
    document records. One process per directory (the engine locks its write-ahead log).

    qdrant-edge 0.9 holds the GIL in every call (measured: another thread gets no turn), so a
    worker thread would free nothing: calls run on the event loop thread. A search is ~0.1-0.5 ms
    and writes go at ~20k chunks/s, so the loop is held briefly. It also makes a document's
    replacement atomic for searches in this process: nothing runs between deleting its old
    chunks and writing the new ones.

    When to optimise. The engine has no background optimiser: new points go to a plain segment,
    and deleted ones stay until vacuumed. That is fine for the common search: a filter on a few
    spaces is answered from the payload index with exact scores (0.4 ms, recall 1.0 at 100k
    chunks, with or without HNSW). HNSW pays off for filters over many large spaces (100 of 300
    spaces at 100k chunks: 6-8 ms scanning, 1.5 ms with HNSW and ACORN, both recall 1.0).
    ``optimize()`` builds it and vacuums, but blocks the whole process meanwhile: 2-4 s at 10k
    chunks, 15-50 s at 100k on two shared cores. So it runs at ``open``, before serving, when at
    least ``optimize_after`` chunks changed since the last optimisation; after a bulk reindex
    the caller may call it; and while serving only if ``optimize_idle_seconds`` is set, once that
    many changes accumulated and the index saw no call for that long (a search arriving during
    the optimisation then waits for it, which is why this is off by default).
    """

    def __init__(
        self,
        chunks: qe.EdgeShard,
        documents: qe.EdgeShard,
        *,
        dimensions: int,
        optimize_after: int | None,
        optimize_idle_seconds: float | None,
    ) -> None:
        super().__init__(dimensions)
        self._chunks = chunks
        self._documents = documents
        self._optimize_after = optimize_after
        self._optimize_idle_seconds = optimize_idle_seconds
        self._records: dict[str, DocumentRecord] = {}
        self._space_documents: Counter[str] = Counter()
        self._pending_changes = 0
        self._last_activity = time.monotonic()
        self._optimizer: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        data_dir: str | Path,
        *,
        dimensions: int,
        optimize_after: int | None = DEFAULT_OPTIMIZE_AFTER,
        optimize_idle_seconds: float | None = None,
    ) -> EdgeIndex:
        """Open the index under ``data_dir``, creating it if empty.

        Raises ValueError if it holds vectors of other dimensions (another embedding model):
        such an index must be rebuilt, not mixed.
        """
        root = Path(data_dir)
        chunks = _open_shard(root / "chunks", dimensions, qe.Distance.Cosine, (SPACE_ID, DOCUMENT_ID))
        try:
            documents = _open_shard(root / "documents", 1, qe.Distance.Dot, ())
        except BaseException:
            chunks.close()
            raise
        index = cls(
            chunks,
            documents,
            dimensions=dimensions,
            optimize_after=optimize_after,
            optimize_idle_seconds=optimize_idle_seconds,
        )
        try:
            index._load_records()
            info = chunks.info()
            index._pending_changes = max(info.points_count - info.indexed_vectors_count, 0)
            if optimize_after is not None and index._pending_changes >= optimize_after:
                await index.optimize()
        except BaseException:
            await index.close()
            raise
        return index

    def _load_records(self) -> None:
        offset: qe.PointId | None = None
        while True:
            records, offset = self._documents.scroll(qe.ScrollRequest(offset=offset, limit=1000, with_payload=True))
            for point in records:
                if point.payload is not None:
                    record = DocumentRecord.from_payload(point.payload)
                    self._records[record.document_id] = record
                    if record.live:
                        self._space_documents[record.space_id] += 1
            if offset is None:
                return

    # -- reads -----------------------------------------------------------------------------

    async def search(self, vector: Sequence[float], top_k: int, space_ids: Sequence[str]) -> list[Hit]:
        _check_query(vector, top_k, self.dimensions)
        spaces = list(dict.fromkeys(space_ids))
        if not spaces:
            return []
        self._last_activity = time.monotonic()
        request = qe.QueryRequest(
            limit=top_k,
            query=qe.Query.Nearest(list(vector)),
            filter=qe.Filter(must=[qe.FieldCondition(key=SPACE_ID, match=qe.MatchAny(spaces))]),
            params=_EDGE_SEARCH_PARAMS,
            with_payload=True,
        )
        points = self._chunks.query(request)
        return _ranked([_hit(p.payload, p.score) for p in points if p.payload is not None])

    async def stats(self) -> IndexStats:
        live = [r for r in self._records.values() if r.live]
        chunk_count = self._chunks.count(qe.CountRequest(exact=True))
        last = max((r.indexed_at for r in live), default=None)
        return IndexStats(
            chunk_count=chunk_count,
            document_count=len(live),
            space_count=len(self._space_documents),
            last_indexed_at=datetime.fromtimestamp(last, UTC) if last is not None and chunk_count else None,
        )

    async def _get_record(self, document_id: str) -> DocumentRecord | None:
        return self._records.get(document_id)

    async def _space_records(self, space_id: str) -> list[DocumentRecord]:
        return [r for r in self._records.values() if r.space_id == space_id]

    # -- writes ----------------------------------------------------------------------------

    async def _replace_chunks(
        self, old: DocumentRecord | None, new: DocumentRecord, chunks: Sequence[IndexedChunk]
    ) -> None:
        # Points are built before the old chunks go, so the gap between the two updates is only
        # the engine's own work; no await separates them, so no search sees the gap.
        points = [
            qe.Point(
                id=chunk_point_id(new.document_id, new.version, c.chunk_index),
                vector=[float(x) for x in c.vector],
                payload=_chunk_payload(new.space_id, new.document_id, new.version, c),
            )
            for c in chunks
        ]
        if old is not None and old.chunk_count:
            self._chunks.update(
                qe.UpdateOperation.delete_points_by_filter(qe.Filter(must=[_edge_match(DOCUMENT_ID, new.document_id)]))
            )
        if points:
            self._chunks.update(qe.UpdateOperation.upsert_points(points))
        self._changed((old.chunk_count if old else 0) + len(points))

    async def _remove_document_chunks(self, record: DocumentRecord) -> None:
        self._chunks.update(
            qe.UpdateOperation.delete_points_by_filter(qe.Filter(must=[_edge_match(DOCUMENT_ID, record.document_id)]))
        )
        self._changed(record.chunk_count)

    async def _remove_space_chunks(self, space_id: str) -> None:
        removed = self._chunks.count(
            qe.CountRequest(exact=True, filter=qe.Filter(must=[_edge_match(SPACE_ID, space_id)]))
        )
        self._chunks.update(
            qe.UpdateOperation.delete_points_by_filter(qe.Filter(must=[_edge_match(SPACE_ID, space_id)]))
        )
        self._changed(removed)

    async def _put_records(self, records: Sequence[DocumentRecord]) -> None:
        if records:
            points = [qe.Point(id=document_point_id(r.document_id), vector=[1.0], payload=r.payload()) for r in records]
            self._documents.update(qe.UpdateOperation.upsert_points(points))

    def _record_changed(self, old: DocumentRecord | None, new: DocumentRecord) -> None:
        self._records[new.document_id] = new
        if old is not None and old.live:
            self._space_documents[old.space_id] -= 1
            if not self._space_documents[old.space_id]:
                del self._space_documents[old.space_id]
        if new.live:
            self._space_documents[new.space_id] += 1

    # -- optimisation ----------------------------------------------------------------------

    def _changed(self, points: int) -> None:
        self._pending_changes += points
        self._last_activity = time.monotonic()
        if (
            self._optimize_after is not None
            and self._optimize_idle_seconds is not None
            and self._pending_changes >= self._optimize_after
            and self._optimizer is None
            and not self._closed
        ):
            self._optimizer = asyncio.get_running_loop().create_task(self._optimize_when_idle())

    async def _optimize_when_idle(self) -> None:
        idle_seconds = self._optimize_idle_seconds or 0.0
        try:
            while True:
                quiet_for = time.monotonic() - self._last_activity
                if quiet_for >= idle_seconds:
                    break
                await asyncio.sleep(idle_seconds - quiet_for)
            await self.optimize()
        finally:
            self._optimizer = None

    async def optimize(self) -> bool:
        """Build HNSW for un-indexed points and vacuum deleted ones; True if anything changed.

        Blocks the process while it runs (the engine holds the GIL): call it when idle.
        """
        async with self._write_lock:
            if self._closed:
                return False
            changed = self._chunks.optimize()
            self._documents.optimize()
            self._pending_changes = 0
            return changed

    async def close(self) -> None:
        if self._closed:
            return
        if self._optimizer is not None:
            self._optimizer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._optimizer
        async with self._write_lock:
            self._closed = True
            for shard in (self._chunks, self._documents):
                shard.flush()
                shard.close()


def _open_shard(path: Path, size: int, distance: qe.Distance, keyword_fields: Sequence[str]) -> qe.EdgeShard:
    config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=size, distance=distance))
    if (path / "segments").is_dir():
        try:
            return qe.EdgeShard.load(str(path), config)
        except Exception as exc:
            if "Incompatible" in str(exc):
                raise ValueError(f"{path} holds an index of other vectors: {exc}; rebuild it (reindex)") from exc
            raise
    shard = qe.EdgeShard.create(str(path), config)
    # Payload indexes before the first point: every segment and HNSW graph is built with them.
    for field in keyword_fields:
        shard.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword))
    return shard


# --------------------------------------------------------------------------------------------
# Qdrant server: qdrant-client
# --------------------------------------------------------------------------------------------


# The same recall guard as on the edge engine (see _EDGE_SEARCH_PARAMS).
_SERVER_SEARCH_PARAMS: Final = models.SearchParams(acorn=models.AcornSearchParams(enable=True))


def _match(key: str, value: str) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


_LIVE_RECORDS: Final = models.Filter(
    must=[
        models.FieldCondition(key=DELETED, match=models.MatchValue(value=False)),
        models.FieldCondition(key=CHUNK_COUNT, range=models.Range(gt=0)),
    ]
)


class QdrantServerIndex(_VersionedIndex):
    """:class:`ChunkIndex` on a Qdrant server, through ``qdrant-client``'s async client.

    Two collections: ``<prefix>chunks`` (one point per chunk, cosine; keyword indexes on
    ``space_id``, marked as the tenant key, and ``document_id``) and ``<prefix>documents`` (the
    document records). A document's new chunks are written before its old version's chunks are
    deleted, so a concurrent search may briefly see both versions but never neither. The server
    builds HNSW and vacuums in the background; nothing to schedule here.
    """

    def __init__(self, client: AsyncQdrantClient, *, dimensions: int, prefix: str, owns_client: bool) -> None:
        super().__init__(dimensions)
        self._client = client
        self._owns_client = owns_client
        self.chunks_collection = f"{prefix}chunks"
        self.documents_collection = f"{prefix}documents"

    @classmethod
    async def connect(
        cls,
        client: AsyncQdrantClient | str,
        *,
        dimensions: int,
        prefix: str = "vector_",
    ) -> QdrantServerIndex:
        """Use ``client`` (or a new one for a URL), creating the collections if missing.

        Raises ValueError if the chunks collection holds vectors of other dimensions.
        """
        owns = isinstance(client, str)
        qdrant = AsyncQdrantClient(url=client) if isinstance(client, str) else client
        index = cls(qdrant, dimensions=dimensions, prefix=prefix, owns_client=owns)
        try:
            await index._ensure_collections()
        except BaseException:
            if owns:
                await qdrant.close()
            raise
        return index

    async def _ensure_collections(self) -> None:
        client = self._client
        if await client.collection_exists(self.chunks_collection):
            info = await client.get_collection(self.chunks_collection)
            params = info.config.params.vectors
            size = params.size if isinstance(params, models.VectorParams) else None
            if size != self.dimensions:
                raise ValueError(
                    f"collection {self.chunks_collection} holds {size}-d vectors, not {self.dimensions}-d;"
                    " rebuild it (reindex) or use another prefix"
                )
        else:
            await client.create_collection(
                self.chunks_collection,
                vectors_config=models.VectorParams(size=self.dimensions, distance=models.Distance.COSINE),
            )
            # Right after creation, before any point, as with the edge engine (see EdgeIndex).
            await client.create_payload_index(
                self.chunks_collection,
                SPACE_ID,
                models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
            )
            await client.create_payload_index(self.chunks_collection, DOCUMENT_ID, models.PayloadSchemaType.KEYWORD)
        if not await client.collection_exists(self.documents_collection):
            await client.create_collection(
                self.documents_collection,
                vectors_config=models.VectorParams(size=1, distance=models.Distance.DOT),
            )
            # space_id for facets and space deletion, chunk_count and deleted to select live
            # records, indexed_at because ordering by a field needs a range index on a server.
            await client.create_payload_index(self.documents_collection, SPACE_ID, models.PayloadSchemaType.KEYWORD)
            await client.create_payload_index(self.documents_collection, DELETED, models.PayloadSchemaType.BOOL)
            await client.create_payload_index(self.documents_collection, CHUNK_COUNT, models.PayloadSchemaType.INTEGER)
            await client.create_payload_index(self.documents_collection, INDEXED_AT, models.PayloadSchemaType.FLOAT)

    # -- reads -----------------------------------------------------------------------------

    async def search(self, vector: Sequence[float], top_k: int, space_ids: Sequence[str]) -> list[Hit]:
        _check_query(vector, top_k, self.dimensions)
        spaces = list(dict.fromkeys(space_ids))
        if not spaces:
            return []
        response = await self._client.query_points(
            self.chunks_collection,
            query=list(vector),
            limit=top_k,
            query_filter=models.Filter(must=[models.FieldCondition(key=SPACE_ID, match=models.MatchAny(any=spaces))]),
            search_params=_SERVER_SEARCH_PARAMS,
            with_payload=True,
        )
        return _ranked([_hit(p.payload, p.score) for p in response.points if p.payload is not None])

    async def stats(self) -> IndexStats:
        client = self._client
        chunk_count = (await client.count(self.chunks_collection, exact=True)).count
        document_count = (await client.count(self.documents_collection, count_filter=_LIVE_RECORDS, exact=True)).count
        space_count = 0
        last_indexed_at: datetime | None = None
        if document_count:
            facets = await client.facet(
                self.documents_collection, SPACE_ID, facet_filter=_LIVE_RECORDS, limit=document_count, exact=True
            )
            space_count = len(facets.hits)
            latest, _ = await client.scroll(
                self.documents_collection,
                scroll_filter=_LIVE_RECORDS,
                limit=1,
                order_by=models.OrderBy(key=INDEXED_AT, direction=models.Direction.DESC),
                with_payload=[INDEXED_AT],
            )
            if latest and latest[0].payload is not None:
                last_indexed_at = datetime.fromtimestamp(float(latest[0].payload[INDEXED_AT]), UTC)
        return IndexStats(chunk_count, document_count, space_count, last_indexed_at if chunk_count else None)

    async def _get_record(self, document_id: str) -> DocumentRecord | None:
        points = await self._client.retrieve(self.documents_collection, ids=[document_point_id(document_id)])
        if not points or points[0].payload is None:
            return None
        return DocumentRecord.from_payload(points[0].payload)

    async def _space_records(self, space_id: str) -> list[DocumentRecord]:
        records: list[DocumentRecord] = []
        offset: PointId | None = None
        while True:
            points, offset = await self._client.scroll(
                self.documents_collection,
                scroll_filter=models.Filter(must=[_match(SPACE_ID, space_id)]),
                limit=1000,
                offset=offset,
                with_payload=True,
            )
            records.extend(DocumentRecord.from_payload(p.payload) for p in points if p.payload is not None)
            if offset is None:
                return records

    # -- writes ----------------------------------------------------------------------------

    async def _replace_chunks(
        self, old: DocumentRecord | None, new: DocumentRecord, chunks: Sequence[IndexedChunk]
    ) -> None:
        if chunks:
            await self._client.upsert(
                self.chunks_collection,
                points=[
                    models.PointStruct(
                        id=chunk_point_id(new.document_id, new.version, c.chunk_index),
                        vector=[float(x) for x in c.vector],
                        payload=_chunk_payload(new.space_id, new.document_id, new.version, c),
                    )
                    for c in chunks
                ],
                wait=True,
            )
        if old is not None and old.chunk_count:
            # Every chunk of the document that is not one just written: the older version's, and
            # the surplus of the same version written again with fewer chunks.
            kept: list[models.ExtendedPointId] = [
                chunk_point_id(new.document_id, new.version, c.chunk_index) for c in chunks
            ]
            stale = models.Filter(
                must=[_match(DOCUMENT_ID, new.document_id)],
                must_not=[models.HasIdCondition(has_id=kept)] if kept else None,
            )
            await self._client.delete(
                self.chunks_collection, points_selector=models.FilterSelector(filter=stale), wait=True
            )

    async def _remove_document_chunks(self, record: DocumentRecord) -> None:
        await self._client.delete(
            self.chunks_collection,
            points_selector=models.FilterSelector(filter=models.Filter(must=[_match(DOCUMENT_ID, record.document_id)])),
            wait=True,
        )

    async def _remove_space_chunks(self, space_id: str) -> None:
        await self._client.delete(
            self.chunks_collection,
            points_selector=models.FilterSelector(filter=models.Filter(must=[_match(SPACE_ID, space_id)])),
            wait=True,
        )

    async def _put_records(self, records: Sequence[DocumentRecord]) -> None:
        if records:
            await self._client.upsert(
                self.documents_collection,
                points=[
                    models.PointStruct(id=document_point_id(r.document_id), vector=[1.0], payload=r.payload())
                    for r in records
                ],
                wait=True,
            )

    async def close(self) -> None:
        if self._owns_client:
            await self._client.close()


async def open_chunk_index(
    *,
    dimensions: int,
    data_dir: str | Path | None = None,
    qdrant_url: str | None = None,
    collection_prefix: str = "vector_",
) -> ChunkIndex:
    """The index the configuration asks for: a Qdrant server if ``qdrant_url`` is set, else
    qdrant-edge under ``data_dir``."""
    if qdrant_url:
        return await QdrantServerIndex.connect(qdrant_url, dimensions=dimensions, prefix=collection_prefix)
    if data_dir is None:
        raise ValueError("either qdrant_url or data_dir must be given")
    return await EdgeIndex.open(data_dir, dimensions=dimensions)
