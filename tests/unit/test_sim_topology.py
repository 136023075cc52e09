"""simulations.topology: start waves, subsets and port resolution."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from simulations.components.base import Component
from simulations.platform import PLATFORM
from simulations.topology import Topology, port_override_env, resolve_ports, start_waves


def component(name: str, *depends_on: str, ports: Mapping[str, int] | None = None) -> type[Component]:
    attributes = {"name": name, "version": "1", "default_ports": dict(ports or {}), "depends_on": depends_on}
    return type(f"C_{name.replace('-', '_')}", (Component,), attributes)


def names(waves: Sequence[Sequence[type[Component]]]) -> list[list[str]]:
    return [[c.name for c in wave] for wave in waves]


def test_independent_components_start_together_in_declared_order() -> None:
    assert names(start_waves([component("b"), component("a"), component("c")])) == [["b", "a", "c"]]


def test_waves_follow_dependencies() -> None:
    components = [
        component("envoy", "otlp"),
        component("otlp", "clickhouse"),
        component("kafka"),
        component("clickhouse"),
        component("auth", "kafka", "postgres"),
        component("postgres"),
    ]
    assert names(start_waves(components)) == [["kafka", "clickhouse", "postgres"], ["otlp", "auth"], ["envoy"]]


def test_every_dependency_starts_in_an_earlier_wave() -> None:
    waves = PLATFORM.waves()
    seen: set[str] = set()
    for wave in waves:
        for c in wave:
            assert set(c.depends_on) <= seen, c.name
        seen.update(c.name for c in wave)
    assert seen == set(PLATFORM.names())


def test_unknown_dependency_is_named() -> None:
    with pytest.raises(ValueError, match=r"auth depends on unknown component\(s\): postgres, redis"):
        start_waves([component("kafka"), component("auth", "kafka", "postgres", "redis")])


def test_cycle_is_reported_with_its_members() -> None:
    components = [component("base"), component("a", "b"), component("b", "c"), component("c", "a")]
    with pytest.raises(ValueError, match="dependency cycle") as caught:
        start_waves(components)
    message = str(caught.value)
    assert all(name in message for name in ("a", "b", "c"))
    assert "base" not in message


def test_self_dependency_is_a_cycle() -> None:
    with pytest.raises(ValueError, match="dependency cycle among: loop"):
        start_waves([component("loop", "loop")])


def topology() -> Topology:
    return Topology(
        [
            component("kafka"),
            component("postgres"),
            component("redis"),
            component("otlp", "kafka"),
            component("auth", "postgres", "otlp"),
            component("envoy", "otlp"),
        ],
        settings={"postgres": {"databases": "auth"}},
    )


def test_subset_pulls_in_transitive_dependencies_in_start_order() -> None:
    subset = topology().subset(["auth"])
    assert subset.names() == ["kafka", "postgres", "otlp", "auth"]
    assert subset.settings == {"postgres": {"databases": "auth"}}


def test_subset_of_several_and_of_nothing() -> None:
    assert topology().subset(["redis", "envoy"]).names() == ["kafka", "redis", "otlp", "envoy"]
    assert topology().subset([]).names() == []


def test_subset_of_unknown_component_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="no component named 'nope'; known: kafka, postgres"):
        topology().subset(["nope"])


def test_get() -> None:
    assert topology().get("redis").name == "redis"


WEB = component("web-gateway", ports={"http": 18080, "admin": 19901})


def test_port_override_env_names() -> None:
    assert port_override_env("kafka", "broker") == "KP_KAFKA_BROKER_PORT"
    assert port_override_env("web-gateway", "http") == "KP_WEB_GATEWAY_HTTP_PORT"


def test_default_ports() -> None:
    assert resolve_ports(WEB, environ={}) == {"http": 18080, "admin": 19901}


def test_offset_moves_every_port() -> None:
    assert resolve_ports(WEB, environ={"KP_PORT_OFFSET": "100"}) == {"http": 18180, "admin": 20001}


def test_pinned_port_wins_over_offset() -> None:
    environ = {"KP_PORT_OFFSET": "100", "KP_WEB_GATEWAY_ADMIN_PORT": "29000"}
    assert resolve_ports(WEB, environ=environ) == {"http": 18180, "admin": 29000}


def test_empty_override_is_ignored() -> None:
    assert resolve_ports(WEB, environ={"KP_WEB_GATEWAY_HTTP_PORT": ""}) == {"http": 18080, "admin": 19901}


def test_other_components_overrides_do_not_apply() -> None:
    assert resolve_ports(WEB, environ={"KP_KAFKA_HTTP_PORT": "1"})["http"] == 18080
