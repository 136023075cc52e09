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

The edge owns the client's address and bounds what a client can hold (`EdgeLimits`):
- it overwrites `x-forwarded-for` with the peer it accepted and adds the edge credential
  (`x-edge-credential`, read from Envoy's environment, never written into this file), so the
  services believe that address and nobody else's; a client's `x-service-token` is dropped;
- headers must arrive within a bound, a stalled request or response is cut by the idle
  timeout, a unary call has a total bound, streams have a longer idle bound; one connection
  may hold a bounded number of streams; each service has circuit breakers sized for it; the
  overload manager caps connections and sheds load before Envoy runs out of memory;
- oversized JSON bodies answer 413 and oversized headers 431, saying the limit;
- one CORS policy (configured origins) covers every route kind: gRPC-Web, JSON (preflights
  included) and WebSocket upgrades (whose Origin browsers do not let the server's CORS
  headers guard, so a disallowed one is refused);
- the access log records paths without their query strings (a WebSocket may carry its token
  there).

This module is pure: it turns a description into a dict that is dumped as YAML.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2

from services.kit.server import MAX_STREAMS_PER_CONNECTION

UPSTREAM_DOMAIN = "platform.local"
HEALTH_SERVICE = "grpc.health.v1.Health"
ENVOY_SPAN_FLUSH_MS = 1000
JWT_PROVIDER = "platform"
# Where browsers put the token when they cannot set a header (WebSockets): a subprotocol entry
# "access_token.<JWT>" in Sec-WebSocket-Protocol keeps it out of the URL; the query parameter
# is accepted too, and never logged.
TOKEN_QUERY_PARAMETER = "access_token"
TOKEN_SUBPROTOCOL_PREFIX = "access_token."
# The environment variable that holds the edge credential in Envoy's process.
EDGE_CREDENTIAL_ENV = "KP_EDGE_CREDENTIAL"
# Browser origins allowed by default: the web client's development server.
DEFAULT_ALLOWED_ORIGINS = ("http://localhost:3000", "http://127.0.0.1:3000")
# Headers through which the edge speaks to the services (services.kit.identity).
FORWARDED_FOR = "x-forwarded-for"
EDGE_CREDENTIAL = "x-edge-credential"
SERVICE_TOKEN = "x-service-token"
FORMATTERS = "type.googleapis.com/envoy.extensions.formatter"
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
    # More instances of the same service on the same host: (gRPC port, WebSocket port), each
    # load-balanced with the first.
    replicas: Sequence[tuple[int, int | None]] = ()

    def __post_init__(self) -> None:
        if self.websocket_port is not None and not self.websocket_path.startswith("/"):
            raise ValueError(f"upstream {self.name}: a WebSocket port needs a websocket_path starting with '/'")

    @property
    def websocket_cluster(self) -> str:
        return f"{self.name}_websocket"

    @property
    def grpc_ports(self) -> list[int]:
        return [self.port, *(grpc for grpc, _ in self.replicas)]

    @property
    def websocket_ports(self) -> list[int]:
        return [port for port in (self.websocket_port, *(ws for _, ws in self.replicas)) if port is not None]


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
class EdgeLimits:
    """What one request, stream or client may take at the edge (the README's "Limits")."""

    request_headers_kb: int = 16  # larger: 431
    json_body_bytes: int = 1024 * 1024  # larger: 413 (gRPC messages: 4 MiB, checked by the services)
    headers_timeout_s: int = 10  # a request's headers must arrive within this
    idle_timeout_s: int = 30  # a request or response that stalls this long is cut
    unary_timeout_s: int = 60  # longest a unary call may take once its request arrived
    stream_idle_timeout_s: int = 300  # streams and WebSockets (they ping) may idle this long
    connection_idle_timeout_s: int = 300
    streams_per_connection: int = 128
    requests_per_service: int = 4096  # in flight to one service (its circuit breaker)
    downstream_connections: int = 10_000
    heap_bytes: int = 512 * 1024 * 1024

    @property
    def json_body_text(self) -> str:
        return size_text(self.json_body_bytes)


def size_text(size: int) -> str:
    return f"{size // (1024 * 1024)} MiB" if size % (1024 * 1024) == 0 else f"{size // 1024} KiB"


@dataclass(frozen=True)
class EnvoySettings:
    listen_port: int
    admin_port: int
    descriptor_path: str
    upstreams: Sequence[Upstream]
    jwt: JwtSettings
    otlp_host: str
    otlp_port: int
    allowed_origins: Sequence[str] = DEFAULT_ALLOWED_ORIGINS
    # gRPC paths of the methods that stream (e.g. "/chat.v1.ChatService/Ask"): no total bound.
    streaming_methods: Sequence[str] = ()
    # The edge's Lua filter (simulations.edge_lua): tokens out of URLs, strict JSON bodies.
    edge_lua: str = ""
    limits: EdgeLimits = field(default_factory=EdgeLimits)
    # 127.0.0.1 natively; 0.0.0.0 inside a container, where Docker publishes the port.
    listen_address: str = "127.0.0.1"
    # gRPC methods only other services may call; Envoy answers them 404 at the edge.
    internal_methods: Sequence[str] = ()
    # Share of new requests Envoy starts a trace for (KP_TRACE_SAMPLE_RATIO × 100).
    sample_percent: float = 100.0


def streaming_methods(descriptor_set: bytes) -> list[str]:
    """The gRPC paths of every method that streams requests or responses, from a serialized
    FileDescriptorSet (the transcoder's descriptor file)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set).file
    return sorted(
        f"/{file.package}.{service.name}/{method.name}"
        for file in files
        for service in file.service
        for method in service.method
        if method.client_streaming or method.server_streaming
    )


def build_config(settings: EnvoySettings) -> dict[str, Any]:
    breakers = circuit_breakers(settings.limits)
    clusters = [{**grpc_cluster(u.name, u.host, *u.grpc_ports), **breakers} for u in settings.upstreams]
    clusters += [
        {**http_cluster(u.websocket_cluster, u.host, *u.websocket_ports), **breakers}
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
        "overload_manager": overload_manager(settings.limits),
        "layered_runtime": {
            "layers": [
                {
                    "name": "static",
                    "static_layer": {
                        # Envoy exports spans every 5 s by default (or per 5 finished spans): a
                        # quiet stack's request would take that long to become queryable.
                        "tracing": {"opentelemetry": {"flush_interval_ms": ENVOY_SPAN_FLUSH_MS}},
                    },
                }
            ]
        },
    }


def circuit_breakers(limits: EdgeLimits) -> dict[str, Any]:
    """Requests in flight to one service are bounded, so a flood cannot queue without end;
    the bound is far above what a service answers at full load (streams count too)."""
    return {
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": 1024,
                    "max_pending_requests": 1024,
                    "max_requests": limits.requests_per_service,
                    "max_retries": 3,
                }
            ]
        }
    }


def overload_manager(limits: EdgeLimits) -> dict[str, Any]:
    """Connections are capped; as the heap nears its bound Envoy first shortens idle
    timeouts, then frees memory, and finally answers new requests 503 instead of dying."""
    heap = "envoy.resource_monitors.fixed_heap"
    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": heap,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                    "max_heap_size_bytes": limits.heap_bytes,
                },
            },
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
                    "DownstreamConnectionsConfig",
                    "max_active_downstream_connections": limits.downstream_connections,
                },
            },
        ],
        "actions": [
            {
                "name": "envoy.overload_actions.reduce_timeouts",
                "triggers": [{"name": heap, "scaled": {"scaling_threshold": 0.80, "saturation_threshold": 0.95}}],
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig",
                    "timer_scale_factors": [
                        {"timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE", "min_scale": {"value": 10}},
                        {"timer": "HTTP_DOWNSTREAM_STREAM_IDLE", "min_scale": {"value": 10}},
                    ],
                },
            },
            {"name": "envoy.overload_actions.shrink_heap", "triggers": [{"name": heap, "threshold": {"value": 0.90}}]},
            {
                "name": "envoy.overload_actions.stop_accepting_requests",
                "triggers": [{"name": heap, "threshold": {"value": 0.98}}],
            },
        ],
    }


def listener(settings: EnvoySettings) -> dict[str, Any]:
    return {
        "name": "edge",
        "address": socket_address(settings.listen_address, settings.listen_port),
        # A JSON body is buffered whole (the edge's Lua filter checks it): past this it is
        # refused with 413, not buffered.
        "per_connection_buffer_limit_bytes": settings.limits.json_body_bytes,
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
    limits = settings.limits
    return {
        "@type": HCM_TYPE,
        "stat_prefix": "edge",
        "codec_type": "AUTO",
        "strip_any_host_port": True,
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        # The connection's peer is the client: a client's own X-Forwarded-For is not believed.
        "use_remote_address": True,
        "xff_num_trusted_hops": 0,
        "max_request_headers_kb": limits.request_headers_kb,
        "request_headers_timeout": f"{limits.headers_timeout_s}s",
        "stream_idle_timeout": f"{limits.idle_timeout_s}s",
        "common_http_protocol_options": {
            "idle_timeout": f"{limits.connection_idle_timeout_s}s",
            "max_headers_count": 100,
        },
        "http2_protocol_options": {"max_concurrent_streams": limits.streams_per_connection},
        "local_reply_config": local_replies(limits),
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
            *([edge_lua_filter(settings.edge_lua)] if settings.edge_lua else []),
            transcoder_filter(settings),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }


def route_config(settings: EnvoySettings) -> dict[str, Any]:
    limits = settings.limits
    internal = [internal_route(method) for method in settings.internal_methods]
    websockets = [
        route
        for upstream in settings.upstreams
        if upstream.websocket_port is not None
        for route in websocket_routes(upstream.websocket_path, upstream.websocket_cluster, settings)
    ]
    streams = [
        stream_route(method, upstream.name, limits)
        for upstream in settings.upstreams
        for method in settings.streaming_methods
        if method.lstrip("/").split("/")[0] in upstream.grpc_services
    ]
    by_service = [
        *internal,
        *websockets,
        *streams,
        *(
            grpc_route(prefix=f"/{service}/", cluster=upstream.name, limits=limits)
            for upstream in settings.upstreams
            for service in upstream.grpc_services
        ),
        *catch_all_route(settings.upstreams, limits),
    ]
    per_upstream_hosts = [
        {
            "name": f"upstream_{upstream.name}",
            "domains": [f"{upstream.name}.{UPSTREAM_DOMAIN}"],
            "routes": [grpc_route(prefix=f"/{HEALTH_SERVICE}/", cluster=upstream.name, limits=limits)],
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
    return {
        "name": "edge_routes",
        "virtual_hosts": [*per_upstream_hosts, default_host],
        # What the services believe: the client's address as Envoy saw it, next to the edge's
        # credential; a client's own claims to either, and any service token it sends, are dropped.
        "request_headers_to_add": [
            overwrite(FORWARDED_FOR, "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
            overwrite(EDGE_CREDENTIAL, f"%ENVIRONMENT({EDGE_CREDENTIAL_ENV})%"),
        ],
        "request_headers_to_remove": [SERVICE_TOKEN],
    }


def catch_all_route(upstreams: Sequence[Upstream], limits: EdgeLimits) -> list[dict[str, Any]]:
    """JSON paths have no routes of their own (the transcoder maps them onto gRPC paths after
    the CORS filter has run), and the CORS filter applies its policy, to preflights and
    answers alike, only to a request that has a route. This last route gives every path one.
    Nothing is forwarded by it: the transcoder maps a JSON path onto its gRPC route, or
    answers 404 for one it does not know; gRPC calls of a service no upstream serves reach
    the first upstream, which answers UNIMPLEMENTED."""
    if not upstreams:
        return []
    return [grpc_route(prefix="/", cluster=upstreams[0].name, limits=limits)]


def overwrite(name: str, value: str) -> dict[str, Any]:
    return {"header": {"key": name, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


# A request that never reached an instance (it refused the connection, or reset it before the
# request went out: an instance that died) is sent to another instance, up to twice. Nothing
# is retried that an instance may have started on.
NOT_YET_SENT_RETRY: dict[str, Any] = {
    "retry_on": "connect-failure,refused-stream,reset-before-request",
    "num_retries": 2,
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            },
        }
    ],
    "host_selection_retry_max_attempts": 3,
}


def grpc_route(prefix: str, cluster: str, limits: EdgeLimits) -> dict[str, Any]:
    """A service's unary methods: bounded by the caller's grpc-timeout, at most
    `unary_timeout_s` (streaming methods have routes of their own, before these)."""
    return {
        "match": {"prefix": prefix},
        # Names Envoy's span after the service called (the full path is in its attributes).
        "decorator": {"operation": f"{cluster} {prefix.strip('/')}"},
        "route": {
            "cluster": cluster,
            "timeout": f"{limits.unary_timeout_s}s",
            "max_stream_duration": {"grpc_timeout_header_max": f"{limits.unary_timeout_s}s"},
            "retry_policy": NOT_YET_SENT_RETRY,
        },
    }


def stream_route(method: str, cluster: str, limits: EdgeLimits) -> dict[str, Any]:
    """A streaming method (Ask, Subscribe, Collaborate) lives as long as its caller wants,
    within its grpc-timeout if it sent one, while something moves at least every
    `stream_idle_timeout_s`."""
    return {
        "match": {"path": method},
        "decorator": {"operation": f"{cluster} {method.strip('/').split('/')[0]}"},
        "route": {
            "cluster": cluster,
            "timeout": "0s",
            "idle_timeout": f"{limits.stream_idle_timeout_s}s",
            "max_stream_duration": {"grpc_timeout_header_max": "0s"},
            "retry_policy": NOT_YET_SENT_RETRY,
        },
    }


def websocket_routes(path: str, cluster: str, settings: EnvoySettings) -> list[dict[str, Any]]:
    """A WebSocket endpoint: the upgrade passes when it comes from an allowed origin, or
    without an Origin (not a browser); browsers do not apply CORS to WebSockets, so any
    other origin is refused here. The socket lives while it is used (its server pings)."""
    route = {
        "cluster": cluster,
        "timeout": "0s",
        "idle_timeout": f"{settings.limits.stream_idle_timeout_s}s",
        "upgrade_configs": [{"upgrade_type": "websocket"}],
    }
    # An upgrade is no JSON call: the transcoder (which refuses paths it cannot map) stays out.
    untranscoded = {
        "envoy.filters.http.grpc_json_transcoder": {
            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
            "disabled": True,
        }
    }
    allowed = "|".join(re.escape(origin) for origin in settings.allowed_origins)
    origin_ok = (
        [{"name": "origin", "present_match": False}],
        [{"name": "origin", "string_match": {"safe_regex": {"regex": allowed}}}],
    )
    routes: list[dict[str, Any]] = [
        {
            "match": {"prefix": path, "headers": headers},
            "decorator": {"operation": f"{cluster} {path}"},
            "route": route,
            "typed_per_filter_config": untranscoded,
        }
        for headers in origin_ok
    ]
    routes.append(
        {
            "match": {"prefix": path},
            "direct_response": {"status": 403, "body": {"inline_string": "this origin may not open the WebSocket"}},
            "typed_per_filter_config": untranscoded,
        }
    )
    return routes


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
            "allow_origin_string_match": [{"exact": origin} for origin in origins],
            "allow_methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
            "allow_headers": (
                "authorization, content-type, x-grpc-web, x-user-agent, grpc-timeout, "
                "traceparent, tracestate, baggage, x-request-id"
            ),
            # Envoy answers every preflight itself, allowed or not; none reaches a service.
            "forward_not_matching_preflights": False,
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
                    "from_headers": [
                        {"name": "authorization", "value_prefix": "Bearer "},
                        # Browsers cannot set headers on a WebSocket: they offer the token as a
                        # subprotocol, or (kept out of every log) in the URL.
                        {"name": "sec-websocket-protocol", "value_prefix": TOKEN_SUBPROTOCOL_PREFIX},
                    ],
                    "from_params": [TOKEN_QUERY_PARAMETER],
                    "forward": True,
                    "clock_skew_seconds": 30,
                }
            },
            "bypass_cors_preflight": True,
            "rules": [*public_rules, {"match": {"prefix": "/"}, "requires": {"provider_name": JWT_PROVIDER}}],
        },
    }


def edge_lua_filter(source: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": source},
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
            # A path that maps to no method is 404 here, not passed on to some upstream.
            "request_validation_options": {"reject_unknown_query_parameters": True, "reject_unknown_method": True},
            "max_request_body_size": settings.limits.json_body_bytes,
        },
    }


def local_replies(limits: EdgeLimits) -> dict[str, Any]:
    """Envoy's own refusals of JSON requests take the shape the services' errors have through
    the transcoder ({"code", "message", "details"}), and say what the limit is. A 400 keeps its
    own text (the edge's JSON checks, the transcoder's parse errors). The first mapper leaves
    gRPC and gRPC-Web requests alone: Envoy turns their refusals into grpc-status and
    grpc-message itself. (A JSON request the transcoder already turned into gRPC is told apart
    by the original path the transcoder keeps.)"""
    refusals: list[tuple[int, int, str | None]] = [
        (400, 3, None),
        (413, 3, f"the request body is larger than the JSON API's limit of {limits.json_body_text}"),
        (431, 3, f"the request headers are larger than the limit of {limits.request_headers_kb} KiB"),
        (408, 4, f"the request did not arrive whole: it stalled for {limits.idle_timeout_s} s"),
    ]
    grpc_requests = {
        "filter": {
            "and_filter": {
                "filters": [
                    {
                        "header_filter": {
                            # application/grpc, application/grpc-web, application/grpc-web-text, ...
                            "header": {"name": "content-type", "string_match": {"prefix": "application/grpc"}}
                        }
                    },
                    {"header_filter": {"header": {"name": "x-envoy-original-path", "present_match": False}}},
                ]
            }
        }
    }
    return {
        "mappers": [
            grpc_requests,
            *(
                {
                    "filter": {
                        "status_code_filter": {
                            "comparison": {
                                "op": "EQ",
                                "value": {"default_value": status, "runtime_key": f"edge.local_reply.{status}"},
                            }
                        }
                    },
                    **({"body": {"inline_string": message}} if message else {}),
                    "body_format_override": {
                        "json_format": {"code": code, "message": "%LOCAL_REPLY_BODY%", "details": []},
                        "content_type": "application/json",
                    },
                }
                for status, code, message in refusals
            ),
        ]
    }


def access_log() -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {
                "formatters": [
                    {
                        "name": "envoy.formatter.req_without_query",
                        "typed_config": {"@type": f"{FORMATTERS}.req_without_query.v3.ReqWithoutQuery"},
                    }
                ],
                "json_format": {
                    "time": "%START_TIME%",
                    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                    "method": "%REQ(:METHOD)%",
                    # Without the query string: a WebSocket's token may be in it.
                    "path": "%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                    "status": "%RESPONSE_CODE%",
                    "grpc_status": "%GRPC_STATUS%",
                    "upstream": "%UPSTREAM_CLUSTER%",
                    "duration_ms": "%DURATION%",
                    "flags": "%RESPONSE_FLAGS%",
                    "details": "%RESPONSE_CODE_DETAILS%",
                    "traceparent": "%REQ(TRACEPARENT)%",
                },
            },
        },
    }


def grpc_cluster(name: str, host: str, *ports: int) -> dict[str, Any]:
    """HTTP/2 to a gRPC server (or to each of its instances); a connection carries at most as
    many streams as the kit's servers accept on one, so Envoy opens another instead of having
    streams refused."""
    return {
        **http_cluster(name, host, *ports),
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {"max_concurrent_streams": MAX_STREAMS_PER_CONNECTION}
                },
            }
        },
    }


def http_cluster(name: str, host: str, *ports: int) -> dict[str, Any]:
    """A cluster of one or more instances, round robin. Under Compose the host is a service
    name, resolved to every replica's address."""
    return {
        "name": name,
        # Natively upstreams are IP addresses; under Compose they are container names.
        "type": "STATIC" if is_ip_address(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(host, port)}} for port in ports]}],
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
