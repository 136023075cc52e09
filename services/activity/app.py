"""Wiring of the activity service: settings, ClickHouse (migrated), the writer, the consumer
of every platform topic, the access cache and the gRPC server."""

from __future__ import annotations

from contextlib import AsyncExitStack

import redis.asyncio as aioredis

from services.activity import VERSION
from services.activity.repository import MIGRATIONS, ActivityStore
from services.activity.server import SERVICE_NAME, ActivityServer
from services.activity.service import ActivityService
from services.activity.writer import EventWriter
from services.api.activity.v1 import activity_pb2_grpc
from services.kit import app
from services.kit.access import AccessCache, AccessEpochs, roles_in_knowledge
from services.kit.batch_consumer import BatchEventConsumer
from services.kit.clickhouse import clickhouse_dependency, migrate, open_clickhouse
from services.kit.clients import service_channel
from services.kit.health import redis_dependency
from services.kit.kafka import EventProducer, new_producer
from services.kit.server import ServiceSpec
from services.kit.settings import ServiceSettings

CONSUMER_GROUP = "activity"
# Every platform topic, present and future (see events/v1/envelope.proto).
PLATFORM_TOPICS = r"^[a-z][a-z0-9_]*\.events\.v1$"


class ActivitySettings(ServiceSettings):
    service_name: str = "activity"
    grpc_port: int = 15057
    # The service's own ClickHouse database (created by its migrations).
    clickhouse_database: str = "activity"
    # Events written in one insert at most, and the shortest time between two inserts.
    write_batch: int = 20_000
    write_interval_s: float = 0.1
    # How soon a new platform topic is noticed.
    topic_discovery_s: float = 10.0
    # Backstop expiry of cached space access (services.kit.access); epochs make changes immediate.
    access_cache_ttl_s: float = 30.0


async def build(settings: ActivitySettings, resources: AsyncExitStack) -> app.Application:
    admin = await open_clickhouse(settings.clickhouse_url)
    await migrate(admin, settings.clickhouse_database, MIGRATIONS)
    await admin.close()
    clickhouse = await open_clickhouse(settings.clickhouse_url, settings.clickhouse_database)
    resources.push_async_callback(clickhouse.close)
    store = ActivityStore(clickhouse, settings.clickhouse_database)
    writer = EventWriter(store, max_batch=settings.write_batch, min_interval_s=settings.write_interval_s)

    redis = aioredis.Redis.from_url(settings.redis_url)
    resources.push_async_callback(redis.aclose)
    knowledge = service_channel(settings.knowledge_grpc_target, service_tokens=app.service_tokens(settings, resources))
    resources.push_async_callback(knowledge.close)
    access = AccessCache(roles_in_knowledge(knowledge), AccessEpochs(redis), ttl_s=settings.access_cache_ttl_s)
    service = ActivityService(store, writer, access)

    kafka = new_producer(settings.kafka_bootstrap, client_id="activity")
    await kafka.start()
    resources.push_async_callback(kafka.stop)
    consumer = BatchEventConsumer(
        bootstrap=settings.kafka_bootstrap,
        group_id=CONSUMER_GROUP,
        topic_pattern=PLATFORM_TOPICS,
        handler=service.record_platform_events,
        producer=EventProducer(kafka),
        max_batch=settings.write_batch,
        metadata_max_age_ms=int(settings.topic_discovery_s * 1000),
    )
    await consumer.start()
    resources.push_async_callback(consumer.stop)

    spec = ServiceSpec(
        name="activity",
        version=VERSION,
        grpc_services=[SERVICE_NAME],
        register=lambda server: activity_pb2_grpc.add_ActivityServiceServicer_to_server(
            ActivityServer(service), server
        ),
    )
    return app.Application(
        spec=spec,
        verifiers=app.platform_verifiers(settings),
        background=[writer.run, consumer.run],
        dependencies=[clickhouse_dependency(clickhouse), redis_dependency(redis)],
    )


def main() -> None:
    app.main(build, ActivitySettings, VERSION)
