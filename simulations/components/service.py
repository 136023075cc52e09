"""The platform's own services as components: `python -m services.<name>`, health-gated.

A service depends on its stores only, never on another service: it becomes ready without its
peers (keys, service tokens and peer channels are fetched or opened on first use, and retried),
so every service starts in one wave once the stores are up.

Each service reads its settings from KP_* variables (services.kit.settings); the launcher sets
them from the running stores' endpoints and the topology's ports, so a moved stack (a port
offset, another run directory) needs no configuration.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import ClassVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.kit.identity import EDGE, credential_for
from simulations.components.base import Component, Launch, NotReady
from simulations.components.otlp import OtlpReceiver
from simulations.topology import resolve_ports

# Every service component, by name, so services can be told where their peers listen.
SERVICES: dict[str, type[ServiceComponent]] = {}

# Store endpoints a service may use → the setting that carries it.
STORE_SETTINGS = {
    ("postgres", "dsn"): "KP_POSTGRES_DSN",
    ("postgres", "socket_dir"): "KP_POSTGRES_SOCKET_DIR",
    ("redis", "url"): "KP_REDIS_URL",
    ("kafka", "bootstrap"): "KP_KAFKA_BOOTSTRAP",
    ("dynamodb", "url"): "KP_DYNAMODB_URL",
    ("clickhouse", "http"): "KP_CLICKHOUSE_URL",
    ("smtp", "smtp"): "KP_SMTP_ADDRESS",
}


class ServiceComponent(Component):
    """Subclasses set name, default_ports ({"grpc": port}, plus {"ws": port} for a service with
    a WebSocket endpoint, then also websocket_path), depends_on and grpc_services."""

    version = "1.0.0"
    grpc_services: ClassVar[tuple[str, ...]] = ()
    # The path of the service's WebSocket endpoint (Envoy routes it to the "ws" port).
    websocket_path: ClassVar[str] = ""
    # The auth service checks other services' credentials, so it holds the secret they derive from.
    holds_platform_secret: ClassVar[bool] = False
    # A second instance of a service names the first: it runs the same module, as the same
    # service (name, credential, traces), and Envoy balances between them.
    replica_of: ClassVar[str] = ""
    start_timeout_s = 60.0

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.replica_of:
            SERVICES[cls.name] = cls

    @property
    def service(self) -> str:
        """The service this component runs (its own name, or the one it is a replica of)."""
        return self.replica_of or self.name

    def launch(self) -> Launch:
        return Launch(argv=[sys.executable, "-m", f"services.{self.service}"], env=self.environment())

    def environment(self) -> dict[str, str]:
        env = {"KP_SERVICE_NAME": self.service, "KP_INSTANCE": self.name}
        # Every port the service listens on: role "grpc" → KP_GRPC_PORT, "ws" → KP_WS_PORT, ...
        env.update({port_setting(role): str(port) for role, port in self.ctx.ports.items()})
        for (component, endpoint), variable in STORE_SETTINGS.items():
            value = self.ctx.endpoints_of.get(component, {}).get(endpoint)
            if value:
                env[variable] = value
        env.update(peer_targets(SERVICES))
        # The trace receiver starts beside the services, not before them: its address comes from
        # the topology, like a peer's, and spans wait in the exporter until it answers.
        env["KP_OTLP_ENDPOINT"] = f"127.0.0.1:{resolve_ports(OtlpReceiver)['grpc']}"
        env["KP_DATA_DIR"] = str(self.ctx.data_dir)  # the service's own folder in the run directory
        env.update(identity_settings(self.service, self.ctx.platform_secret, holds_secret=self.holds_platform_secret))
        return env

    async def probe(self) -> None:
        """The standard gRPC health check: SERVING once migrations ran and the server is up."""
        try:
            async with grpc.aio.insecure_channel(self.endpoints()["grpc"]) as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError as error:
            raise NotReady(f"health check: {error.code().name} {error.details()}") from error
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise NotReady(f"health is {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")

    def endpoints(self) -> dict[str, str]:
        endpoints = {"grpc": f"127.0.0.1:{self.ctx.port('grpc')}", "grpc_services": ",".join(self.grpc_services)}
        if "ws" in self.ctx.ports:
            endpoints |= {"ws": f"127.0.0.1:{self.ctx.port('ws')}", "ws_path": self.websocket_path}
        if self.replica_of:
            endpoints["replica_of"] = self.replica_of
        return endpoints


def identity_settings(name: str, platform_secret: str, *, holds_secret: bool) -> dict[str, str]:
    """A service's identity (services.kit.identity): its own credential and the edge's, and
    the platform secret itself only for the service that checks credentials."""
    if not platform_secret:
        return {}
    settings = {
        "KP_SERVICE_CREDENTIAL": credential_for(platform_secret, name),
        "KP_EDGE_CREDENTIAL": credential_for(platform_secret, EDGE),
    }
    if holds_secret:
        settings["KP_PLATFORM_SECRET"] = platform_secret
    return settings


def port_setting(role: str) -> str:
    """The service setting that carries the port of a role: "grpc" → KP_GRPC_PORT."""
    return f"KP_{role.upper()}_PORT"


def peer_targets(services: Mapping[str, type[ServiceComponent]]) -> dict[str, str]:
    """KP_<NAME>_GRPC_TARGET for every service, from the topology's (possibly moved) ports."""
    return {
        f"KP_{name.upper()}_GRPC_TARGET": f"127.0.0.1:{resolve_ports(cls)['grpc']}" for name, cls in services.items()
    }


class AuthService(ServiceComponent):
    name = "auth"
    default_ports = {"grpc": 15051}
    depends_on = ("postgres", "redis", "kafka")
    grpc_services = ("auth.v1.AuthService",)
    holds_platform_secret = True


class KnowledgeService(ServiceComponent):
    name = "knowledge"
    default_ports = {"grpc": 15052}
    depends_on = ("postgres", "redis", "kafka")
    grpc_services = ("knowledge.v1.KnowledgeService",)


class VectorService(ServiceComponent):
    name = "vector"
    default_ports = {"grpc": 15053}
    depends_on = ("redis", "kafka")
    grpc_services = ("vector.v1.VectorService",)
    start_timeout_s = 120.0  # loads the embedding model


class ChatService(ServiceComponent):
    """Its peers' addresses (KP_KNOWLEDGE_GRPC_TARGET, KP_VECTOR_GRPC_TARGET) come from
    `peer_targets`, like every service's."""

    name = "chat"
    default_ports = {"grpc": 15054, "ws": 15064}
    depends_on = ("postgres", "redis", "kafka")
    grpc_services = ("chat.v1.ChatService",)
    websocket_path = "/v1/chat/ws"


class CanvasService(ServiceComponent):
    """Two instances run (this and CanvasReplica): collaboration is shown working across
    processes, through Redis, not only inside one."""

    name = "canvas"
    default_ports = {"grpc": 15055, "ws": 15065}
    depends_on = ("dynamodb", "redis", "kafka")
    grpc_services = ("canvas.v1.CanvasService",)
    websocket_path = "/v1/canvas/ws"


class CanvasReplica(CanvasService):
    name = "canvas-2"
    default_ports = {"grpc": 15056, "ws": 15066}
    replica_of = "canvas"


class ActivityService(ServiceComponent):
    """Its ClickHouse database is its own: created and migrated by the service at start."""

    name = "activity"
    default_ports = {"grpc": 15057}
    depends_on = ("clickhouse", "redis", "kafka")
    grpc_services = ("activity.v1.ActivityService",)
