"""Wiring of the vector service: settings, index, embedder, event consumer, server."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import redis.asyncio as aioredis

from services.api.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from services.api.vector.v1 import vector_pb2_grpc
from services.kit import app
from services.kit.access import AccessCache, AccessEpochs, roles_in_knowledge
from services.kit.clients import service_channel
from services.kit.consumer import EventConsumer, RedisIdempotency
from services.kit.events import topic_for
from services.kit.health import redis_dependency
from services.kit.kafka import EventProducer, new_producer
from services.kit.server import ServiceSpec
from services.kit.settings import ServiceSettings
from services.vector import VERSION
from services.vector.embeddings import MINILM_MODEL, BatchingEmbedder, Embedder, embedder_from_name
from services.vector.index import ChunkIndex, EdgeIndex, QdrantServerIndex
from services.vector.indexing import Indexer
from services.vector.server import SERVICE_NAME, VectorServer
from services.vector.service import CurrentDocument, SpaceSource, VectorService

CONSUMER_GROUP = "vector"
PAGE_SIZE = 100


class VectorSettings(ServiceSettings):
    service_name: str = "vector"
    grpc_port: int = 15053
    # Where the embedded index keeps its files (the launcher passes the component's folder).
    data_dir: Path = Path(".run/data/vector")
    # A Qdrant server to use instead of the embedded engine (the Docker path), e.g. http://qdrant:6333.
    qdrant_url: str = ""
    # "all-MiniLM-L6-v2" (semantic) or "lexical-hash-384" (fast, lexical: tests and load).
    embedding_model: str = "all-MiniLM-L6-v2"
    # Threads one MiniLM call computes on. One: indexing, a call at a time, keeps to one core and
    # a search's query embedding runs beside it on the other.
    embedding_threads: int = 1
    # Document events indexed at once, and the most chunk texts embedded in one shared batch.
    index_concurrency: int = 16
    index_batch_texts: int = 64
    # Backstop expiry of cached access answers (services.kit.access): access epochs make a
    # change effective at once, membership events drop entries early.
    access_cache_ttl_s: float = 30.0
    # Reindex jobs one caller may have waiting at once (services.vector.reindexing).
    reindex_per_caller: int = 2


async def open_index(settings: VectorSettings, dimensions: int) -> ChunkIndex:
    if settings.qdrant_url:
        return await QdrantServerIndex.connect(settings.qdrant_url, dimensions=dimensions)
    return await EdgeIndex.open(settings.data_dir / "index", dimensions=dimensions)


def knowledge_source(stub: knowledge_pb2_grpc.KnowledgeServiceAsyncStub) -> SpaceSource:
    """The knowledge service, asked as the caller (the kit's channel forwards their token)."""

    async def may_edit(user_id: str, space_id: str) -> bool:
        request = knowledge_pb2.CheckAccessRequest(
            user_id=user_id, space_id=space_id, required_role=knowledge_pb2.ROLE_EDITOR
        )
        return bool((await stub.CheckAccess(request)).allowed)

    async def document_ids(space_id: str) -> list[str]:
        ids: list[str] = []
        token = ""
        while True:
            page = await stub.ListDocuments(
                knowledge_pb2.ListDocumentsRequest(space_id=space_id, page_size=PAGE_SIZE, page_token=token)
            )
            ids += [document.document_id for document in page.documents]
            token = page.next_page_token
            if not token:
                return ids

    async def document(space_id: str, document_id: str) -> CurrentDocument | None:
        try:
            found = await stub.GetDocument(knowledge_pb2.GetDocumentRequest(space_id=space_id, document_id=document_id))
        except Exception:
            return None
        doc = found.document
        return CurrentDocument(doc.document_id, doc.version, doc.title, doc.content)

    return SpaceSource(may_edit=may_edit, document_ids=document_ids, document=document)


async def build(settings: VectorSettings, resources: AsyncExitStack) -> app.Application:
    options = {"threads": settings.embedding_threads} if settings.embedding_model == MINILM_MODEL else {}
    embedder = await asyncio.to_thread(embedder_from_name, settings.embedding_model, **options)
    index = await open_index(settings, embedder.dimensions)
    resources.push_async_callback(index.close)
    redis = aioredis.Redis.from_url(settings.redis_url)
    resources.push_async_callback(redis.aclose)
    kafka = new_producer(settings.kafka_bootstrap, client_id="vector")
    await kafka.start()
    resources.push_async_callback(kafka.stop)

    knowledge_channel = service_channel(
        settings.knowledge_grpc_target, service_tokens=app.service_tokens(settings, resources)
    )
    resources.push_async_callback(knowledge_channel.close)
    knowledge = knowledge_pb2_grpc.KnowledgeServiceStub(knowledge_channel)
    access = AccessCache(roles_in_knowledge(knowledge_channel), AccessEpochs(redis), ttl_s=settings.access_cache_ttl_s)
    # Shared batches on a yielding thread pay off for a model whose calls cost milliseconds; the
    # lexical embedder's microseconds are cheaper on the event loop than a hop to a thread.
    bulk_embedder: Embedder = embedder
    if settings.embedding_model == MINILM_MODEL:
        bulk_embedder = BatchingEmbedder(embedder, max_texts=settings.index_batch_texts)
        resources.callback(bulk_embedder.close)
    indexer = Indexer(index, bulk_embedder, access)
    service = VectorService(
        index, embedder, access, indexer, knowledge_source(knowledge), reindex_per_caller=settings.reindex_per_caller
    )

    consumer = EventConsumer(
        bootstrap=settings.kafka_bootstrap,
        group_id=CONSUMER_GROUP,
        topics=[topic_for("knowledge")],
        handlers=indexer.handlers(),
        guard=RedisIdempotency(redis),
        producer=EventProducer(kafka),
        concurrency=settings.index_concurrency,
    )
    await consumer.start()
    resources.push_async_callback(consumer.stop)

    spec = ServiceSpec(
        name="vector",
        version=VERSION,
        grpc_services=[SERVICE_NAME],
        register=lambda server: vector_pb2_grpc.add_VectorServiceServicer_to_server(
            VectorServer(service, embedder.name, embedder.dimensions), server
        ),
    )
    return app.Application(
        spec=spec,
        verifiers=app.platform_verifiers(settings),
        background=[consumer.run, service.reindexing.run],
        dependencies=[redis_dependency(redis)],
    )


def main() -> None:
    app.main(build, VectorSettings, VERSION)
