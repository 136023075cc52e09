"""Wiring of the knowledge service: settings, store, use cases, server, outbox relay."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import redis.asyncio as aioredis

from services.api.knowledge.v1 import knowledge_pb2_grpc
from services.kit import app
from services.kit.access import AccessEpochs
from services.kit.db import HotReads
from services.kit.health import redis_dependency
from services.kit.server import ServiceSpec
from services.kit.settings import ServiceSettings
from services.knowledge import VERSION
from services.knowledge.repository import KnowledgeRepository
from services.knowledge.server import INTERNAL_METHODS, SERVICE_NAME, KnowledgeServer
from services.knowledge.service import KnowledgeService

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class KnowledgeSettings(ServiceSettings):
    service_name: str = "knowledge"
    grpc_port: int = 15052


async def build(settings: KnowledgeSettings, resources: AsyncExitStack) -> app.Application:
    store = await app.open_store(settings, "knowledge", MIGRATIONS, resources)
    sessions, relay = store.sessions, store.relay

    reads = await HotReads.open(store.dsn)
    resources.push_async_callback(reads.close)
    redis = aioredis.Redis.from_url(settings.redis_url)
    resources.push_async_callback(redis.aclose)
    service = KnowledgeService(
        sessions=sessions,
        repository=KnowledgeRepository(),
        reads=reads,
        epochs=AccessEpochs(redis),
        on_commit=relay.wake,
    )
    spec = ServiceSpec(
        name="knowledge",
        version=VERSION,
        grpc_services=[SERVICE_NAME],
        register=lambda server: knowledge_pb2_grpc.add_KnowledgeServiceServicer_to_server(
            KnowledgeServer(service), server
        ),
        internal_methods=INTERNAL_METHODS,
    )
    # Tokens are verified against the auth service's JWKS, fetched on first use.
    return app.Application(
        spec=spec,
        verifiers=app.platform_verifiers(settings),
        background=[relay.run],
        dependencies=[store.dependency, redis_dependency(redis)],
    )


def main() -> None:
    app.main(build, KnowledgeSettings, VERSION)
