"""Contract of vector.v1.VectorService: every RPC through Envoy over gRPC, gRPC-Web and JSON,
for success and for each documented error. The index is built from the knowledge service's
events, so each test writes its documents through the knowledge service and waits until they
are searchable; the stack's embedding model is semantic (all-MiniLM-L6-v2), so the documents
mean different things and the right one must rank first."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from clients.transports import MethodRef, Reply, Transport
from contracts.expect import expect_error, expect_invalid_field, expect_needs_a_valid_token, expect_ok
from contracts.registry import contract
from contracts.values import new_id
from fixtures.accounts import sign_up
from fixtures.documents import (
    PARKING_RULES,
    PASSWORD_RESET,
    PLANT_CARE,
    REVENUE_REPORT,
    eventually,
    hits_in_space,
    remove_member,
    search,
    snippet_is_from,
    space_with_documents,
    text_of,
    versions_found,
    wait_until_searchable,
    wait_until_unsearchable,
)
from fixtures.knowledge import (
    VIEWER,
    add_member,
    create_document,
    create_space,
    delete_document,
    new_team,
    update_document,
)
from services.api.vector.v1 import vector_pb2

SEARCH = MethodRef.of("vector.v1.VectorService/Search")
REINDEX_SPACE = MethodRef.of("vector.v1.VectorService/ReindexSpace")
GET_INDEX_STATS = MethodRef.of("vector.v1.VectorService/GetIndexStats")

DIMENSIONS = 384
DEFAULT_TOP_K = 10
# Not UUIDs in the canonical 36-character form (the conventions of vector.proto).
MALFORMED_IDS = ["not-a-uuid", "123e4567-e89b-12d3-a456-4266141740000", "123e4567-e89b-12d3-a456"]
# Also not canonical, but the vector service parses them with uuid.UUID, which accepts them.
LENIENTLY_PARSED_IDS = [
    "123e4567e89b12d3a456426614174000",
    "{123e4567-e89b-12d3-a456-426614174000}",
    "urn:uuid:123e4567-e89b-12d3-a456-426614174000",
]
HANDBOOK_TOPICS = [
    "onboarding new engineers",
    "database backups",
    "the office coffee machine",
    "travel expense claims",
    "security incident response",
    "the release checklist",
    "customer support escalation",
    "hiring interviews",
    "cloud cost budgets",
    "accessibility reviews",
    "API versioning",
    "on-call rotations",
]


def assert_recent(stamp: Timestamp, not_before: float) -> None:
    assert stamp.seconds > 0, "timestamp is set"
    assert not_before - 5 <= stamp.ToMicroseconds() / 1e6 <= time.time() + 5, stamp.ToJsonString()


def assert_well_formed(response: vector_pb2.SearchResponse, top_k: int) -> None:
    """At most top_k hits, each within its documented limits, best first (ties by document_id
    then chunk_index)."""
    hits = list(response.hits)
    assert len(hits) <= top_k
    assert response.took_ms >= 0
    for hit in hits:
        assert str(uuid.UUID(hit.document_id)) == hit.document_id
        assert str(uuid.UUID(hit.space_id)) == hit.space_id
        assert hit.document_version >= 1
        assert hit.chunk_index >= 0
        assert 1 <= len(hit.snippet) <= 1000, hit.snippet
        assert -1.0 <= hit.score <= 1.0, hit.score
    keys = [(-hit.score, hit.document_id, hit.chunk_index) for hit in hits]
    assert keys == sorted(keys), "best first, ties broken by document_id then chunk_index"


# ------------------------------------------------------------------ Search


@contract("vector.v1.VectorService/Search")
async def test_search_ranks_the_document_closest_in_meaning_first(
    transport: Transport, setup_transport: Transport
) -> None:
    owner = await sign_up(setup_transport)
    texts = [PASSWORD_RESET, REVENUE_REPORT, PLANT_CARE, PARKING_RULES]
    space, documents = await space_with_documents(setup_transport, owner, texts)
    by_id = {document.document_id: document for document in documents}
    questions = [
        # Few words in common with the document it is about: only meaning brings them together.
        ("I forgot my login credentials and cannot get into my account", documents[0]),
        ("How much did sales increase last quarter?", documents[1]),
        ("How often should the ferns be watered?", documents[2]),
        ("Where can visitors leave their car?", documents[3]),
    ]
    for query, expected in questions:
        reply = await search(transport, owner, query, [space.space_id])
        response = expect_ok(reply, vector_pb2.SearchResponse)
        assert_well_formed(response, DEFAULT_TOP_K)
        hits = list(response.hits)
        assert len(hits) == len(documents), "one short chunk per document, all of them below top_k"
        best = hits[0]
        assert best.document_id == expected.document_id, f"{query!r} found {by_id[best.document_id].title!r} first"
        assert best.score > hits[1].score
        for hit in hits:
            document = by_id[hit.document_id]
            assert (hit.space_id, hit.document_version, hit.chunk_index) == (space.space_id, 1, 0)
            assert snippet_is_from(hit.snippet, text_of(document)), hit.snippet

    reply = await search(transport, owner, "  reset my password  ", [space.space_id], top_k=1)
    [best] = expect_ok(reply, vector_pb2.SearchResponse).hits
    assert best.document_id == documents[0].document_id
    assert "password" in best.snippet.lower(), "the snippet shows what the query is about"


@contract("vector.v1.VectorService/Search")
async def test_search_returns_top_k_hits_and_10_by_default(transport: Transport, setup_transport: Transport) -> None:
    owner = await sign_up(setup_transport)
    space = await create_space(setup_transport, owner, "Handbook")
    paragraphs = [
        f"Section {number} covers {topic}. "
        + " ".join(f"Rule {rule} about {topic} applies to every team in the company." for rule in range(10))
        for number, topic in enumerate(HANDBOOK_TOPICS, start=1)
    ]
    handbook = await create_document(
        setup_transport, owner, space.space_id, "Company handbook", "\n\n".join(paragraphs)
    )
    await wait_until_searchable(setup_transport, owner, [handbook])
    query = "rules for the office coffee machine"

    async def hits(top_k: int) -> list[vector_pb2.SearchHit]:
        response = expect_ok(await search(transport, owner, query, [space.space_id], top_k), vector_pb2.SearchResponse)
        assert_well_formed(response, top_k or DEFAULT_TOP_K)
        return list(response.hits)

    everything = await hits(50)
    chunk_count = len(everything)
    assert DEFAULT_TOP_K < chunk_count < 50, f"the handbook has {chunk_count} chunks"
    assert sorted(hit.chunk_index for hit in everything) == list(range(chunk_count)), "every chunk once"
    assert {(hit.document_id, hit.document_version) for hit in everything} == {(handbook.document_id, 1)}
    assert "coffee machine" in everything[0].snippet, everything[0].snippet
    for hit in everything:
        assert snippet_is_from(hit.snippet, text_of(handbook)), hit.snippet
    assert await hits(0) == everything[:DEFAULT_TOP_K]
    assert await hits(1) == everything[:1]
    assert await hits(3) == everything[:3]


@contract("vector.v1.VectorService/Search")
async def test_search_looks_only_in_readable_spaces_and_honours_the_space_filter(
    transport: Transport, setup_transport: Transport
) -> None:
    user, other, loner = await sign_up(setup_transport), await sign_up(setup_transport), await sign_up(setup_transport)
    own, _ = await space_with_documents(setup_transport, user, [PASSWORD_RESET], "Own")
    shared = await create_space(setup_transport, other, "Shared with the user")
    await add_member(setup_transport, other, shared.space_id, user.user_id, VIEWER)
    shared_document = await create_document(
        setup_transport, other, shared.space_id, PASSWORD_RESET.title, PASSWORD_RESET.content
    )
    private, _ = await space_with_documents(setup_transport, other, [PASSWORD_RESET], "Private")
    await wait_until_searchable(setup_transport, user, [shared_document])
    query = "how do I reset my password"

    async def spaces_found(space_ids: list[str]) -> list[str]:
        response = expect_ok(await search(transport, user, query, space_ids, 50), vector_pb2.SearchResponse)
        assert_well_formed(response, 50)
        return sorted(hit.space_id for hit in response.hits)

    assert await spaces_found([]) == sorted([own.space_id, shared.space_id]), "every readable space, no other"
    assert await spaces_found([own.space_id]) == [own.space_id]
    assert await spaces_found([shared.space_id]) == [shared.space_id]
    assert await spaces_found([shared.space_id, own.space_id]) == sorted([own.space_id, shared.space_id])
    assert private.space_id not in await spaces_found([]), "the same text in a space the user is not in"

    nothing = expect_ok(await search(transport, loner, query), vector_pb2.SearchResponse)
    assert list(nothing.hits) == [], "a user in no space finds nothing"


@contract("vector.v1.VectorService/Search")
async def test_search_finds_only_the_latest_version_of_an_updated_document(
    transport: Transport, setup_transport: Transport
) -> None:
    owner = await sign_up(setup_transport)
    space, [guide, report] = await space_with_documents(setup_transport, owner, [PASSWORD_RESET, REVENUE_REPORT])
    rewritten = await update_document(setup_transport, owner, guide, title=PLANT_CARE.title, content=PLANT_CARE.content)
    assert rewritten.version == 2
    await wait_until_searchable(setup_transport, owner, [rewritten])

    response = expect_ok(
        await search(transport, owner, "How do I reset my password?", [space.space_id], 50), vector_pb2.SearchResponse
    )
    assert_well_formed(response, 50)
    assert versions_found(response.hits, guide.document_id) == {2}, "only the new version's chunks"
    assert not any("password" in hit.snippet.lower() for hit in response.hits), "the old text is gone"
    plants = expect_ok(
        await search(transport, owner, "How often should the ferns be watered?", [space.space_id]),
        vector_pb2.SearchResponse,
    )
    best = plants.hits[0]
    assert (best.document_id, best.document_version) == (guide.document_id, 2)
    assert snippet_is_from(best.snippet, text_of(rewritten))
    assert versions_found(plants.hits, report.document_id) == {1}, "the other document is untouched"


@contract("vector.v1.VectorService/Search")
async def test_search_no_longer_finds_a_deleted_document(transport: Transport, setup_transport: Transport) -> None:
    owner = await sign_up(setup_transport)
    space, [guide, report] = await space_with_documents(setup_transport, owner, [PASSWORD_RESET, REVENUE_REPORT])
    await delete_document(setup_transport, owner, guide)
    await wait_until_unsearchable(setup_transport, owner, guide)

    response = expect_ok(
        await search(transport, owner, "How do I reset my password?", [space.space_id], 50), vector_pb2.SearchResponse
    )
    assert [hit.document_id for hit in response.hits] == [report.document_id]


@contract("vector.v1.VectorService/Search")
async def test_search_accepts_its_limits_counted_in_code_points(
    transport: Transport, setup_transport: Transport
) -> None:
    owner = await sign_up(setup_transport)
    space, [guide] = await space_with_documents(setup_transport, owner, [PASSWORD_RESET])
    query = " " + "é" * 1000 + "\t"  # 2000 bytes, 1000 characters once trimmed
    response = expect_ok(await search(transport, owner, query, [space.space_id], 50), vector_pb2.SearchResponse)
    assert [hit.document_id for hit in response.hits] == [guide.document_id]
    upper = expect_ok(await search(transport, owner, "password", [space.space_id.upper()]), vector_pb2.SearchResponse)
    assert [hit.space_id for hit in upper.hits] == [space.space_id]


@contract("vector.v1.VectorService/Search", "INVALID_ARGUMENT")
@pytest.mark.parametrize(
    ("field", "query", "top_k", "space_ids"),
    [
        ("query", "", 0, []),
        ("query", " \t\n ", 0, []),
        ("query", "q" * 1001, 0, []),
        ("query", "🚀" * 1001, 0, []),
        ("top_k", "password", 51, []),
        ("top_k", "password", -1, []),
        ("space_ids", "password", 0, [new_id() for _ in range(101)]),
        ("space_ids[1]", "password", 0, ["7c1e5f0a-2b3c-4d5e-8f90-a1b2c3d4e5f6"] * 2),
        *(("space_ids[0]", "password", 0, [malformed]) for malformed in MALFORMED_IDS),
        ("space_ids[1]", "password", 0, [new_id(), "not-a-uuid"]),
        *(pytest.param("space_ids[0]", "password", 0, [lenient]) for lenient in LENIENTLY_PARSED_IDS),
    ],
)
async def test_search_rejects_a_query_top_k_or_space_filter_beyond_its_limit(
    transport: Transport, setup_transport: Transport, field: str, query: str, top_k: int, space_ids: list[str]
) -> None:
    account = await sign_up(setup_transport)
    expect_invalid_field(await search(transport, account, query, space_ids, top_k), field)


@contract("vector.v1.VectorService/Search", "UNAUTHENTICATED")
async def test_search_needs_a_valid_token(transport: Transport) -> None:
    await expect_needs_a_valid_token(transport, SEARCH, vector_pb2.SearchRequest(query="password"))


@contract("vector.v1.VectorService/Search", "PERMISSION_DENIED")
async def test_search_of_a_space_the_caller_cannot_read_is_denied_naming_it(
    transport: Transport, setup_transport: Transport
) -> None:
    owner, outsider = await sign_up(setup_transport), await sign_up(setup_transport)
    space, _ = await space_with_documents(setup_transport, owner, [PASSWORD_RESET])
    own = await create_space(setup_transport, outsider, "The outsider's own")
    missing = new_id()

    there = await search(transport, outsider, "password", [space.space_id])
    nowhere = await search(transport, outsider, "password", [missing])
    expect_error(there, grpc.StatusCode.PERMISSION_DENIED, f"space {space.space_id}", "not a member")
    expect_error(nowhere, grpc.StatusCode.PERMISSION_DENIED, f"space {missing}")
    assert there.details.replace(space.space_id, "<space>") == nowhere.details.replace(missing, "<space>"), (
        "a space one is not in looks like a missing one"
    )

    mixed = await search(transport, outsider, "password", [own.space_id, space.space_id])
    expect_error(mixed, grpc.StatusCode.PERMISSION_DENIED, f"space {space.space_id}")
    assert own.space_id not in mixed.details, "the readable space is not the one refused"


@contract("vector.v1.VectorService/Search", "PERMISSION_DENIED")
async def test_search_of_a_space_the_caller_was_removed_from_is_denied_once_the_removal_is_consumed(
    transport: Transport, setup_transport: Transport
) -> None:
    owner, member = await sign_up(setup_transport), await sign_up(setup_transport)
    space = await create_space(setup_transport, owner)
    await add_member(setup_transport, owner, space.space_id, member.user_id, VIEWER)
    guide = await create_document(setup_transport, owner, space.space_id, PASSWORD_RESET.title, PASSWORD_RESET.content)
    await wait_until_searchable(setup_transport, member, [guide])
    await remove_member(setup_transport, owner, space.space_id, member.user_id)

    async def refused() -> Reply | None:
        reply = await search(transport, member, "password", [space.space_id])
        return reply if reply.code != grpc.StatusCode.OK else None

    # The vector service caches who reads what; the membership event drops the entry.
    expect_error(
        await eventually(refused, "a removed member still searches the space"),
        grpc.StatusCode.PERMISSION_DENIED,
        f"space {space.space_id}",
    )
    everywhere = expect_ok(await search(transport, member, "password"), vector_pb2.SearchResponse)
    assert list(everywhere.hits) == [], "nor is the space searched when no filter is given"


# ------------------------------------------------------------ ReindexSpace


@contract("vector.v1.VectorService/ReindexSpace")
async def test_reindex_space_queues_the_live_documents_for_editors_and_owners(
    transport: Transport, setup_transport: Transport
) -> None:
    team = await new_team(setup_transport)
    documents = [
        await create_document(setup_transport, team.editor, team.space_id, text.title, text.content)
        for text in (PASSWORD_RESET, REVENUE_REPORT, PLANT_CARE)
    ]
    deleted = documents.pop()
    await delete_document(setup_transport, team.editor, deleted)
    await wait_until_searchable(setup_transport, team.owner, documents)
    await wait_until_unsearchable(setup_transport, team.owner, deleted)

    for account in (team.editor, team.owner):
        requested_at = time.time()
        for _ in range(2):  # queuing a space being reindexed again is harmless
            reply = await transport.unary(
                REINDEX_SPACE, vector_pb2.ReindexSpaceRequest(space_id=team.space_id), token=account.access_token
            )
            assert expect_ok(reply, vector_pb2.ReindexSpaceResponse).documents_queued == 2, "live documents only"

        async def rewritten(requested_at: float = requested_at, token: str = account.access_token) -> bool | None:
            reply = await setup_transport.unary(GET_INDEX_STATS, vector_pb2.GetIndexStatsRequest(), token=token)
            stats = expect_ok(reply, vector_pb2.GetIndexStatsResponse)
            return True if stats.last_indexed_at.ToMicroseconds() / 1e6 >= requested_at - 1 else None

        await eventually(rewritten, "nothing was written to the index after the reindex")
        # Still searchable, each at its version, and the deleted document stays gone.
        await wait_until_searchable(setup_transport, team.viewer, documents)
        hits = await hits_in_space(setup_transport, team.viewer, team.space_id, "password")
        assert hits is not None
        assert sorted(hit.document_id for hit in hits) == sorted(document.document_id for document in documents)
        best = await search(setup_transport, team.viewer, "How do I reset my password?", [team.space_id], 1)
        assert [hit.document_id for hit in expect_ok(best, vector_pb2.SearchResponse).hits] == [
            documents[0].document_id
        ]

    empty = await create_space(setup_transport, team.owner, "Nothing in it yet")
    reply = await transport.unary(
        REINDEX_SPACE, vector_pb2.ReindexSpaceRequest(space_id=empty.space_id), token=team.owner.access_token
    )
    assert expect_ok(reply, vector_pb2.ReindexSpaceResponse).documents_queued == 0


@contract("vector.v1.VectorService/ReindexSpace", "INVALID_ARGUMENT")
@pytest.mark.parametrize(
    "space_id",
    [*MALFORMED_IDS, *LENIENTLY_PARSED_IDS],
)
async def test_reindex_space_needs_a_uuid(transport: Transport, setup_transport: Transport, space_id: str) -> None:
    account = await sign_up(setup_transport)
    request = vector_pb2.ReindexSpaceRequest(space_id=space_id)
    expect_invalid_field(await transport.unary(REINDEX_SPACE, request, token=account.access_token), "space_id")


@contract("vector.v1.VectorService/ReindexSpace", "UNAUTHENTICATED")
async def test_reindex_space_needs_a_valid_token(transport: Transport) -> None:
    await expect_needs_a_valid_token(transport, REINDEX_SPACE, vector_pb2.ReindexSpaceRequest(space_id=new_id()))


@contract("vector.v1.VectorService/ReindexSpace", "PERMISSION_DENIED")
async def test_reindex_space_needs_the_editor_role(transport: Transport, setup_transport: Transport) -> None:
    team = await new_team(setup_transport)
    missing = new_id()
    for account, space_id in ((team.viewer, team.space_id), (team.outsider, team.space_id), (team.owner, missing)):
        request = vector_pb2.ReindexSpaceRequest(space_id=space_id)
        reply = await transport.unary(REINDEX_SPACE, request, token=account.access_token)
        expect_error(reply, grpc.StatusCode.PERMISSION_DENIED, f"space {space_id}", "editor")


@contract("vector.v1.VectorService/ReindexSpace", "RESOURCE_EXHAUSTED")
async def test_a_caller_may_have_two_reindexes_waiting(transport: Transport, setup_transport: Transport) -> None:
    """Reindexes of four spaces asked at once: two are queued, the others are refused until
    one of them has finished (the same space asked again is no new job: see above)."""
    owner = await sign_up(setup_transport)
    spaces = [(await create_space(setup_transport, owner, f"Shelf {n}")).space_id for n in range(4)]
    for space_id in spaces:
        for text in (PASSWORD_RESET, REVENUE_REPORT, PLANT_CARE) * 4:
            await create_document(setup_transport, owner, space_id, text.title, text.content)
    replies = await asyncio.gather(
        *(
            transport.unary(REINDEX_SPACE, vector_pb2.ReindexSpaceRequest(space_id=space_id), token=owner.access_token)
            for space_id in spaces
        )
    )
    assert sum(reply.ok for reply in replies) == 2, [(reply.code.name, reply.details) for reply in replies]
    for reply in replies:
        if not reply.ok:
            expect_error(
                reply, grpc.StatusCode.RESOURCE_EXHAUSTED, "2 reindexes queued", "when one of them has finished"
            )


# ----------------------------------------------------------- GetIndexStats


@contract("vector.v1.VectorService/GetIndexStats")
async def test_get_index_stats_counts_what_was_indexed_and_names_the_model(
    transport: Transport, setup_transport: Transport
) -> None:
    owner = await sign_up(setup_transport)
    began = time.time()
    first, documents = await space_with_documents(setup_transport, owner, [PASSWORD_RESET, REVENUE_REPORT])
    second, more = await space_with_documents(setup_transport, owner, [PLANT_CARE])
    del first, second

    reply = await transport.unary(GET_INDEX_STATS, vector_pb2.GetIndexStatsRequest(), token=owner.access_token)
    stats = expect_ok(reply, vector_pb2.GetIndexStatsResponse)
    assert stats.chunk_count >= stats.document_count >= len(documents) + len(more)
    assert stats.document_count >= stats.space_count >= 2
    assert 1 <= len(stats.embedding_model) <= 200
    assert "minilm" in stats.embedding_model.lower(), stats.embedding_model
    assert stats.dimensions == DIMENSIONS
    assert stats.HasField("last_indexed_at")
    assert_recent(stats.last_indexed_at, began)
    assert stats.freshness_samples >= len(documents) + len(more), "every indexed version was timed"
    assert 0 < stats.freshness_p50_ms <= stats.freshness_p99_ms

    stranger = await sign_up(setup_transport, "stranger")
    again = expect_ok(
        await transport.unary(GET_INDEX_STATS, vector_pb2.GetIndexStatsRequest(), token=stranger.access_token),
        vector_pb2.GetIndexStatsResponse,
    )
    assert again.chunk_count >= stats.document_count, "any authenticated user sees the whole index's counts"


@contract("vector.v1.VectorService/GetIndexStats", "UNAUTHENTICATED")
async def test_get_index_stats_needs_a_valid_token(transport: Transport) -> None:
    await expect_needs_a_valid_token(transport, GET_INDEX_STATS, vector_pb2.GetIndexStatsRequest())
