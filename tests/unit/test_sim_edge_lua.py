"""simulations.edge_lua: the JSON routes and request messages the edge's Lua filter reads,
built from the descriptor set. (The filter itself runs in the real Envoy: see
tests/system/test_hostile_clients.py and test_secrets.py.)"""

from __future__ import annotations

import re

from google.protobuf import descriptor_pb2

from simulations.components.envoy import DESCRIPTOR_SET
from simulations.edge_lua import edge_lua_source, fields_of, path_pattern

SERVICES = ["auth.v1.AuthService", "knowledge.v1.KnowledgeService", "activity.v1.ActivityService"]


def lua_source() -> str:
    return edge_lua_source(DESCRIPTOR_SET.read_bytes(), SERVICES, "access_token")


def test_path_templates_become_anchored_lua_patterns() -> None:
    assert path_pattern("/v1/spaces") == "^/v1/spaces$"
    assert path_pattern("/v1/spaces/{space_id}/documents/{document_id}") == "^/v1/spaces/[^/]+/documents/[^/]+$"
    assert path_pattern("/v1/spaces/{space_id}:reindex") == "^/v1/spaces/[^/]+:reindex$"
    assert path_pattern("/v1/files/{name=**}") == "^/v1/files/.+$"
    assert path_pattern("/v1/a-b.c") == "^/v1/a%-b%.c$"


def test_only_routes_with_a_body_of_the_named_services_are_checked() -> None:
    source = lua_source()
    routes = re.findall(r'\["method"\] = "(\w+)", \["pattern"\] = "([^"]+)", \["body"\] = "([\w.]+)"', source)
    assert ("POST", "^/v1/auth/signup$", "auth.v1.SignUpRequest") in routes
    assert ("PATCH", "^/v1/spaces/[^/]+/documents/[^/]+$", "knowledge.v1.UpdateDocumentRequest") in routes
    assert all(method != "GET" for method, _, _ in routes), "GET has no body"
    assert not any(body.startswith("vector.") for _, _, body in routes), "vector was not named"
    assert "function envoy_on_request" in source
    assert 'TOKEN_PARAMETER = "access_token"' in source


def message(name: str) -> tuple[descriptor_pb2.DescriptorProto, dict[str, descriptor_pb2.DescriptorProto]]:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file
    messages = {}
    for file in files:
        for m in file.message_type:
            messages[f".{file.package}.{m.name}"] = m
            for nested in m.nested_type:
                messages[f".{file.package}.{m.name}.{nested.name}"] = nested
    return messages[f".{name}"], messages


def test_fields_are_known_by_json_and_proto_names_with_their_json_kinds() -> None:
    fields = fields_of(*message("auth.v1.LogoutRequest"))
    assert fields["allSessions"] == fields["all_sessions"] == {"k": "bool"}
    assert fields["refreshToken"] == {"k": "string"}
    tags = fields_of(*message("knowledge.v1.CreateDocumentRequest"))["tags"]
    assert tags == {"k": "string", "r": True}


def test_maps_timestamps_and_nested_messages_have_their_json_forms() -> None:
    event = fields_of(*message("activity.v1.ActivityEvent"))
    assert event["attributes"] == {"k": "map", "m": True, "v": {"k": "string"}}
    assert event["occurredAt"] == {"k": "string"}, "a Timestamp is an RFC 3339 string in JSON"
    assert event["kind"] == {"k": "enum"}
    batch = fields_of(*message("activity.v1.TrackEventsRequest"))
    assert batch["events"] == {"k": "message", "t": "activity.v1.ActivityEvent", "r": True}
