"""The knowledge platform's topology: every component of the stack, in start order.

Adding a component (or, later, a service) means adding it to `COMPONENTS` and, if it needs
something provisioned in a store, a line in `SETTINGS`.
"""

from __future__ import annotations

from services.kit.events import topic_for
from services.kit.settings import JWT_AUDIENCE, JWT_ISSUER
from simulations.components.base import Component
from simulations.components.clickhouse import ClickHouse
from simulations.components.dynamodb import DynamoDB
from simulations.components.envoy import Envoy
from simulations.components.kafka import Kafka
from simulations.components.otlp import OtlpReceiver
from simulations.components.postgres import PostgreSQL
from simulations.components.redis import Redis
from simulations.components.service import (
    ActivityService,
    AuthService,
    CanvasReplica,
    CanvasService,
    ChatService,
    KnowledgeService,
    ServiceComponent,
    VectorService,
)
from simulations.components.smtp import SmtpSink
from simulations.topology import Topology

# Services that keep their state in PostgreSQL: one database each.
POSTGRES_DATABASES = ("auth", "knowledge", "chat", "notifications", "ml")

# Services that publish events: one topic each (see proto/events/v1/envelope.proto).
EVENT_PRODUCERS = ("auth", "knowledge", "chat", "canvas", "notifications", "ml")

# ClickHouse databases provisioned by the launcher: the traces' (its tables are created by the
# receiver's schema). The activity service creates its own database.
CLICKHOUSE_DATABASES = ("otel",)

# Routes Envoy lets through without a token (JSON paths and gRPC methods).
PUBLIC_PATHS = (
    "/v1/auth/signup",
    "/v1/auth/login",
    "/v1/auth/refresh",
    "/v1/auth/logout",
    "/v1/auth/jwks",
    "/auth.v1.AuthService/SignUp",
    "/auth.v1.AuthService/Login",
    "/auth.v1.AuthService/Refresh",
    "/auth.v1.AuthService/Logout",
    "/auth.v1.AuthService/GetJwks",
)
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/",)

# Service-to-service methods that the edge refuses (see the auth and knowledge protos).
INTERNAL_METHODS = (
    "/auth.v1.AuthService/IssueServiceToken",
    "/knowledge.v1.KnowledgeService/CheckAccess",
    "/knowledge.v1.KnowledgeService/ListAccessibleSpaces",
)

# The platform's services, as they are built.
SERVICES: tuple[type[ServiceComponent], ...] = (
    AuthService,
    KnowledgeService,
    VectorService,
    ChatService,
    CanvasService,
    CanvasReplica,
    ActivityService,
)


class Gateway(Envoy):
    """Envoy starts after the services, so its routes answer as soon as it is healthy."""

    depends_on = ("otlp", *(service.name for service in SERVICES))


COMPONENTS: tuple[type[Component], ...] = (
    Kafka,
    PostgreSQL,
    Redis,
    ClickHouse,
    DynamoDB,
    SmtpSink,
    OtlpReceiver,
    *SERVICES,
    Gateway,
)

SETTINGS: dict[str, dict[str, str]] = {
    "kafka": {"topics": ",".join(topic_for(producer) for producer in EVENT_PRODUCERS), "partitions": "3"},
    "postgres": {"databases": ",".join(POSTGRES_DATABASES)},
    "clickhouse": {"databases": ",".join(CLICKHOUSE_DATABASES)},
    "envoy": {
        "jwt_issuer": JWT_ISSUER,
        "jwt_audiences": JWT_AUDIENCE,
        "jwks_path": "/v1/auth/jwks",
        "public_paths": ",".join(PUBLIC_PATHS),
        "public_prefixes": ",".join(PUBLIC_PREFIXES),
        "internal_methods": ",".join(INTERNAL_METHODS),
    },
}

PLATFORM = Topology(components=COMPONENTS, settings=SETTINGS)
