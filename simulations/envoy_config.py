"""Envoy's configuration, generated from the topology and the descriptor set.

One listener serves every externally visible RPC three ways: native gRPC, gRPC-Web (browsers)
and JSON (transcoded from the `google.api.http` annotations). The filter chain is
cors → grpc_web → jwt_authn → grpc_json_transcoder → router, and every request is traced
with Envoy's OpenTelemetry tracer into the OTLP receiver.

Routing:
- the default virtual host routes by gRPC service (`/auth.v1.AuthService/...`); transcoded JSON
  requests are re-routed on their gRPC path after the transcoder rewrites it;
- an upstream with a WebSocket endpoint (chat's `/v1/chat/ws`) has its path routed, upgraded, to
  a plain HTTP/1.1 cluster of its WebSocket port; browsers cannot set headers on a WebSocket,
  so the JWT is also accepted from the `access_token` query parameter;
- each upstream also has a virtual host of its own, `<name>.platform.local`, that routes its
  health checks, so `grpc.health.v1.Health/Check` reaches the upstream you name in the
  authority (gRPC) or Host header (gRPC-Web, JSON);
- internal service-to-service methods are answered 404 at the edge.

This module is pure: it turns a description into a dict that is dumped as YAML.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

UPSTREAM_DOMAIN = "platform.local"
HEALTH_SERVICE = "grpc.health.v1.Health"
ENVOY_SPAN_FLUSH_MS = 1000
JWT_PROVIDER = "platform"
# Where browsers put the token when they cannot set a header (WebSockets).
TOKEN_QUERY_PARAMETER = "access_token"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


@dataclass(frozen=True)
class Upstream:
    """A gRPC server behind Envoy, and its WebSocket endpoint if it has one."""

    name: str
    host: str
    port: int
    grpc_services: Sequence[str]  # fully qualified, e.g. "auth.v1.AuthService"
    websocket_port: int | None = None  # on the same host
    websocket_path: str = ""  # e.g. "/v1/chat/ws"; required with websocket_port

    def __post_init__(self) -> None:
        if self.websocket_port is not None and not self.websocket_path.startswith("/"):
            raise ValueError(f"upstream {self.name}: a WebSocket port needs a websocket_path starting with '/'")

    @property
    def websocket_cluster(self) -> str:
        return f"{self.name}_websocket"


@dataclass(frozen=True)
class JwtSettings:
    issuer: str
    audiences: Sequence[str]
    jwks_path: str  # served through this same listener, transcoded from the auth service
    # Paths that need no token: JSON routes and gRPC methods (e.g. "/auth.v1.AuthService/Login").
    public_paths: Sequence[str] = field(default_factory=tuple)
    public_prefixes: Sequence[str] = field(default_factory=tuple)
    # Short, so a rotated-in key (published ahead by the auth service) is known in seconds.
    jwks_cache_s: int = 3


@dataclass(frozen=True)
class EnvoySettings:
    listen_port: int
    admin_port: int
    descriptor_path: str
    upstreams: Sequence[Upstream]
    jwt: JwtSettings
    otlp_host: str
    otlp_port: int
    allowed_origins: Sequence[str] = ("*",)
    # 127.0.0.1 natively; 0.0.0.0 inside a container, where Docker publishes the port.
    listen_address: str = "127.0.0.1"
    # gRPC methods only other services may call; Envoy answers them 404 at the edge.
    internal_methods: Sequence[str] = ()
    # Share of new requests Envoy starts a trace for (KP_TRACE_SAMPLE_RATIO × 100).
    sample_percent: float = 100.0


def build_config(settings: EnvoySettings) -> dict[str, Any]:
    clusters = [grpc_cluster(u.name, u.host, u.port) for u in settings.upstreams]
    clusters += [
        http_cluster(u.websocket_cluster, u.host, u.websocket_port)
        for u in settings.upstreams
        if u.websocket_port is not None
    ]
    clusters.append(grpc_cluster("otlp_collector", settings.otlp_host, settings.otlp_port))
    clusters.append(http_cluster("envoy_self", "127.0.0.1", settings.listen_port))
    return {
        "admin": {"address": socket_address("127.0.0.1", settings.admin_port)},
        "static_resources": {
            "listeners": [listener(settings)],
            "clusters": clusters,
        },
        "layered_runtime": {
            "layers": [
                {
                    "name": "static",
                    "static_layer": {
                        "overload": {"global_downstream_max_connections": 10000},
                        # Envoy exports spans every 5 s by default (or per 5 finished spans): a
                        # quiet stack's request would take that long to become queryable.
                        "tracing": {"opentelemetry": {"flush_interval_ms": ENVOY_SPAN_FLUSH_MS}},
                    },
                }
            ]
        },
    }


def listener(settings: EnvoySettings) -> dict[str, Any]:
    return {
        "name": "edge",
        "address": socket_address(settings.listen_address, settings.listen_port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": connection_manager(settings),
                    }
                ]
            }
        ],
    }


def connection_manager(settings: EnvoySettings) -> dict[str, Any]:
    return {
        "@type": HCM_TYPE,
        "stat_prefix": "edge",
        "codec_type": "AUTO",
        "strip_any_host_port": True,
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "stream_idle_timeout": "0s",
        "generate_request_id": True,
        "tracing": {
            # New traces only; a sampled traceparent from the caller is always honoured.
            "random_sampling": {"value": settings.sample_percent},
            "spawn_upstream_span": True,
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                    "grpc_service": {"envoy_grpc": {"cluster_name": "otlp_collector"}, "timeout": "1s"},
                    "service_name": "envoy",
                },
            },
        },
        "access_log": [access_log()],
        "route_config": route_config(settings),
        "http_filters": [
            cors_filter(),
            # Before jwt_authn, so its refusals reach gRPC-Web clients as grpc-status trailers.
            {
                "name": "envoy.filters.http.grpc_web",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"},
            },
            jwt_filter(settings.jwt),
            transcoder_filter(settings),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }


def route_config(settings: EnvoySettings) -> dict[str, Any]:
    internal = [internal_route(method) for method in settings.internal_methods]
    websockets = [
        websocket_route(upstream.websocket_path, upstream.websocket_cluster)
        for upstream in settings.upstreams
        if upstream.websocket_port is not None
    ]
    by_service = [
        *internal,
        *websockets,
        *(
            grpc_route(prefix=f"/{service}/", cluster=upstream.name)
            for upstream in settings.upstreams
            for service in upstream.grpc_services
        ),
    ]
    per_upstream_hosts = [
        {
            "name": f"upstream_{upstream.name}",
            "domains": [f"{upstream.name}.{UPSTREAM_DOMAIN}"],
            "routes": [grpc_route(prefix=f"/{HEALTH_SERVICE}/", cluster=upstream.name)],
            "typed_per_filter_config": cors_policy(settings.allowed_origins),
        }
        for upstream in settings.upstreams
    ]
    default_host = {
        "name": "platform",
        "domains": ["*"],
        "routes": by_service,
        "typed_per_filter_config": cors_policy(settings.allowed_origins),
    }
    return {"name": "edge_routes", "virtual_hosts": [*per_upstream_hosts, default_host]}


def grpc_route(prefix: str, cluster: str) -> dict[str, Any]:
    return {
        "match": {"prefix": prefix},
        # Names Envoy's span after the service called (the full path is in its attributes).
        "decorator": {"operation": f"{cluster} {prefix.strip('/')}"},
        "route": {
            "cluster": cluster,
            # Streams (Ask, Subscribe, Collaborate) live as long as the caller wants;
            # unary calls are bounded by the caller's grpc-timeout.
            "timeout": "0s",
            "max_stream_duration": {"grpc_timeout_header_max": "0s"},
        },
    }


def websocket_route(path: str, cluster: str) -> dict[str, Any]:
    """A WebSocket endpoint: the upgrade is passed through, and the socket lives as long as
    its client keeps it (no response timeout)."""
    return {
        "match": {"prefix": path},
        "decorator": {"operation": f"{cluster} {path}"},
        "route": {
            "cluster": cluster,
            "timeout": "0s",
            "upgrade_configs": [{"upgrade_type": "websocket"}],
        },
    }


def internal_route(method: str) -> dict[str, Any]:
    """Service-to-service methods are not part of the public edge."""
    return {
        "match": {"path": method},
        "direct_response": {"status": 404, "body": {"inline_string": f"{method} is internal to the platform"}},
    }


def cors_filter() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.cors",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"},
    }


def cors_policy(origins: Sequence[str]) -> dict[str, Any]:
    return {
        "envoy.filters.http.cors": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
            "allow_origin_string_match": [
                {"safe_regex": {"regex": ".*"}} if origin == "*" else {"exact": origin} for origin in origins
            ],
            "allow_methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
            "allow_headers": (
                "authorization, content-type, x-grpc-web, x-user-agent, grpc-timeout, "
                "traceparent, tracestate, baggage, x-request-id"
            ),
            "expose_headers": "grpc-status, grpc-message, grpc-status-details-bin, x-request-id",
            "max_age": "600",
        }
    }


def jwt_filter(jwt: JwtSettings) -> dict[str, Any]:
    public_rules = [{"match": {"path": path}} for path in jwt.public_paths] + [
        {"match": {"prefix": prefix}} for prefix in jwt.public_prefixes
    ]
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {
                JWT_PROVIDER: {
                    "issuer": jwt.issuer,
                    "audiences": list(jwt.audiences),
                    "remote_jwks": {
                        "http_uri": {
                            "uri": f"http://127.0.0.1{jwt.jwks_path}",
                            "cluster": "envoy_self",
                            "timeout": "2s",
                        },
                        "cache_duration": f"{jwt.jwks_cache_s}s",
                        # The JWKS is fetched lazily and again after a failure (auth may start later).
                        "async_fetch": {"fast_listener": True, "failed_refetch_duration": "1s"},
                        "retry_policy": {"num_retries": 3},
                    },
                    "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                    # Browsers cannot set headers on a WebSocket: they pass the token in the URL.
                    "from_params": [TOKEN_QUERY_PARAMETER],
                    "forward": True,
                    "clock_skew_seconds": 30,
                }
            },
            "bypass_cors_preflight": True,
            "rules": [*public_rules, {"match": {"prefix": "/"}, "requires": {"provider_name": JWT_PROVIDER}}],
        },
    }


def transcoder_filter(settings: EnvoySettings) -> dict[str, Any]:
    services = sorted({service for upstream in settings.upstreams for service in upstream.grpc_services})
    return {
        "name": "envoy.filters.http.grpc_json_transcoder",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
            "proto_descriptor": settings.descriptor_path,
            "services": [*services, HEALTH_SERVICE],
            # Methods without an http annotation (health checks) answer POST /<service>/<method>.
            "auto_mapping": True,
            "convert_grpc_status": True,
            "print_options": {"always_print_primitive_fields": True, "always_print_enums_as_ints": False},
            "request_validation_options": {"reject_unknown_query_parameters": True},
        },
    }


def access_log() -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {
                "json_format": {
                    "time": "%START_TIME%",
                    "method": "%REQ(:METHOD)%",
                    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                    "status": "%RESPONSE_CODE%",
                    "grpc_status": "%GRPC_STATUS%",
                    "upstream": "%UPSTREAM_CLUSTER%",
                    "duration_ms": "%DURATION%",
                    "flags": "%RESPONSE_FLAGS%",
                    "details": "%RESPONSE_CODE_DETAILS%",
                    "traceparent": "%REQ(TRACEPARENT)%",
                }
            },
        },
    }


def grpc_cluster(name: str, host: str, port: int) -> dict[str, Any]:
    return {
        **http_cluster(name, host, port),
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }


def http_cluster(name: str, host: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        # Natively upstreams are IP addresses; under Compose they are container names.
        "type": "STATIC" if is_ip_address(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(host, port)}}]}],
        },
    }


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}
