"""The Docker Compose side of the topology: which compose service stands for which native
component, and the files compose needs that are derived from our own tables.

    python -m simulations.compose          regenerate simulations/compose/*
    python -m simulations.compose --check  fail when they are out of date

Envoy's compose configuration is built by the same `build_config` as the native one, with
container host names; the PostgreSQL init script creates the same databases as the native
launcher. Tests check docker-compose.yml against the topology statically, so the compose
path stays right on machines that cannot run it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from services.kit.settings import JWT_AUDIENCE, JWT_ISSUER
from simulations.components.envoy import DESCRIPTOR_SET
from simulations.components.service import ServiceComponent, port_setting
from simulations.edge_lua import edge_lua_source
from simulations.envoy_config import (
    TOKEN_QUERY_PARAMETER,
    EnvoySettings,
    JwtSettings,
    Upstream,
    build_config,
    streaming_methods,
)
from simulations.platform import INTERNAL_METHODS, POSTGRES_DATABASES, PUBLIC_PATHS, PUBLIC_PREFIXES, SERVICES
from simulations.topology import port_override_env

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
GENERATED_DIR = Path(__file__).resolve().parent / "compose"

# native component → compose service
COMPOSE_SERVICE_OF = {
    "kafka": "kafka",
    "postgres": "postgres",
    "redis": "redis",
    "clickhouse": "clickhouse",
    "dynamodb": "dynamodb",
    "smtp": "mailpit",
    "otlp": "otel-collector",
    "envoy": "envoy",
    # A replica (canvas-2) is the same compose service, scaled (deploy.replicas).
    **{service.name: service.replica_of or service.name for service in SERVICES},
}

# How a service in the compose network reaches each store (container names, container ports).
STORES_IN_COMPOSE = {
    "KP_POSTGRES_DSN": "postgresql://postgres@postgres:5432",
    "KP_REDIS_URL": "redis://redis:6379/0",
    "KP_KAFKA_BOOTSTRAP": "kafka:29092",
    "KP_DYNAMODB_URL": "http://dynamodb:8000",
    "KP_CLICKHOUSE_URL": "http://clickhouse:8123",
    "KP_SMTP_ADDRESS": "mailpit:1025",
    "KP_OTLP_ENDPOINT": "otel-collector:4317",
}
SERVICE_IMAGE = "knowledge-platform-services:local"

# Identity under Compose (services.kit.identity): every container is one local trust domain,
# so each service derives its own credential from the platform secret; Envoy and the services
# share the edge credential. Override both (environment or .env) anywhere but your own machine.
COMPOSE_PLATFORM_SECRET = "compose-local-platform-secret"
IDENTITY_IN_COMPOSE = {
    "KP_PLATFORM_SECRET": f"${{KP_PLATFORM_SECRET:-{COMPOSE_PLATFORM_SECRET}}}",
    "KP_EDGE_CREDENTIAL": "${KP_EDGE_CREDENTIAL:-compose-local-edge-credential}",
}

# What a service needs beyond the common settings under Compose: the vector service uses the
# Qdrant server there instead of its embedded engine.
COMPOSE_EXTRAS: dict[str, dict[str, dict[str, object]]] = {
    "vector": {
        "environment": {"KP_QDRANT_URL": "http://qdrant:6333"},
        "depends_on": {"qdrant": {"condition": "service_healthy"}},
    },
}

ENVOY_CONTAINER_PORT = 8080
ENVOY_ADMIN_CONTAINER_PORT = 9901
DESCRIPTOR_IN_CONTAINER = "/etc/envoy/platform.pb"


def replicas_of(service: type[ServiceComponent]) -> list[type[ServiceComponent]]:
    """The other instances the topology runs of a service (canvas: canvas-2)."""
    return [other for other in SERVICES if other.replica_of == service.name]


# One compose service per platform service; Envoy's DNS lookup of its name finds every replica.
PRIMARY_SERVICES = tuple(service for service in SERVICES if not service.replica_of)


def envoy_settings() -> EnvoySettings:
    descriptors = DESCRIPTOR_SET.read_bytes()
    services = [name for service in SERVICES for name in service.grpc_services]
    return EnvoySettings(
        listen_address="0.0.0.0",  # inside the container; compose publishes it on 127.0.0.1
        listen_port=ENVOY_CONTAINER_PORT,
        admin_port=ENVOY_ADMIN_CONTAINER_PORT,
        descriptor_path=DESCRIPTOR_IN_CONTAINER,
        upstreams=[
            Upstream(
                service.name,
                service.name,
                service.default_ports["grpc"],
                service.grpc_services,
                websocket_port=service.default_ports.get("ws"),
                websocket_path=service.websocket_path,
            )
            for service in PRIMARY_SERVICES
        ],
        jwt=JwtSettings(
            issuer=JWT_ISSUER,
            audiences=[JWT_AUDIENCE],
            jwks_path="/v1/auth/jwks",
            public_paths=PUBLIC_PATHS,
            public_prefixes=PUBLIC_PREFIXES,
        ),
        otlp_host="otel-collector",
        otlp_port=4317,
        internal_methods=INTERNAL_METHODS,
        streaming_methods=streaming_methods(descriptors),
        edge_lua=edge_lua_source(descriptors, services, TOKEN_QUERY_PARAMETER),
    )


def published_port(service: type[ServiceComponent], role: str) -> str:
    """On 127.0.0.1, the port each native instance has (each movable by its variable): a
    scaled service publishes the range from its first instance's port to its last's, and
    docker gives each replica one of them."""
    number = service.default_ports[role]
    ends = [service, *replicas_of(service)]
    first, last = (
        f"${{{port_override_env(end.name, role)}:-{end.default_ports[role]}}}" for end in (ends[0], ends[-1])
    )
    host = first if len(ends) == 1 else f"{first}-{last}"
    return f"127.0.0.1:{host}:{number}"


def services_compose() -> dict[str, object]:
    """A compose file with one service per platform service, all from the project's image."""
    peers = {f"KP_{s.name.upper()}_GRPC_TARGET": f"{s.name}:{s.default_ports['grpc']}" for s in PRIMARY_SERVICES}
    services: dict[str, object] = {}
    for index, service in enumerate(PRIMARY_SERVICES):
        port = service.default_ports["grpc"]
        replicas = 1 + len(replicas_of(service))
        services[service.name] = {
            "image": SERVICE_IMAGE,
            **({"build": {"context": "../.."}} if index == 0 else {}),
            "command": ["python", "-m", f"services.{service.name}"],
            "environment": {
                "KP_SERVICE_NAME": service.name,
                # Every listener of the service (gRPC, and WebSocket where there is one).
                "KP_GRPC_HOST": "0.0.0.0",
                **{port_setting(role): str(number) for role, number in service.default_ports.items()},
                **STORES_IN_COMPOSE,
                **IDENTITY_IN_COMPOSE,
                **peers,
                **COMPOSE_EXTRAS.get(service.name, {}).get("environment", {}),
            },
            "ports": [published_port(service, role) for role in service.default_ports],
            **({"deploy": {"replicas": replicas}} if replicas > 1 else {}),
            "healthcheck": {
                "test": ["CMD", "python", "-m", "services.kit.healthcheck", f"127.0.0.1:{port}"],
                "interval": "2s",
                "timeout": "5s",
                "retries": 30,
            },
            "depends_on": {
                **{
                    COMPOSE_SERVICE_OF[dependency]: {"condition": "service_healthy"}
                    for dependency in service.depends_on
                    if COMPOSE_SERVICE_OF[dependency] != "otel-collector"
                },
                **COMPOSE_EXTRAS.get(service.name, {}).get("depends_on", {}),
            },
        }
    return {"services": services}


def generated_files() -> dict[str, str]:
    """File name (in simulations/compose/) → content."""
    envoy = "# Generated by `python -m simulations.compose`; do not edit.\n" + yaml.safe_dump(
        build_config(envoy_settings()), sort_keys=False
    )
    postgres = "-- Generated by `python -m simulations.compose`; do not edit.\n" + "".join(
        f'CREATE DATABASE "{name}";\n' for name in POSTGRES_DATABASES
    )
    services = "# Generated by `python -m simulations.compose`; do not edit.\n" + yaml.safe_dump(
        services_compose(), sort_keys=False
    )
    return {"envoy.yaml": envoy, "postgres-init.sql": postgres, "services.yaml": services}


def out_of_date() -> list[str]:
    return [
        name
        for name, content in generated_files().items()
        if not (GENERATED_DIR / name).exists() or (GENERATED_DIR / name).read_text() != content
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if args.check:
        stale = out_of_date()
        if stale:
            print(f"out of date: {', '.join(stale)}; run `python -m simulations.compose` and commit")
            return 1
        print("simulations/compose matches the topology")
        return 0
    GENERATED_DIR.mkdir(exist_ok=True)
    for name, content in generated_files().items():
        (GENERATED_DIR / name).write_text(content)
    print(f"wrote {', '.join(generated_files())} to {GENERATED_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
