"""Wiring of the canvas service: settings, the DynamoDB table, Redis, the hub of live
sessions, use cases, the gRPC server, the WebSocket endpoint and the outbox relay.

Any number of instances may run side by side (the native stack runs two behind Envoy): they
share the table and Redis, and nothing else."""

from __future__ import annotations

import functools
from contextlib import AsyncExitStack

import redis.asyncio as aioredis

from services.api.canvas.v1 import canvas_pb2_grpc
from services.canvas import VERSION
from services.canvas.collaboration import MAX_QUEUED, Hub, Session
from services.canvas.live import Presence
from services.canvas.repository import CanvasRepository
from services.canvas.server import SERVICE_NAME, CanvasServer
from services.canvas.service import CanvasService
from services.canvas.websocket import CanvasProtocol
from services.kit import app
from services.kit.access import AccessCache, AccessEpochs, roles_in_knowledge
from services.kit.clients import service_channel
from services.kit.dynamo import dynamodb_dependency, ensure_table, open_client
from services.kit.dynamo_outbox import DynamoOutboxRelay, outbox_table
from services.kit.health import redis_dependency
from services.kit.kafka import EventProducer, new_producer
from services.kit.server import ServiceSpec
from services.kit.settings import ServiceSettings
from services.kit.websocket import WebSocketBridge


class CanvasSettings(ServiceSettings):
    service_name: str = "canvas"
    grpc_port: int = 15055
    # The WebSocket endpoint (/v1/canvas/ws) listens on grpc_host at this port.
    ws_port: int = 15065
    # The DynamoDB table (created on first start).
    table: str = "canvas"
    # Backstop expiry of cached space access (services.kit.access); epochs make changes immediate.
    access_cache_ttl_s: float = 30.0
    # Messages that may wait for one Collaborate client before its session is ended.
    session_queue: int = MAX_QUEUED


async def build(settings: CanvasSettings, resources: AsyncExitStack) -> app.Application:
    dynamodb = await open_client(settings, resources)
    await ensure_table(dynamodb, settings.table)
    await ensure_table(dynamodb, outbox_table(settings.table))
    kafka = new_producer(settings.kafka_bootstrap, client_id="canvas")
    await kafka.start()
    resources.push_async_callback(kafka.stop)
    relay = DynamoOutboxRelay(dynamodb, settings.table, EventProducer(kafka))
    redis = aioredis.Redis.from_url(settings.redis_url)
    resources.push_async_callback(redis.aclose)

    knowledge = service_channel(settings.knowledge_grpc_target, service_tokens=app.service_tokens(settings, resources))
    resources.push_async_callback(knowledge.close)
    access = AccessCache(roles_in_knowledge(knowledge), AccessEpochs(redis), ttl_s=settings.access_cache_ttl_s)

    repository = CanvasRepository(dynamodb, settings.table)
    presence = Presence(redis)
    hub = Hub(redis, repository, presence, access, instance=settings.instance or settings.service_name)
    service = CanvasService(repository, access, presence, hub.publish_change, on_commit=relay.wake)

    verifiers = app.platform_verifiers(settings)
    new_session = functools.partial(
        Session, hub, service, leeway_s=verifiers.users.leeway_s, max_queued=settings.session_queue
    )
    bridge = WebSocketBridge(CanvasProtocol(new_session), verifiers.users)
    websocket = await bridge.open_in(resources, settings.grpc_host, settings.ws_port)
    spec = ServiceSpec(
        name="canvas",
        version=VERSION,
        grpc_services=[SERVICE_NAME],
        register=lambda server: canvas_pb2_grpc.add_CanvasServiceServicer_to_server(
            CanvasServer(service, new_session), server
        ),
    )
    return app.Application(
        spec=spec,
        verifiers=verifiers,
        background=[relay.run, hub.listen, hub.tick_forever, websocket.serve_forever],
        dependencies=[dynamodb_dependency(dynamodb, settings.table), redis_dependency(redis)],
    )


def main() -> None:
    app.main(build, CanvasSettings, VERSION)
