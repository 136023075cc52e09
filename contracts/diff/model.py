"""The contract as a reviewer reads it, flattened from a descriptor set (with source info):
every file, message, field, enum value, RPC and HTTP route of our protos, each with where it is
written (file:line) and its leading comment. Only our own files count (not google/*).

Messages of the `events.v1` package are events: their comment names their event_type and
topic ("event_type "knowledge.document.created"; topic "knowledge.events.v1"").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

FD = descriptor_pb2.FieldDescriptorProto
EVENT_PACKAGE = "events.v1"
EVENT_TYPE = re.compile(r'event_type "([^"]+)"')
TOPIC = re.compile(r'topic "([^"]+)"')
# Paths in SourceCodeInfo: FileDescriptorProto.message_type = 4, .enum_type = 5, .service = 6;
# DescriptorProto.field = 2, .nested_type = 3, .enum_type = 4; EnumDescriptorProto.value = 2;
# ServiceDescriptorProto.method = 2.
MESSAGE, ENUM, SERVICE, FIELD, NESTED, NESTED_ENUM, VALUE, METHOD = 4, 5, 6, 2, 3, 4, 2, 2
HTTP_VERBS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class Where:
    file: str
    line: int  # 1-based; 0: unknown

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass(frozen=True)
class Field:
    name: str
    number: int
    type: str  # "string", "int64", "message .pkg.Msg", "enum .pkg.E"
    cardinality: str  # repeated, map, required, optional (explicit presence), singular (implicit presence)
    json_name: str
    oneof: str
    where: Where
    comment: str


@dataclass(frozen=True)
class Message:
    name: str  # full name, e.g. knowledge.v1.Document
    fields: dict[int, Field]
    reserved_numbers: frozenset[int]
    reserved_names: frozenset[str]
    where: Where
    comment: str
    event_type: str = ""  # for events
    topic: str = ""

    @property
    def is_event(self) -> bool:
        return self.name.startswith(f"{EVENT_PACKAGE}.")


@dataclass(frozen=True)
class EnumValue:
    name: str
    number: int
    where: Where


@dataclass(frozen=True)
class Enum:
    name: str
    values: dict[int, EnumValue]
    reserved_numbers: frozenset[int]
    where: Where


@dataclass(frozen=True)
class Route:
    verb: str
    path: str
    body: str
    response_body: str

    def __str__(self) -> str:
        body = f" body={self.body!r}" if self.body else ""
        return f"{self.verb.upper()} {self.path}{body}"


@dataclass(frozen=True)
class Method:
    name: str  # package.Service/Method
    input: str
    output: str
    client_streaming: bool
    server_streaming: bool
    routes: tuple[Route, ...]
    where: Where
    comment: str


@dataclass(frozen=True)
class File:
    name: str
    package: str
    options: dict[str, str]
    where: Where


@dataclass
class Contract:
    files: dict[str, File] = field(default_factory=dict)
    messages: dict[str, Message] = field(default_factory=dict)
    enums: dict[str, Enum] = field(default_factory=dict)
    services: dict[str, Where] = field(default_factory=dict)
    methods: dict[str, Method] = field(default_factory=dict)

    def packages(self) -> set[str]:
        return {file.package for file in self.files.values()}

    def roles(self) -> dict[str, set[str]]:
        """Message name → how it travels: "request", "response", "event" (nested types too)."""
        roles: dict[str, set[str]] = {}
        for method in self.methods.values():
            roles.setdefault(method.input.lstrip("."), set()).add("request")
            roles.setdefault(method.output.lstrip("."), set()).add("response")
        for name, message in self.messages.items():
            if message.is_event:
                roles.setdefault(name, set()).add("event")
        changed = True
        while changed:  # a nested or referenced type travels as its holders do
            changed = False
            for name in self.messages:
                inherited = set().union(*(roles.get(holder, set()) for holder in _holders(self, name)))
                if not inherited <= roles.get(name, set()):
                    roles.setdefault(name, set()).update(inherited)
                    changed = True
        return roles


def _holders(contract: Contract, name: str) -> Iterable[str]:
    """Messages that hold `name`: as a field's type, or as its enclosing message."""
    for holder, message in contract.messages.items():
        refers = any(f.type.endswith(f" .{name}") for f in message.fields.values())
        if holder != name and (refers or name.startswith(f"{holder}.")):
            yield holder


def from_descriptor_set(descriptor_set: descriptor_pb2.FileDescriptorSet, own_files: Iterable[str]) -> Contract:
    """The contract of the files named in `own_files` (their imports are only referenced)."""
    own = set(own_files)
    contract = Contract()
    for file in descriptor_set.file:
        if file.name in own:
            _add_file(contract, file)
    return contract


def _add_file(contract: Contract, file: descriptor_pb2.FileDescriptorProto) -> None:
    locations = {tuple(location.path): location for location in file.source_code_info.location}

    def where(path: tuple[int, ...]) -> Where:
        location = locations.get(path)
        return Where(file.name, location.span[0] + 1 if location is not None else 0)

    def comment(path: tuple[int, ...]) -> str:
        location = locations.get(path)
        return location.leading_comments.strip() if location is not None else ""

    options = {descriptor.name: str(value) for descriptor, value in file.options.ListFields()}
    contract.files[file.name] = File(file.name, file.package, options, where(()))
    prefix = f"{file.package}." if file.package else ""
    for index, message in enumerate(file.message_type):
        _add_message(contract, message, prefix, (MESSAGE, index), where, comment)
    for index, enum in enumerate(file.enum_type):
        _add_enum(contract, enum, prefix, (ENUM, index), where)
    for index, service in enumerate(file.service):
        service_name = f"{prefix}{service.name}"
        contract.services[service_name] = where((SERVICE, index))
        for number, method in enumerate(service.method):
            path = (SERVICE, index, METHOD, number)
            contract.methods[f"{service_name}/{method.name}"] = Method(
                name=f"{service_name}/{method.name}",
                input=method.input_type,
                output=method.output_type,
                client_streaming=method.client_streaming,
                server_streaming=method.server_streaming,
                routes=routes_of(method),
                where=where(path),
                comment=comment(path),
            )


def _add_message(
    contract: Contract,
    message: descriptor_pb2.DescriptorProto,
    prefix: str,
    path: tuple[int, ...],
    where: Any,
    comment: Any,
) -> None:
    name = f"{prefix}{message.name}"
    if message.options.map_entry:
        return
    maps = {f"{name}.{nested.name}" for nested in message.nested_type if nested.options.map_entry}
    fields = {}
    for index, item in enumerate(message.field):
        field_path = (*path, FIELD, index)
        fields[item.number] = Field(
            name=item.name,
            number=item.number,
            type=_type_of(item),
            cardinality=_cardinality(item, maps),
            json_name=item.json_name,
            oneof=_oneof(message, item),
            where=where(field_path),
            comment=comment(field_path),
        )
    reserved = frozenset(n for r in message.reserved_range for n in range(r.start, r.end))
    text = comment(path)
    event_type, topic = EVENT_TYPE.search(text), TOPIC.search(text)
    contract.messages[name] = Message(
        name=name,
        fields=fields,
        reserved_numbers=reserved,
        reserved_names=frozenset(message.reserved_name),
        where=where(path),
        comment=text,
        event_type=event_type.group(1) if event_type else "",
        topic=topic.group(1) if topic else "",
    )
    for index, nested in enumerate(message.nested_type):
        _add_message(contract, nested, f"{name}.", (*path, NESTED, index), where, comment)
    for index, enum in enumerate(message.enum_type):
        _add_enum(contract, enum, f"{name}.", (*path, NESTED_ENUM, index), where)


def _add_enum(
    contract: Contract, enum: descriptor_pb2.EnumDescriptorProto, prefix: str, path: tuple[int, ...], where: Any
) -> None:
    name = f"{prefix}{enum.name}"
    values = {
        value.number: EnumValue(value.name, value.number, where((*path, VALUE, index)))
        for index, value in enumerate(enum.value)
    }
    reserved = frozenset(n for r in enum.reserved_range for n in range(r.start, r.end + 1))
    contract.enums[name] = Enum(name, values, reserved, where(path))


def _type_of(item: descriptor_pb2.FieldDescriptorProto) -> str:
    if item.type == FD.TYPE_MESSAGE:
        return f"message {item.type_name}"
    if item.type == FD.TYPE_ENUM:
        return f"enum {item.type_name}"
    return FD.Type.Name(item.type).removeprefix("TYPE_").lower()


def _cardinality(item: descriptor_pb2.FieldDescriptorProto, maps: set[str]) -> str:
    """Repeated, map, required, or singular with explicit presence (proto3 `optional`, a oneof
    member, a message) or implicit presence: what decides how a missing value reads."""
    if item.label == FD.LABEL_REPEATED:
        return "map" if item.type_name.lstrip(".") in maps else "repeated"
    if item.label == FD.LABEL_REQUIRED:
        return "required"
    if item.proto3_optional or item.HasField("oneof_index") or item.type == FD.TYPE_MESSAGE:
        return "optional (explicit presence)"
    return "singular (implicit presence)"


def _oneof(message: descriptor_pb2.DescriptorProto, item: descriptor_pb2.FieldDescriptorProto) -> str:
    if not item.HasField("oneof_index") or item.proto3_optional:
        return ""
    return message.oneof_decl[item.oneof_index].name


def routes_of(method: descriptor_pb2.MethodDescriptorProto) -> tuple[Route, ...]:
    """The method's `google.api.http` rule and its additional bindings."""
    if not method.options.HasExtension(annotations_pb2.http):
        return ()
    rule = method.options.Extensions[annotations_pb2.http]
    return tuple(_route(binding) for binding in (rule, *rule.additional_bindings))


def _route(rule: Any) -> Route:
    pattern = rule.WhichOneof("pattern")
    if pattern == "custom":
        verb, path = rule.custom.kind, rule.custom.path
    else:
        verb, path = pattern or "", getattr(rule, pattern) if pattern else ""
    return Route(verb, path, rule.body, rule.response_body)
