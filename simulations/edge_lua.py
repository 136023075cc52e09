"""The edge's Lua filter (edge.lua): a token in the URL moves into the Authorization header,
and JSON request bodies are checked as the proto3 JSON mapping reads them.

Envoy's transcoder parses JSON leniently: it takes a string for a list (as one element),
flattens a list of lists, reads "yes", "1" or "true" as a bool, and drops fields it does not
know. The proto3 JSON mapping refuses all of these, and so does the edge: before the
transcoder, the filter checks each JSON body against the request message of its route. This
module turns the descriptor set into the tables the filter reads. Pure: bytes in, Lua out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

LUA_FILTER = Path(__file__).with_name("edge.lua")

F = descriptor_pb2.FieldDescriptorProto
NUMBER_TYPES = {
    F.TYPE_DOUBLE, F.TYPE_FLOAT, F.TYPE_INT64, F.TYPE_UINT64, F.TYPE_INT32, F.TYPE_FIXED64, F.TYPE_FIXED32,
    F.TYPE_UINT32, F.TYPE_SFIXED32, F.TYPE_SFIXED64, F.TYPE_SINT32, F.TYPE_SINT64,
}  # fmt: skip
# Well-known types have JSON forms of their own (the proto3 JSON mapping).
WELL_KNOWN = {
    "google.protobuf.Timestamp": {"k": "string"},
    "google.protobuf.Duration": {"k": "string"},
    "google.protobuf.FieldMask": {"k": "string"},
    "google.protobuf.StringValue": {"k": "string"},
    "google.protobuf.BytesValue": {"k": "string"},
    "google.protobuf.BoolValue": {"k": "bool"},
    **{
        f"google.protobuf.{name}Value": {"k": "number"}
        for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32")
    },
    **{f"google.protobuf.{name}": {"k": "any"} for name in ("Struct", "Value", "ListValue", "Any", "Empty")},
}


def edge_lua_source(descriptor_set: bytes, services: Iterable[str], token_parameter: str) -> str:
    """The Lua source of the filter for these services' JSON routes."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set).file
    messages = {
        f".{file.package}.{m.name}" if file.package else f".{m.name}": m for file in files for m in all_messages(file)
    }
    wanted = set(services)
    routes = [
        route
        for file in files
        for service in file.service
        if f"{file.package}.{service.name}" in wanted
        for method in service.method
        for route in routes_of(method, messages)
    ]
    # The most literal pattern first: "/v1/spaces/{id}:reindex" before a "/v1/spaces/{id}" would be.
    routes.sort(key=lambda route: -len(route["pattern"].replace("[^/]+", "").replace(".+", "")))
    needed = reachable(sorted({route["body"] for route in routes}), messages)
    schema = {name.lstrip("."): fields_of(messages[name], messages) for name in needed}
    for route in routes:
        route["body"] = route["body"].lstrip(".")
    tables = f"TOKEN_PARAMETER = {lua(token_parameter)}\nROUTES = {lua(routes)}\nMESSAGES = {lua(schema)}\n"
    return f"{tables}\n{LUA_FILTER.read_text()}"


def all_messages(file: descriptor_pb2.FileDescriptorProto) -> list[descriptor_pb2.DescriptorProto]:
    """Top-level messages and, under their dotted names, nested ones."""
    found: list[descriptor_pb2.DescriptorProto] = []

    def walk(message: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        renamed = descriptor_pb2.DescriptorProto()
        renamed.CopyFrom(message)
        renamed.name = f"{prefix}{message.name}"
        found.append(renamed)
        for nested in message.nested_type:
            walk(nested, f"{renamed.name}.")

    for message in file.message_type:
        walk(message, "")
    return found


def routes_of(method: descriptor_pb2.MethodDescriptorProto, messages: Mapping[str, Any]) -> list[dict[str, str]]:
    """The JSON routes of a method that carry a body: verb, path pattern, body message."""
    if method.client_streaming or not method.options.HasExtension(annotations_pb2.http):
        return []
    rule = method.options.Extensions[annotations_pb2.http]
    routes = []
    for binding in (rule, *rule.additional_bindings):
        verb, template = verb_and_path(binding)
        if not binding.body or not template:
            continue
        body_type = method.input_type
        if binding.body != "*":
            [field] = [f for f in messages[method.input_type].field if f.name == binding.body]
            body_type = field.type_name
        routes.append({"method": verb, "pattern": path_pattern(template), "body": body_type})
    return routes


def verb_and_path(binding: http_pb2.HttpRule) -> tuple[str, str]:
    kind = binding.WhichOneof("pattern")
    if kind is None:
        return "", ""
    if kind == "custom":
        return binding.custom.kind, binding.custom.path
    return kind.upper(), getattr(binding, kind)


def path_pattern(template: str) -> str:
    """A google.api.http path template as an anchored Lua pattern."""
    pattern, position = "", 0
    for variable in re.finditer(r"\{[^}]*\}", template):
        pattern += lua_escape(template[position : variable.start()])
        pattern += ".+" if "**" in variable.group() or "/" in variable.group() else "[^/]+"
        position = variable.end()
    return f"^{pattern}{lua_escape(template[position:])}$"


def lua_escape(text: str) -> str:
    return re.sub(r"([().%+\-*?\[\]^$])", r"%\1", text)


def reachable(roots: Sequence[str], messages: Mapping[str, descriptor_pb2.DescriptorProto]) -> list[str]:
    """Every message a body can hold, well-known types excepted (their JSON has its own form)."""
    seen: list[str] = []
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in seen or name.lstrip(".") in WELL_KNOWN:
            continue
        if not messages[name].options.map_entry:  # a map's entries are described by its field
            seen.append(name)
        pending.extend(f.type_name for f in messages[name].field if f.type == F.TYPE_MESSAGE)
    return sorted(seen)


def fields_of(
    message: descriptor_pb2.DescriptorProto, messages: Mapping[str, descriptor_pb2.DescriptorProto]
) -> dict[str, dict[str, Any]]:
    """Field name → spec, under both its JSON name and its proto name (both are accepted)."""
    fields: dict[str, dict[str, Any]] = {}
    for field in message.field:
        entry = messages.get(field.type_name) if field.type == F.TYPE_MESSAGE else None
        if entry is not None and entry.options.map_entry:
            [value] = [f for f in entry.field if f.name == "value"]
            spec = {"k": "map", "m": True, "v": spec_of(value)}
        else:
            spec = spec_of(field)
        fields[field.json_name or field.name] = spec
        fields[field.name] = spec
    return fields


def spec_of(field: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
    repeated = field.label == F.LABEL_REPEATED
    if field.type == F.TYPE_MESSAGE:
        name = field.type_name.lstrip(".")
        spec: dict[str, Any] = dict(WELL_KNOWN.get(name, {"k": "message", "t": name}))
    elif field.type == F.TYPE_BOOL:
        spec = {"k": "bool"}
    elif field.type == F.TYPE_ENUM:
        spec = {"k": "enum"}
    elif field.type in NUMBER_TYPES:
        spec = {"k": "number"}
    else:
        spec = {"k": "string"}
    if repeated:
        spec["r"] = True
    return spec


def lua(value: Any) -> str:
    """A Lua literal of JSON-like data (strings, numbers, booleans, lists, string-keyed dicts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "{" + ", ".join(lua(item) for item in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{json.dumps(key)}] = {lua(item)}" for key, item in value.items()) + "}"
    return str(value)
