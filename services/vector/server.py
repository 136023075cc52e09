"""The gRPC adapter of the vector service: proto in, use case, proto out."""

from __future__ import annotations

from typing import Any

from services.api.vector.v1 import vector_pb2, vector_pb2_grpc
from services.kit.auth import current_principal
from services.kit.protos import timestamp
from services.vector.service import VectorService

SERVICE_NAME = "vector.v1.VectorService"


class VectorServer(vector_pb2_grpc.VectorServiceServicer):
    def __init__(self, service: VectorService, embedding_model: str, dimensions: int) -> None:
        self.service = service
        self.embedding_model = embedding_model
        self.dimensions = dimensions

    async def Search(self, request: vector_pb2.SearchRequest, context: Any) -> vector_pb2.SearchResponse:
        result = await self.service.search(current_principal(), request.query, request.top_k, list(request.space_ids))
        hits = [
            vector_pb2.SearchHit(
                document_id=hit.document_id,
                space_id=hit.space_id,
                document_version=hit.version,
                chunk_index=hit.chunk_index,
                snippet=snippet,
                score=hit.score,
            )
            for hit, snippet in zip(result.hits, result.snippets, strict=True)
        ]
        return vector_pb2.SearchResponse(hits=hits, took_ms=result.took_ms)

    async def ReindexSpace(
        self, request: vector_pb2.ReindexSpaceRequest, context: Any
    ) -> vector_pb2.ReindexSpaceResponse:
        queued = await self.service.reindex_space(current_principal(), request.space_id)
        return vector_pb2.ReindexSpaceResponse(documents_queued=queued)

    async def GetIndexStats(
        self, request: vector_pb2.GetIndexStatsRequest, context: Any
    ) -> vector_pb2.GetIndexStatsResponse:
        current_principal()  # any authenticated user
        stats, freshness = await self.service.stats()
        response = vector_pb2.GetIndexStatsResponse(
            chunk_count=stats.chunk_count,
            document_count=stats.document_count,
            space_count=stats.space_count,
            embedding_model=self.embedding_model,
            dimensions=self.dimensions,
            freshness_p50_ms=freshness.p50_ms,
            freshness_p99_ms=freshness.p99_ms,
            freshness_samples=freshness.samples,
        )
        if stats.last_indexed_at is not None:
            response.last_indexed_at.CopyFrom(timestamp(stats.last_indexed_at))
        return response
