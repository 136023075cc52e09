"""The chat service's calls to other services: the knowledge service (who may read which
space) and the vector service (which chunks match a question).

Both go over the kit's service channels, which forward the caller's bearer token and deadline:
the vector service searches as the asker and enforces the asker's access itself, so chat never
widens what a user can see (and never caches results: each question is searched anew, as its
asker). A peer that does not answer becomes UNAVAILABLE with a message a user can act on; a
refusal the contract does not expect from a peer stays an internal error.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import grpc

from services.api.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from services.api.vector.v1 import vector_pb2, vector_pb2_grpc
from services.chat.domain import RetrievedChunk
from services.kit.access import AccessCache, EpochSource
from services.kit.errors import PEER_NOT_ANSWERING, DomainError, PermissionDenied, Unauthenticated, Unavailable

# The vector service's limit on a query; longer questions are searched by their start.
SEARCH_QUERY_MAX = 1000


def peer_failure(error: grpc.aio.AioRpcError, peer: str) -> DomainError | None:
    """What a failed call to a peer means to our caller; None: an internal error."""
    code = error.code()
    if code in PEER_NOT_ANSWERING:
        return Unavailable(f"the {peer} is not answering right now ({code.name}); try again in a moment")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(error.details() or "the access token was refused; log in again")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(error.details() or f"the {peer} refused access")
    return None


@contextmanager
def calling(peer: str) -> Iterator[None]:
    """Around a call to a peer: its failure as a domain error (see `peer_failure`)."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        failure = peer_failure(error, peer)
        if failure is None:
            raise
        raise failure from error


class KnowledgeAccess:
    """Space access as the knowledge service (the permission authority) decides it, through
    its internal ListAccessibleSpaces, kept in the kit's access cache (services.kit.access:
    fresh the moment a membership change returns, however often chat asks)."""

    PEER = "knowledge service"

    def __init__(self, channel: grpc.aio.Channel, epochs: EpochSource, ttl_s: float = 30.0) -> None:
        self.stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
        self.cache = AccessCache(self._readable, epochs, ttl_s=ttl_s)

    async def can_read(self, user_id: str, space_id: str) -> bool:
        return space_id in await self.cache.readable(user_id)

    async def readable_spaces(self, user_id: str) -> set[str]:
        return set(await self.cache.readable(user_id))

    async def _readable(self, user_id: str) -> dict[str, int]:
        request = knowledge_pb2.ListAccessibleSpacesRequest(user_id=user_id, minimum_role=knowledge_pb2.ROLE_VIEWER)
        with calling(self.PEER):
            reply = await self.stub.ListAccessibleSpaces(request)
        return {space.space_id: space.role for space in reply.spaces}


class VectorSearch:
    """Similarity search as the caller (the channel forwards the caller's token)."""

    PEER = "search service (vector)"

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = vector_pb2_grpc.VectorServiceStub(channel)

    async def search(self, query: str, space_ids: Sequence[str], top_k: int) -> list[RetrievedChunk]:
        """The best chunks for the query in these spaces (all the caller can read when empty).
        Raises PermissionDenied when a listed space is no longer readable."""
        request = vector_pb2.SearchRequest(query=query[:SEARCH_QUERY_MAX], top_k=top_k, space_ids=list(space_ids))
        with calling(self.PEER):
            reply = await self.stub.Search(request)
        return [
            RetrievedChunk(
                document_id=hit.document_id,
                space_id=hit.space_id,
                document_version=hit.document_version,
                chunk_index=hit.chunk_index,
                text=hit.snippet,
                score=hit.score,
            )
            for hit in reply.hits
        ]
