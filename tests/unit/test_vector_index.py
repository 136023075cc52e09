"""services.vector.index: both ChunkIndex engines through one parametrised suite.

"edge" is EdgeIndex on qdrant-edge under a temporary directory. "qdrant" is QdrantServerIndex on
qdrant-client's local mode (``AsyncQdrantClient(location=":memory:")``): no Qdrant server runs
here, and local mode speaks the same client API (collections, payload filters, query_points,
facets, order_by), so the suite checks the server backend's logic, not a server's performance.
EdgeIndex alone is checked for restarts, model changes and its optimisation policy.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import AsyncQdrantClient

from services.vector.index import (
    ChunkIndex,
    DocumentRecord,
    EdgeIndex,
    IndexedChunk,
    QdrantServerIndex,
    delete_applies,
    open_chunk_index,
    upsert_applies,
)

# Local mode says, rightly, that it ignores payload indexes and search parameters (it scans).
pytestmark = [
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact"),
]

DIM = 16


def _id() -> str:
    return str(uuid.uuid4())


def _vector(rng: random.Random) -> list[float]:
    return [rng.gauss(0.0, 1.0) for _ in range(DIM)]


def _chunks(rng: random.Random, count: int, label: str = "text") -> list[IndexedChunk]:
    return [IndexedChunk(i, f"{label} {i}", _vector(rng)) for i in range(count)]


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))


@pytest.fixture(params=["edge", "qdrant"])
async def index(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ChunkIndex]:
    engine: ChunkIndex
    if request.param == "edge":
        engine = await EdgeIndex.open(tmp_path / "index", dimensions=DIM, optimize_after=None)
    else:
        engine = await QdrantServerIndex.connect(AsyncQdrantClient(location=":memory:"), dimensions=DIM)
    assert isinstance(engine, ChunkIndex)
    yield engine
    await engine.close()


async def _all_hits_of(index: ChunkIndex, space_ids: Sequence[str]) -> list[tuple[str, int, int, str]]:
    hits = await index.search([1.0] * DIM, 1000, space_ids)
    return sorted((h.document_id, h.version, h.chunk_index, h.text) for h in hits)


async def test_upsert_then_search_returns_the_chunks_with_cosine_scores(index: ChunkIndex) -> None:
    rng = random.Random(1)
    space, document = _id(), _id()
    chunks = _chunks(rng, 5)
    assert await index.upsert_document(space, document, 1, chunks)
    query = _vector(rng)
    hits = await index.search(query, 10, [space])
    assert len(hits) == 5
    expected = sorted(((_cosine(query, c.vector), c.chunk_index) for c in chunks), reverse=True)
    assert [h.chunk_index for h in hits] == [i for _, i in expected]
    for hit, (score, _) in zip(hits, expected, strict=True):
        assert hit.score == pytest.approx(score, abs=1e-5)
        assert (hit.space_id, hit.document_id, hit.version) == (space, document, 1)
        assert hit.text == f"text {hit.chunk_index}"
    assert await index.indexed_version(document) == 1


async def test_top_k_keeps_the_best_in_order(index: ChunkIndex) -> None:
    rng = random.Random(2)
    space = _id()
    vectors: dict[tuple[str, int], list[float]] = {}
    for _ in range(6):
        document = _id()
        chunks = _chunks(rng, 7)
        await index.upsert_document(space, document, 1, chunks)
        vectors.update({(document, c.chunk_index): list(c.vector) for c in chunks})
    query = _vector(rng)
    ranked = sorted(vectors, key=lambda key: -_cosine(query, vectors[key]))
    hits = await index.search(query, 5, [space])
    assert [(h.document_id, h.chunk_index) for h in hits] == ranked[:5]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


async def test_ties_are_broken_by_document_then_chunk_index(index: ChunkIndex) -> None:
    space = _id()
    same = [1.0] + [0.0] * (DIM - 1)
    documents = sorted(_id() for _ in range(3))
    for document in reversed(documents):
        await index.upsert_document(space, document, 1, [IndexedChunk(i, "t", same) for i in (2, 0, 1)])
    hits = await index.search(same, 9, [space])
    assert [(h.document_id, h.chunk_index) for h in hits] == [(d, i) for d in documents for i in (0, 1, 2)]
    assert all(h.score == pytest.approx(1.0) for h in hits)


async def test_an_update_replaces_every_chunk_of_the_document(index: ChunkIndex) -> None:
    rng = random.Random(3)
    space, document, other = _id(), _id(), _id()
    await index.upsert_document(space, other, 4, _chunks(rng, 2, "other"))
    await index.upsert_document(space, document, 1, _chunks(rng, 6, "first"))
    assert await index.upsert_document(space, document, 2, _chunks(rng, 2, "second"))
    hits = await _all_hits_of(index, [space])
    assert [h for h in hits if h[0] == document] == [(document, 2, 0, "second 0"), (document, 2, 1, "second 1")]
    assert len([h for h in hits if h[0] == other]) == 2
    assert await index.indexed_version(document) == 2
    assert (await index.stats()).chunk_count == 4


async def test_the_same_version_again_is_rewritten(index: ChunkIndex) -> None:
    """A reindex (or a redelivered event) rewrites the version, even with fewer chunks."""
    rng = random.Random(4)
    space, document = _id(), _id()
    await index.upsert_document(space, document, 3, _chunks(rng, 5, "before"))
    assert await index.upsert_document(space, document, 3, _chunks(rng, 2, "after"))
    assert await _all_hits_of(index, [space]) == [(document, 3, 0, "after 0"), (document, 3, 1, "after 1")]


async def test_an_older_version_is_ignored(index: ChunkIndex) -> None:
    rng = random.Random(5)
    space, document = _id(), _id()
    await index.upsert_document(space, document, 5, _chunks(rng, 2, "five"))
    assert not await index.upsert_document(space, document, 4, _chunks(rng, 3, "four"))
    assert not await index.delete_document(space, document, 4)
    assert await _all_hits_of(index, [space]) == [(document, 5, 0, "five 0"), (document, 5, 1, "five 1")]
    assert await index.indexed_version(document) == 5


async def test_a_deletion_removes_the_chunks_and_outranks_late_events(index: ChunkIndex) -> None:
    rng = random.Random(6)
    space, document = _id(), _id()
    await index.upsert_document(space, document, 2, _chunks(rng, 3))
    assert await index.delete_document(space, document, 2)
    assert await _all_hits_of(index, [space]) == []
    assert await index.indexed_version(document) is None
    # The create or update event of the deleted version, arriving late, must not resurrect it.
    assert not await index.upsert_document(space, document, 2, _chunks(rng, 3))
    assert not await index.upsert_document(space, document, 1, _chunks(rng, 3))
    assert await _all_hits_of(index, [space]) == []
    # A newer version is a new life.
    assert await index.upsert_document(space, document, 3, _chunks(rng, 1, "reborn"))
    assert await _all_hits_of(index, [space]) == [(document, 3, 0, "reborn 0")]


async def test_a_deletion_before_the_document_was_indexed_is_remembered(index: ChunkIndex) -> None:
    rng = random.Random(7)
    space, document = _id(), _id()
    assert await index.delete_document(space, document, 3)
    assert not await index.upsert_document(space, document, 3, _chunks(rng, 2))
    assert (await index.stats()).document_count == 0


async def test_delete_space_removes_only_that_space(index: ChunkIndex) -> None:
    rng = random.Random(8)
    doomed, kept = _id(), _id()
    doomed_documents = [_id() for _ in range(3)]
    for document in doomed_documents:
        await index.upsert_document(doomed, document, 1, _chunks(rng, 2))
    await index.delete_document(doomed, doomed_documents[0], 2)
    survivor = _id()
    await index.upsert_document(kept, survivor, 1, _chunks(rng, 4))
    assert await index.delete_space(doomed) == 2
    assert await _all_hits_of(index, [doomed]) == []
    assert len(await _all_hits_of(index, [kept])) == 4
    stats = await index.stats()
    assert (stats.chunk_count, stats.document_count, stats.space_count) == (4, 1, 1)
    # Late events for the space's documents do not bring them back; a newer version would.
    assert not await index.upsert_document(doomed, doomed_documents[1], 1, _chunks(rng, 2))
    assert await index.delete_space(doomed) == 0


async def test_search_never_leaks_another_spaces_chunks(index: ChunkIndex) -> None:
    rng = random.Random(9)
    spaces = [_id() for _ in range(60)]
    vectors: dict[tuple[str, int], tuple[str, list[float]]] = {}
    for space in spaces:
        for _ in range(rng.randint(1, 3)):
            document = _id()
            chunks = _chunks(rng, rng.randint(1, 4))
            await index.upsert_document(space, document, 1, chunks)
            vectors.update({(document, c.chunk_index): (space, list(c.vector)) for c in chunks})
    for _ in range(40):
        allowed = rng.sample(spaces, rng.randint(1, 6))
        query = _vector(rng)
        hits = await index.search(query, 10, allowed)
        assert hits
        assert {h.space_id for h in hits} <= set(allowed)
        # And nothing of the allowed spaces is missed: the hits are the exact top 10.
        candidates = [key for key, (space, _) in vectors.items() if space in allowed]
        exact = sorted(candidates, key=lambda key: -_cosine(query, vectors[key][1]))[:10]
        assert [(h.document_id, h.chunk_index) for h in hits] == exact
    assert await index.search(_vector(rng), 10, []) == []
    assert await index.search(_vector(rng), 10, [_id()]) == []
    # Repeating a space changes nothing.
    query = _vector(rng)
    assert await index.search(query, 5, [spaces[0], spaces[0]]) == await index.search(query, 5, [spaces[0]])


async def test_stats_count_chunks_documents_and_spaces(index: ChunkIndex) -> None:
    rng = random.Random(10)
    empty = await index.stats()
    assert (empty.chunk_count, empty.document_count, empty.space_count, empty.last_indexed_at) == (0, 0, 0, None)
    a, b = _id(), _id()
    await index.upsert_document(a, _id(), 1, _chunks(rng, 3))
    await index.upsert_document(a, _id(), 1, _chunks(rng, 2))
    await index.upsert_document(b, _id(), 1, _chunks(rng, 4))
    empty_document = _id()
    await index.upsert_document(b, empty_document, 1, [])  # a document with no text has no chunks
    assert await index.indexed_version(empty_document) == 1
    stats = await index.stats()
    assert (stats.chunk_count, stats.document_count, stats.space_count) == (9, 3, 2)
    assert stats.last_indexed_at is not None


async def test_concurrent_events_for_one_document_leave_the_newest(index: ChunkIndex) -> None:
    rng = random.Random(11)
    space, document = _id(), _id()
    versions = list(range(1, 13))
    rng.shuffle(versions)
    await asyncio.gather(
        *(index.upsert_document(space, document, v, _chunks(rng, v % 4 + 1, f"v{v}")) for v in versions)
    )
    hits = await _all_hits_of(index, [space])
    assert {h[1] for h in hits} == {12}
    assert len(hits) == 12 % 4 + 1
    assert await index.indexed_version(document) == 12


async def test_bad_input_is_refused(index: ChunkIndex) -> None:
    space, document = _id(), _id()
    with pytest.raises(ValueError, match="version"):
        await index.upsert_document(space, document, 0, [])
    with pytest.raises(ValueError, match="-d vector"):
        await index.upsert_document(space, document, 1, [IndexedChunk(0, "t", [1.0, 0.0])])
    with pytest.raises(ValueError, match="distinct"):
        await index.upsert_document(space, document, 1, [IndexedChunk(0, "t", [1.0] * DIM)] * 2)
    with pytest.raises(ValueError, match="top_k"):
        await index.search([1.0] * DIM, 0, [space])
    with pytest.raises(ValueError, match="query vector"):
        await index.search([1.0], 3, [space])
    assert await index.indexed_version(document) is None


@pytest.mark.parametrize(
    ("record", "version", "upsert", "delete"),
    [
        (None, 1, True, True),
        (DocumentRecord("d", "s", 3, False, 2, 0.0), 2, False, False),
        (DocumentRecord("d", "s", 3, False, 2, 0.0), 3, True, True),
        (DocumentRecord("d", "s", 3, False, 2, 0.0), 4, True, True),
        (DocumentRecord("d", "s", 3, True, 0, 0.0), 3, False, True),
        (DocumentRecord("d", "s", 3, True, 0, 0.0), 4, True, True),
    ],
)
def test_version_rules(record: DocumentRecord | None, version: int, upsert: bool, delete: bool) -> None:
    assert upsert_applies(record, version) is upsert
    assert delete_applies(record, version) is delete


# ---------------------------------------------------------------------------------------------
# EdgeIndex only
# ---------------------------------------------------------------------------------------------


async def test_edge_index_survives_a_restart(tmp_path: Path) -> None:
    rng = random.Random(12)
    space, document, deleted = _id(), _id(), _id()
    index = await EdgeIndex.open(tmp_path, dimensions=DIM, optimize_after=None)
    await index.upsert_document(space, document, 1, _chunks(rng, 3, "old"))
    await index.upsert_document(space, document, 2, _chunks(rng, 2, "kept"))
    await index.upsert_document(space, deleted, 1, _chunks(rng, 2))
    await index.delete_document(space, deleted, 1)
    query = _vector(rng)
    before_hits = await index.search(query, 10, [space])
    before_stats = await index.stats()
    await index.close()
    await index.close()  # idempotent

    reopened = await EdgeIndex.open(tmp_path, dimensions=DIM, optimize_after=None)
    try:
        assert await reopened.search(query, 10, [space]) == before_hits
        assert await reopened.stats() == before_stats
        assert await reopened.indexed_version(document) == 2
        assert await reopened.indexed_version(deleted) is None
        # The version bookkeeping survived too: old events stay ignored after the restart.
        assert not await reopened.upsert_document(space, document, 1, _chunks(rng, 1))
        assert not await reopened.upsert_document(space, deleted, 1, _chunks(rng, 1))
    finally:
        await reopened.close()


async def test_edge_index_refuses_vectors_of_another_model(tmp_path: Path) -> None:
    index = await EdgeIndex.open(tmp_path, dimensions=DIM)
    await index.close()
    with pytest.raises(ValueError, match="rebuild"):
        await EdgeIndex.open(tmp_path, dimensions=DIM * 2)


async def test_edge_index_optimises_when_idle_and_keeps_answering(tmp_path: Path) -> None:
    rng = random.Random(13)
    index = await EdgeIndex.open(tmp_path, dimensions=DIM, optimize_after=50, optimize_idle_seconds=0.05)
    try:
        space = _id()
        for _ in range(20):
            await index.upsert_document(space, _id(), 1, _chunks(rng, 5))
        assert index._pending_changes >= 50
        query = _vector(rng)
        before = await index.search(query, 10, [space])
        for _ in range(100):
            await asyncio.sleep(0.02)
            if index._pending_changes == 0:
                break
        assert index._pending_changes == 0
        assert await index.search(query, 10, [space]) == before
        assert await index.optimize() in (True, False)
    finally:
        await index.close()


async def test_edge_index_optimises_at_open_but_not_while_serving_by_default(tmp_path: Path) -> None:
    rng = random.Random(15)
    space = _id()
    index = await EdgeIndex.open(tmp_path, dimensions=DIM, optimize_after=50)
    for _ in range(12):
        await index.upsert_document(space, _id(), 1, _chunks(rng, 5))
    # Serving: changes pile up, but no optimisation is scheduled (it would block searches).
    assert index._pending_changes >= 50
    assert index._optimizer is None
    query = _vector(rng)
    before = await index.search(query, 10, [space])
    await index.close()
    # Opening (before serving) is when the accumulated changes get optimised.
    reopened = await EdgeIndex.open(tmp_path, dimensions=DIM, optimize_after=50)
    try:
        assert reopened._pending_changes == 0
        assert await reopened.search(query, 10, [space]) == before
    finally:
        await reopened.close()


async def test_open_chunk_index_follows_the_configuration(tmp_path: Path) -> None:
    edge = await open_chunk_index(dimensions=DIM, data_dir=tmp_path)
    assert isinstance(edge, EdgeIndex)
    await edge.close()
    with pytest.raises(ValueError, match="data_dir"):
        await open_chunk_index(dimensions=DIM)


async def test_qdrant_index_refuses_vectors_of_another_model() -> None:
    client = AsyncQdrantClient(location=":memory:")
    first = await QdrantServerIndex.connect(client, dimensions=DIM)
    await first.upsert_document(_id(), _id(), 1, _chunks(random.Random(14), 1))
    again = await QdrantServerIndex.connect(client, dimensions=DIM)
    assert (await again.stats()).chunk_count == 1
    with pytest.raises(ValueError, match="reindex"):
        await QdrantServerIndex.connect(client, dimensions=DIM * 2)
    await client.close()
