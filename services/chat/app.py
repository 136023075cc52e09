"""Wiring of the chat service: settings, store, peers, composer, use cases, the gRPC server,
the WebSocket endpoint and the outbox relay."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import redis.asyncio as aioredis

from services.api.chat.v1 import chat_pb2_grpc
from services.chat import VERSION
from services.chat.composer import ExtractiveComposer
from services.chat.peers import KnowledgeAccess, VectorSearch
from services.chat.repository import ChatRepository
from services.chat.server import PUBLIC_METHODS, SERVICE_NAME, ChatServer
from services.chat.service import ChatService
from services.chat.websocket import ChatProtocol
from services.kit import app
from services.kit.access import AccessEpochs
from services.kit.clients import service_channel
from services.kit.health import redis_dependency
from services.kit.server import ServiceSpec
from services.kit.settings import ServiceSettings
from services.kit.websocket import WebSocketBridge

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class ChatSettings(ServiceSettings):
    service_name: str = "chat"
    grpc_port: int = 15054
    # The WebSocket endpoint (/v1/chat/ws) listens on grpc_host at this port.
    ws_port: int = 15064
    vector_grpc_target: str = "127.0.0.1:15053"
    # Backstop expiry of cached space access (services.kit.access); epochs make changes immediate.
    access_cache_ttl_s: float = 30.0


async def build(settings: ChatSettings, resources: AsyncExitStack) -> app.Application:
    store = await app.open_store(settings, "chat", MIGRATIONS, resources)
    sessions, relay = store.sessions, store.relay

    # Peers are called as the caller: these channels forward the caller's token and deadline,
    # and say that the chat service is calling.
    identity = app.service_tokens(settings, resources)
    knowledge = service_channel(settings.knowledge_grpc_target, service_tokens=identity)
    resources.push_async_callback(knowledge.close)
    vector = service_channel(settings.vector_grpc_target, service_tokens=identity)
    resources.push_async_callback(vector.close)
    redis = aioredis.Redis.from_url(settings.redis_url)
    resources.push_async_callback(redis.aclose)
    service = ChatService(
        sessions=sessions,
        repository=ChatRepository(),
        access=KnowledgeAccess(knowledge, AccessEpochs(redis), ttl_s=settings.access_cache_ttl_s),
        search=VectorSearch(vector),
        composer=ExtractiveComposer(),
        on_commit=relay.wake,
    )

    # One set of verifiers (and one JWKS cache) for both ways in.
    verifiers = app.platform_verifiers(settings)
    bridge = WebSocketBridge(ChatProtocol(service, verifiers.users.leeway_s), verifiers.users)
    websocket = await bridge.open_in(resources, settings.grpc_host, settings.ws_port)
    spec = ServiceSpec(
        name="chat",
        version=VERSION,
        grpc_services=[SERVICE_NAME],
        register=lambda server: chat_pb2_grpc.add_ChatServiceServicer_to_server(ChatServer(service), server),
        public_methods=PUBLIC_METHODS,
    )
    # The WebSocket server accepts sockets while its loop runs; cancelling the loop (shutdown)
    # closes every socket (1001, going away) and waits for their handlers.
    return app.Application(
        spec=spec,
        verifiers=verifiers,
        background=[relay.run, websocket.serve_forever],
        dependencies=[store.dependency, redis_dependency(redis)],
    )


def main() -> None:
    app.main(build, ChatSettings, VERSION)
