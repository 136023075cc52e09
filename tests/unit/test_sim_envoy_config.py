"""simulations.envoy_config.build_config, checked by structure and by the real Envoy binary."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulations.components.base import ComponentContext
from simulations.components.envoy import DESCRIPTOR_SET, envoy_binary, upstreams_from
from simulations.components.service import ChatService
from simulations.envoy_config import (
    HEALTH_SERVICE,
    JWT_PROVIDER,
    EdgeLimits,
    EnvoySettings,
    JwtSettings,
    Upstream,
    build_config,
    streaming_methods,
)

HTTP2_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def settings(*upstreams: Upstream) -> EnvoySettings:
    return EnvoySettings(
        listen_port=28080,
        admin_port=29901,
        descriptor_path=str(DESCRIPTOR_SET),
        upstreams=upstreams
        or (
            Upstream("auth", "127.0.0.1", 25001, ["auth.v1.AuthService"]),
            Upstream("chat", "127.0.0.1", 25002, ["chat.v1.ChatService"]),
            Upstream("otlp", "127.0.0.1", 24317, []),
        ),
        jwt=JwtSettings(
            issuer="https://auth.platform.local",
            audiences=["platform", "web"],
            jwks_path="/v1/auth/jwks",
            public_paths=["/v1/auth/login", "/auth.v1.AuthService/Login"],
            public_prefixes=["/grpc.health.v1.Health/"],
        ),
        otlp_host="127.0.0.1",
        otlp_port=24317,
        internal_methods=["/chat.v1.ChatService/ListMessages"],
        streaming_methods=["/chat.v1.ChatService/Ask", "/canvas.v1.CanvasService/Collaborate"],
    )


def connection_manager(config: dict[str, Any]) -> dict[str, Any]:
    [listener] = config["static_resources"]["listeners"]
    [chain] = listener["filter_chains"]
    [hcm] = chain["filters"]
    result: dict[str, Any] = hcm["typed_config"]
    return result


def http_filter(config: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [f for f in connection_manager(config)["http_filters"] if f["name"] == name]
    result: dict[str, Any] = found["typed_config"]
    return result


def virtual_hosts(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {host["name"]: host for host in connection_manager(config)["route_config"]["virtual_hosts"]}


def test_filter_chain_order() -> None:
    names = [f["name"] for f in connection_manager(build_config(settings()))["http_filters"]]
    assert names == [
        "envoy.filters.http.cors",
        "envoy.filters.http.grpc_web",  # before jwt_authn: its refusals reach gRPC-Web clients as trailers
        "envoy.filters.http.jwt_authn",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.router",
    ]


def test_every_upstream_has_its_own_virtual_host_for_health() -> None:
    hosts = virtual_hosts(build_config(settings()))
    for name in ("auth", "chat", "otlp"):
        host = hosts[f"upstream_{name}"]
        assert host["domains"] == [f"{name}.platform.local"]
        routes = [(r["match"], r["route"]["cluster"]) for r in host["routes"]]
        assert routes == [({"prefix": f"/{HEALTH_SERVICE}/"}, name)]


def test_default_host_refuses_internal_methods_then_routes_streams_then_by_grpc_service() -> None:
    config = build_config(settings())
    hosts = connection_manager(config)["route_config"]["virtual_hosts"]
    default = hosts[-1]
    assert default["domains"] == ["*"]
    internal, ask, *by_service, catch_all = default["routes"]
    assert internal["match"] == {"path": "/chat.v1.ChatService/ListMessages"}
    assert internal["direct_response"]["status"] == 404
    assert "route" not in internal
    assert (ask["match"], ask["route"]["cluster"]) == ({"path": "/chat.v1.ChatService/Ask"}, "chat")
    routes = [(r["match"]["prefix"], r["route"]["cluster"]) for r in by_service]
    assert routes == [("/auth.v1.AuthService/", "auth"), ("/chat.v1.ChatService/", "chat")]
    assert catch_all["match"] == {"prefix": "/"}, "every path has a route, so CORS applies to JSON paths too"


def test_unary_calls_are_bounded_and_streams_only_when_idle() -> None:
    limits = EdgeLimits()
    default = virtual_hosts(build_config(settings()))["platform"]
    [ask] = [r for r in default["routes"] if r["match"].get("path") == "/chat.v1.ChatService/Ask"]
    assert ask["route"]["timeout"] == "0s", "a stream lives as long as its caller wants"
    assert ask["route"]["idle_timeout"] == f"{limits.stream_idle_timeout_s}s"
    assert ask["route"]["max_stream_duration"] == {"grpc_timeout_header_max": "0s"}
    unary = [r for r in default["routes"] if "prefix" in r["match"] and "route" in r and "headers" not in r["match"]]
    assert unary
    for route in unary:
        assert route["route"]["timeout"] == f"{limits.unary_timeout_s}s"
        assert route["route"]["max_stream_duration"] == {"grpc_timeout_header_max": f"{limits.unary_timeout_s}s"}
    hcm = connection_manager(build_config(settings()))
    assert hcm["request_headers_timeout"] == f"{limits.headers_timeout_s}s"
    assert hcm["stream_idle_timeout"] == f"{limits.idle_timeout_s}s"
    assert hcm["http2_protocol_options"] == {"max_concurrent_streams": limits.streams_per_connection}
    assert hcm["max_request_headers_kb"] == limits.request_headers_kb


def test_streaming_methods_are_read_from_the_descriptor_set() -> None:
    methods = streaming_methods(DESCRIPTOR_SET.read_bytes())
    assert "/chat.v1.ChatService/Ask" in methods
    assert "/canvas.v1.CanvasService/Collaborate" in methods
    assert "/auth.v1.AuthService/Login" not in methods


def test_the_edge_owns_the_client_address_and_speaks_for_it() -> None:
    config = build_config(settings())
    hcm = connection_manager(config)
    assert (hcm["use_remote_address"], hcm["xff_num_trusted_hops"]) == (True, 0)
    routes = hcm["route_config"]
    added = {h["header"]["key"]: (h["header"]["value"], h["append_action"]) for h in routes["request_headers_to_add"]}
    assert added == {
        "x-forwarded-for": ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "OVERWRITE_IF_EXISTS_OR_ADD"),
        "x-edge-credential": ("%ENVIRONMENT(KP_EDGE_CREDENTIAL)%", "OVERWRITE_IF_EXISTS_OR_ADD"),
    }
    assert routes["request_headers_to_remove"] == ["x-service-token"]


def test_each_service_has_circuit_breakers_and_envoy_an_overload_manager() -> None:
    limits = EdgeLimits(requests_per_service=123, downstream_connections=77)
    config = build_config(replace(settings(), limits=limits))
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    for name in ("auth", "chat", "otlp"):
        [threshold] = clusters[name]["circuit_breakers"]["thresholds"]
        assert threshold["max_requests"] == 123
    monitors = {m["name"]: m["typed_config"] for m in config["overload_manager"]["resource_monitors"]}
    assert (
        monitors["envoy.resource_monitors.global_downstream_max_connections"]["max_active_downstream_connections"] == 77
    )
    actions = [a["name"] for a in config["overload_manager"]["actions"]]
    assert actions[-1] == "envoy.overload_actions.stop_accepting_requests"


def test_json_refusals_say_the_limit_and_grpc_ones_are_left_to_envoy() -> None:
    mappers = connection_manager(build_config(settings()))["local_reply_config"]["mappers"]
    first, *by_status = mappers
    assert "body" not in first, "gRPC and gRPC-Web requests keep Envoy's own grpc-status reply"
    bodies = {
        m["filter"]["status_code_filter"]["comparison"]["value"]["default_value"]: m.get("body", {}).get(
            "inline_string"
        )
        for m in by_status
    }
    assert "1 MiB" in bodies[413]
    assert "16 KiB" in bodies[431]
    assert bodies[400] is None, "a 400 keeps its own words (the field at fault), in the same JSON shape"
    assert {m["body_format_override"]["json_format"]["message"] for m in by_status} == {"%LOCAL_REPLY_BODY%"}
    transcoder = http_filter(build_config(settings()), "envoy.filters.http.grpc_json_transcoder")
    assert transcoder["max_request_body_size"] == 1024 * 1024


def test_one_cors_policy_names_its_origins() -> None:
    config = build_config(replace(settings(), allowed_origins=["https://app.example"]))
    for host in virtual_hosts(config).values():
        policy = host["typed_per_filter_config"]["envoy.filters.http.cors"]
        assert policy["allow_origin_string_match"] == [{"exact": "https://app.example"}]
        assert policy["forward_not_matching_preflights"] is False


def test_the_access_log_leaves_query_strings_out() -> None:
    [log] = connection_manager(build_config(settings()))["access_log"]
    fields = log["typed_config"]["log_format"]["json_format"]
    assert fields["path"] == "%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)%"
    assert not any("PATH)%" in value and "WITHOUT_QUERY" not in value for value in fields.values())


def test_jwt_rules_public_first_then_everything_requires_the_provider() -> None:
    jwt = http_filter(build_config(settings()), "envoy.filters.http.jwt_authn")
    rules = jwt["rules"]
    assert rules[:3] == [
        {"match": {"path": "/v1/auth/login"}},
        {"match": {"path": "/auth.v1.AuthService/Login"}},
        {"match": {"prefix": "/grpc.health.v1.Health/"}},
    ]
    assert all("requires" not in rule for rule in rules[:-1])
    assert rules[-1] == {"match": {"prefix": "/"}, "requires": {"provider_name": JWT_PROVIDER}}
    provider = jwt["providers"][JWT_PROVIDER]
    assert provider["issuer"] == "https://auth.platform.local"
    assert provider["audiences"] == ["platform", "web"]
    assert provider["remote_jwks"]["http_uri"]["uri"] == "http://127.0.0.1/v1/auth/jwks"
    assert provider["remote_jwks"]["http_uri"]["cluster"] == "envoy_self"
    assert provider["from_headers"][0] == {"name": "authorization", "value_prefix": "Bearer "}


def test_transcoder_lists_only_upstream_services_and_health() -> None:
    transcoder = http_filter(build_config(settings()), "envoy.filters.http.grpc_json_transcoder")
    assert transcoder["services"] == ["auth.v1.AuthService", "chat.v1.ChatService", HEALTH_SERVICE]
    assert transcoder["proto_descriptor"] == str(DESCRIPTOR_SET)


def test_transcoder_with_no_contract_services_still_has_health() -> None:
    config = build_config(settings(Upstream("otlp", "127.0.0.1", 24317, [])))
    assert http_filter(config, "envoy.filters.http.grpc_json_transcoder")["services"] == [HEALTH_SERVICE]


def test_clusters() -> None:
    clusters = {c["name"]: c for c in build_config(settings())["static_resources"]["clusters"]}
    assert set(clusters) == {"auth", "chat", "otlp", "otlp_collector", "envoy_self"}
    for name in ("auth", "chat", "otlp", "otlp_collector"):
        options = clusters[name]["typed_extension_protocol_options"][HTTP2_OPTIONS]
        assert options["explicit_http_config"] == {"http2_protocol_options": {"max_concurrent_streams": 256}}
    assert "typed_extension_protocol_options" not in clusters["envoy_self"]  # JWKS over plain HTTP/1.1
    endpoint = clusters["chat"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint == {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 25002}}}
    self_endpoint = clusters["envoy_self"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert self_endpoint["address"]["socket_address"]["port_value"] == 28080
    assert {c["type"] for c in clusters.values()} == {"STATIC"}


def test_named_hosts_are_resolved_by_dns() -> None:
    config = build_config(settings(Upstream("auth", "auth-service", 25001, ["auth.v1.AuthService"])))
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert clusters["auth"]["type"] == "STRICT_DNS"
    assert clusters["otlp_collector"]["type"] == "STATIC"


def test_everything_binds_to_loopback_by_default() -> None:
    config = build_config(settings())
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 29901}
    [listener] = config["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 28080}


def envoy_validate(config: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return subprocess.run(
        [
            str(envoy_binary()),
            *("--mode", "validate"),
            *("-c", str(path)),
            "--disable-hot-restart",
            *("--concurrency", "1"),
            *("--log-level", "critical"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def has_envoy() -> None:
    if not envoy_binary().exists():
        pytest.skip(f"no Envoy binary at {envoy_binary()}")
    if not DESCRIPTOR_SET.exists():
        pytest.skip(f"no descriptor set at {DESCRIPTOR_SET}")


@pytest.mark.usefixtures("has_envoy")
def test_real_envoy_accepts_the_generated_config(tmp_path: Path) -> None:
    result = envoy_validate(build_config(settings()), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


@pytest.mark.usefixtures("has_envoy")
def test_real_envoy_rejects_a_service_missing_from_the_descriptor(tmp_path: Path) -> None:
    # Shows the validation above has teeth: the transcoder checks services against platform.pb.
    config = build_config(settings(Upstream("ghost", "127.0.0.1", 25003, ["ghost.v1.GhostService"])))
    result = envoy_validate(config, tmp_path)
    assert result.returncode != 0
    assert "ghost.v1.GhostService" in result.stdout + result.stderr


# ------------------------------------------------------------- WebSocket endpoints

CHAT_WITH_WEBSOCKET = Upstream(
    "chat", "127.0.0.1", 25002, ["chat.v1.ChatService"], websocket_port=25012, websocket_path="/v1/chat/ws"
)


def with_websocket() -> EnvoySettings:
    return settings(Upstream("auth", "127.0.0.1", 25001, ["auth.v1.AuthService"]), CHAT_WITH_WEBSOCKET)


def test_a_websocket_endpoint_gets_a_plain_http1_cluster() -> None:
    clusters = {c["name"]: c for c in build_config(with_websocket())["static_resources"]["clusters"]}
    websocket = clusters["chat_websocket"]
    assert "typed_extension_protocol_options" not in websocket  # upgrades are HTTP/1.1, not HTTP/2
    endpoint = websocket["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint == {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 25012}}}
    assert "typed_extension_protocol_options" in clusters["chat"]  # gRPC stays on HTTP/2
    assert "auth_websocket" not in clusters


def test_the_websocket_path_is_upgraded_from_allowed_origins_before_the_grpc_routes() -> None:
    default = virtual_hosts(build_config(with_websocket()))["platform"]
    internal, no_origin, allowed, refused, *grpc_routes = default["routes"]
    assert internal["match"] == {"path": "/chat.v1.ChatService/ListMessages"}
    assert no_origin["match"] == {"prefix": "/v1/chat/ws", "headers": [{"name": "origin", "present_match": False}]}
    [origin] = allowed["match"]["headers"]
    assert origin["string_match"]["safe_regex"]["regex"] == r"http://localhost:3000|http://127\.0\.0\.1:3000"
    for route in (no_origin, allowed):
        assert route["route"] == {
            "cluster": "chat_websocket",
            "timeout": "0s",
            "idle_timeout": f"{EdgeLimits().stream_idle_timeout_s}s",
            "upgrade_configs": [{"upgrade_type": "websocket"}],
        }
    assert refused["match"] == {"prefix": "/v1/chat/ws"}
    assert refused["direct_response"]["status"] == 403
    assert [r["route"]["cluster"] for r in grpc_routes] == [
        "chat",
        "auth",
        "chat",
        "auth",
    ]  # Ask, by service, preflight


def test_the_jwt_may_come_from_a_subprotocol_or_the_access_token_query_parameter() -> None:
    jwt = http_filter(build_config(with_websocket()), "envoy.filters.http.jwt_authn")
    provider = jwt["providers"][JWT_PROVIDER]
    assert provider["from_params"] == ["access_token"]
    assert provider["from_headers"] == [
        {"name": "authorization", "value_prefix": "Bearer "},
        {"name": "sec-websocket-protocol", "value_prefix": "access_token."},
    ]
    # The WebSocket path is not public: the token is checked at the edge before the upgrade.
    assert jwt["rules"][-1] == {"match": {"prefix": "/"}, "requires": {"provider_name": JWT_PROVIDER}}


def test_a_websocket_port_needs_a_path() -> None:
    with pytest.raises(ValueError, match="websocket_path"):
        Upstream("chat", "127.0.0.1", 25002, ["chat.v1.ChatService"], websocket_port=25012)


def test_upstreams_read_a_published_websocket_endpoint() -> None:
    upstreams = upstreams_from(
        {
            "auth": {"grpc": "127.0.0.1:50051", "grpc_services": "auth.v1.AuthService"},
            "chat": {
                "grpc": "127.0.0.1:50054",
                "grpc_services": "chat.v1.ChatService",
                "ws": "127.0.0.1:50064",
                "ws_path": "/v1/chat/ws",
            },
        }
    )
    assert upstreams == [
        Upstream("auth", "127.0.0.1", 50051, ["auth.v1.AuthService"]),
        Upstream("chat", "127.0.0.1", 50054, ["chat.v1.ChatService"], 50064, "/v1/chat/ws"),
    ]


def test_the_chat_component_publishes_its_websocket_and_passes_every_port(tmp_path: Path) -> None:
    context = ComponentContext(
        name="chat",
        data_dir=tmp_path,
        cache_dir=tmp_path,
        ports={"grpc": 50154, "ws": 50164},
        endpoints_of={"postgres": {"dsn": "postgresql://postgres@127.0.0.1:15532"}},
    )
    chat = ChatService(context)
    assert chat.endpoints() == {
        "grpc": "127.0.0.1:50154",
        "grpc_services": "chat.v1.ChatService",
        "ws": "127.0.0.1:50164",
        "ws_path": "/v1/chat/ws",
    }
    env = chat.environment()
    assert (env["KP_GRPC_PORT"], env["KP_WS_PORT"]) == ("50154", "50164")
    assert env["KP_POSTGRES_DSN"] == "postgresql://postgres@127.0.0.1:15532"
    assert env["KP_KNOWLEDGE_GRPC_TARGET"].startswith("127.0.0.1:")
    assert [u.websocket_path for u in upstreams_from({"chat": chat.endpoints()})] == ["/v1/chat/ws"]


@pytest.mark.usefixtures("has_envoy")
def test_real_envoy_accepts_a_websocket_route(tmp_path: Path) -> None:
    result = envoy_validate(build_config(with_websocket()), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
