"""docker-compose.yml is checked against the topology without Docker: every native component
has its compose service, ports move with the same variables and defaults, images are pinned,
health is checked, and the generated files it mounts are current."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from observability.clickhouse import SCHEMA_FILE
from services.kit.clickhouse import sql_statements
from simulations.components.envoy import envoy_binary
from simulations.compose import COMPOSE_FILE, COMPOSE_SERVICE_OF, ROOT, envoy_settings, out_of_date
from simulations.envoy_config import build_config
from simulations.platform import PLATFORM, SERVICES
from simulations.topology import port_override_env

# One port, or a range for a scaled service (one port per replica): each end its own variable.
PORT_MAPPING = re.compile(
    r"^127\.0\.0\.1:\$\{(?P<var>\w+):-(?P<default>\d+)\}(?:-\$\{(?P<last_var>\w+):-(?P<last>\d+)\})?"
    r":(?P<container>\d+)$"
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml with its included files merged in, as Compose sees it."""
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    for included in document.get("include", []):
        part = yaml.safe_load((COMPOSE_FILE.parent / included).read_text())
        duplicated = set(part["services"]) & set(document["services"])
        assert not duplicated, f"{included} redefines {duplicated}"
        document["services"].update(part["services"])
    return document


def test_every_native_component_has_a_compose_service(compose: dict[str, Any]) -> None:
    native = {cls.name for cls in PLATFORM.components}
    assert set(COMPOSE_SERVICE_OF) == native
    assert set(COMPOSE_SERVICE_OF.values()) <= set(compose["services"])


@pytest.mark.parametrize("component", sorted(COMPOSE_SERVICE_OF))
def test_ports_are_loopback_and_move_with_the_native_variables(compose: dict[str, Any], component: str) -> None:
    cls = PLATFORM.get(component)
    published = {}
    for mapping in compose["services"][COMPOSE_SERVICE_OF[component]].get("ports", []):
        match = PORT_MAPPING.match(mapping)
        assert match, f"{component}: port mapping {mapping!r} must be 127.0.0.1:${{KP_..._PORT:-default}}:port"
        published[match["var"]] = int(match["default"])
        if match["last_var"]:
            published[match["last_var"]] = int(match["last"])
    for role, default in cls.default_ports.items():
        if component == "kafka" and role == "controller":
            continue  # the broker's controller listener stays inside the compose network
        variable = port_override_env(component, role)
        assert published.get(variable) == default, f"{component} {role}: expected {variable} default {default}"


@pytest.mark.parametrize("service", sorted(COMPOSE_SERVICE_OF.values()))
def test_images_are_pinned_and_health_is_checked(compose: dict[str, Any], service: str) -> None:
    definition = compose["services"][service]
    image = definition["image"]
    assert ":" in image, f"{service}: image {image} has no tag"
    assert not image.endswith(":latest"), f"{service}: pin a version, not latest"
    if service != "otel-collector":  # the contrib image has no shell to probe with; others wait on it
        assert "healthcheck" in definition, f"{service}: no healthcheck"


def test_the_collector_writes_to_the_schema_file_clickhouse_is_initialised_with(compose: dict[str, Any]) -> None:
    collector_volumes = compose["services"]["otel-collector"]["volumes"]
    config_path = ROOT / collector_volumes[0].split(":")[0]
    exporter = yaml.safe_load(config_path.read_text())["exporters"]["clickhouse"]
    assert exporter["create_schema"] is False, "the collector must use our schema, not create its own"

    init_mounts = [v for v in compose["services"]["clickhouse"]["volumes"] if "docker-entrypoint-initdb.d" in v]
    mounted = [(ROOT / mount.split(":")[0]).resolve() for mount in init_mounts]
    assert mounted == [SCHEMA_FILE.resolve()], "ClickHouse is initialised with observability/schema/otel_traces.sql"

    table = f'"{exporter["database"]}"."{exporter["traces_table_name"]}"'
    statements = sql_statements(SCHEMA_FILE.read_text())
    assert any(s.startswith(f"CREATE TABLE IF NOT EXISTS {table}") for s in statements)
    assert any(f"FROM {table}" in s for s in statements), "the trace-id materialized view reads that table"


def test_the_gateway_waits_for_every_service(compose: dict[str, Any]) -> None:
    waits_for = compose["services"]["envoy"]["depends_on"]
    for service in SERVICES:
        name = COMPOSE_SERVICE_OF[service.name]  # a replica is its service, scaled
        assert waits_for.get(name) == {"condition": "service_healthy"}, f"envoy must wait for {name}"


def test_generated_compose_files_are_current() -> None:
    assert out_of_date() == [], "run `python -m simulations.compose` and commit the result"


def test_the_compose_envoy_config_is_valid_for_envoy(tmp_path: Path) -> None:
    config = build_config(envoy_settings())
    filters = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "http_filters"
    ]
    [transcoder] = [f["typed_config"] for f in filters if f["name"] == "envoy.filters.http.grpc_json_transcoder"]
    transcoder["proto_descriptor"] = str(ROOT / "services" / "api" / "platform.pb")  # the file compose mounts
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def compose_files() -> list[Path]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    return [COMPOSE_FILE, *(COMPOSE_FILE.parent / included for included in document.get("include", []))]


@pytest.mark.parametrize("path", compose_files(), ids=lambda path: path.name)
def test_every_file_compose_refers_to_exists(path: Path) -> None:
    """Bind mounts, build contexts (with their Dockerfile) and includes, each resolved as
    Compose resolves it: relative to the file that names it."""
    document = yaml.safe_load(path.read_text())
    assert path.exists()
    checked = 0
    for name, service in document.get("services", {}).items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (path.parent / source).exists(), f"{path.name}: {name} mounts {source}, which does not exist"
                checked += 1
        build = service.get("build")
        if build is not None:
            context = path.parent / (build if isinstance(build, str) else build["context"])
            assert (context / "Dockerfile").exists(), f"{path.name}: {name} builds {context} without a Dockerfile"
            checked += 1
    assert checked, f"{path.name} refers to no file: the check above would have checked nothing"


def version_of(image: str) -> tuple[int, ...]:
    return tuple(int(part) for part in image.rsplit(":", 1)[1].lstrip("v").split("."))


def test_the_qdrant_image_supports_what_the_vector_service_sends(compose: dict[str, Any]) -> None:
    """The server index asks for ACORN search (Qdrant ≥ 1.16), and qdrant-client works with a
    server whose minor version is within one of its own."""
    server = version_of(compose["services"]["qdrant"]["image"])
    client = tuple(int(part) for part in importlib.metadata.version("qdrant-client").split(".")[:2])
    assert server[:2] >= (1, 16), f"Qdrant {server} has no ACORN search"
    assert server[0] == client[0], f"server {server} vs qdrant-client {client}"
    assert abs(server[1] - client[1]) <= 1, f"server {server} vs qdrant-client {client}"
