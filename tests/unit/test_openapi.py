"""services/api/openapi.yaml, the OpenAPI document of the JSON API: generated from the protos
(drift is caught by `contracts.generate --check`), it must describe every route a client can
call through Envoy, with the proto3 JSON names Envoy's transcoder speaks."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from contracts.diff.rules import openapi_operation
from contracts.diff.snapshot import contract_of_dir
from contracts.generate import OUTPUT_DIR, PROTO_DIR


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((OUTPUT_DIR / "openapi.yaml").read_text())
    return loaded


def test_every_route_of_the_protos_is_an_operation(document: dict[str, Any]) -> None:
    operations = {f"{verb} {path}" for path, item in document["paths"].items() for verb in item}
    routes = {
        openapi_operation(route): method.name
        for method in contract_of_dir(PROTO_DIR).methods.values()
        for route in method.routes
    }
    assert routes, "the protos have routes"
    missing = {operation: rpc for operation, rpc in routes.items() if operation not in operations}
    assert not missing, f"routes without an OpenAPI operation: {missing}"


def test_schemas_use_the_json_names_the_edge_speaks(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    request = next(schema for name, schema in schemas.items() if name.endswith("CreateDocumentRequest"))
    assert "spaceId" in request["properties"]
    assert "space_id" not in request["properties"]


def test_request_bodies_may_be_left_out(document: dict[str, Any]) -> None:
    """Envoy's transcoder reads no body as `{}` (schemathesis found such requests accepted
    while the document said a body was required)."""
    bodies = [
        (verb, path, operation["requestBody"])
        for path, item in document["paths"].items()
        for verb, operation in item.items()
        if "requestBody" in operation
    ]
    assert bodies
    assert [(verb, path) for verb, path, body in bodies if body.get("required")] == []
