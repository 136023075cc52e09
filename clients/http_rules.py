"""The JSON face of an RPC: its `google.api.http` rule, and a request message as an HTTP request.

Pure functions (no I/O) over the generated descriptors, mirroring what Envoy's
grpc_json_transcoder does on the way in and out:

- `http_rule(method)` reads the method's annotation; a method without one gets the rule of the
  transcoder's `auto_mapping` (`POST /<package>.<Service>/<Method>`, body `*`).
- `build_http_request(method, request)` fills the path template's variables (`{field}`,
  `{field.sub}`, `{field=pattern/*}`; URL-escaped; an empty one is an HttpRuleError), puts the body where the rule says
  (`*`, one field, or none) and every other set field into query parameters: proto3 JSON names
  (lowerCamelCase), nested message fields dotted, repeated fields repeated, enums by name,
  well-known types (Timestamp, Duration, wrappers, FieldMask) in their JSON string form, and
  only the fields that are set (non-default).
- `grpc_error_from_http(...)` turns an error answer back into a gRPC status: Envoy's
  `convert_grpc_status` either writes a `google.rpc.Status` JSON body or, when it cannot render
  the status details (their types are not in its descriptor set), passes the `grpc-status`,
  `grpc-message` and `grpc-status-details-bin` headers through with an empty body. Answers
  Envoy makes itself (JWT rejection, unknown query parameter, no route) carry neither; they are
  mapped from the HTTP status the way gRPC (and Envoy) map a non-gRPC HTTP answer — except
  Envoy's answer to an expired grpc-timeout, which is DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.api import annotations_pb2, http_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2  # noqa: F401  (registers BadRequest, RetryInfo, ...)

# Well-known types whose proto3 JSON form is a single string or number; in a query parameter
# they are written in that form (`?startTime=2024-01-01T00:00:00Z`).
SCALAR_JSON_TYPES = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.BoolValue",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
    }
)
# Well-known types that have no query-parameter form.
UNQUERYABLE_TYPES = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue", "google.protobuf.Any"}
)

_VARIABLE = re.compile(r"\{([^{}=]+)(?:=([^{}]*))?\}")
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class HttpRuleError(ValueError):
    """The request cannot be expressed under the method's HTTP rule (e.g. an unset path field)."""


# ------------------------------------------------------------------ rules


@dataclass(frozen=True)
class Binding:
    """One HTTP binding of a method: verb, path template, where the body goes."""

    verb: str  # "GET", "POST", ...
    template: str  # "/v1/spaces/{space_id}/documents"
    body: str = ""  # "" (no body), "*" (every field not in the path) or a top-level field name
    response_body: str = ""  # "" (the whole response) or the response field that is the body

    @property
    def variables(self) -> tuple[str, ...]:
        """Field paths bound by the path template, e.g. ("space_id", "document_id")."""
        return tuple(match.group(1).strip() for match in _VARIABLE.finditer(self.template))


def http_rule(method: MethodDescriptor) -> Any:
    """The method's `google.api.http` rule (a `google.api.HttpRule`); without an annotation,
    the rule Envoy's transcoder applies under `auto_mapping`."""
    options = method.GetOptions()
    if options.HasExtension(annotations_pb2.http):
        return options.Extensions[annotations_pb2.http]
    return http_pb2.HttpRule(post=f"/{method.containing_service.full_name}/{method.name}", body="*")


def binding_of(rule: Any) -> Binding:
    """The primary binding of an HttpRule (additional_bindings are not used here)."""
    pattern = rule.WhichOneof("pattern")
    if pattern is None:
        raise HttpRuleError("the HttpRule has no pattern")
    if pattern == "custom":
        return Binding(rule.custom.kind.upper(), rule.custom.path, rule.body, rule.response_body)
    return Binding(pattern.upper(), getattr(rule, pattern), rule.body, rule.response_body)


def binding_for(method: MethodDescriptor) -> Binding:
    return binding_of(http_rule(method))


def bindings_for(method: MethodDescriptor) -> list[Binding]:
    """The primary binding followed by any additional_bindings."""
    rule = http_rule(method)
    return [binding_of(rule), *(binding_of(extra) for extra in rule.additional_bindings)]


# --------------------------------------------------------------- requests


@dataclass(frozen=True)
class HttpRequest:
    """An RPC call as the transcoder expects it."""

    method: str
    path: str  # already URL-escaped, without the query string
    query: tuple[tuple[str, str], ...] = ()
    body: Any = None  # a JSON value, or None for no body
    binding: Binding = field(default=Binding("GET", "/"), compare=False)

    @property
    def target(self) -> str:
        """Path and query string, URL-escaped: what goes on the request line."""
        if not self.query:
            return self.path
        return f"{self.path}?{urllib.parse.urlencode(self.query, quote_via=urllib.parse.quote, safe='')}"

    def body_bytes(self) -> bytes | None:
        if self.body is None:
            return None
        return json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode()


def build_http_request(method: MethodDescriptor, request: Message, binding: Binding | None = None) -> HttpRequest:
    """`request` as the HTTP request that Envoy transcodes into exactly this message."""
    if request.DESCRIPTOR.full_name != method.input_type.full_name:
        raise HttpRuleError(
            f"{method.full_name} takes {method.input_type.full_name}, not {request.DESCRIPTOR.full_name}"
        )
    binding = binding or binding_for(method)
    path = fill_template(binding.template, request)
    bound = set(binding.variables)
    if binding.body == "*":
        body: Any = _without_paths(json_format.MessageToDict(request), request.DESCRIPTOR, bound)
        return HttpRequest(binding.verb, path, (), body, binding)
    body = None
    excluded = set(bound)
    if binding.body:
        body = _field_json(request, binding.body)
        excluded.add(binding.body)
    return HttpRequest(binding.verb, path, tuple(query_parameters(request, excluded)), body, binding)


def fill_template(template: str, request: Message) -> str:
    """The path template with every variable replaced by the request's URL-escaped value."""

    def substitute(match: re.Match[str]) -> str:
        field_path, pattern = match.group(1).strip(), match.group(2)
        value = _path_value(request, field_path)
        if not value:
            # An empty segment does not fail at Envoy: the transcoder matches the shorter path of
            # another RPC (…/documents/{document_id} with "" becomes ListDocuments).
            raise HttpRuleError(f"{field_path} is empty: the request cannot be sent as {template}")
        if pattern is None or pattern == "*":
            return urllib.parse.quote(value, safe="")
        if not _matches(pattern, value):
            raise HttpRuleError(f"{field_path}={value!r} does not match the path pattern {pattern!r}")
        # A multi-segment variable keeps its slashes; each segment is escaped.
        return "/".join(urllib.parse.quote(segment, safe="") for segment in value.split("/"))

    return _VARIABLE.sub(substitute, template)


def query_parameters(request: Message, excluded: set[str] | frozenset[str] = frozenset()) -> Iterator[tuple[str, str]]:
    """(name, value) pairs for every set field of `request` not in `excluded` (proto field
    paths such as "space_id" or "filter.kind"), in field-number order."""
    yield from _query(request, "", "", excluded)


def _query(
    message: Message, proto_prefix: str, json_prefix: str, excluded: set[str] | frozenset[str]
) -> Iterator[tuple[str, str]]:
    as_json = json_format.MessageToDict(message, preserving_proto_field_name=True)
    for descriptor, _ in sorted(message.ListFields(), key=lambda item: item[0].number):
        proto_path = proto_prefix + descriptor.name
        if proto_path in excluded:
            continue
        name = json_prefix + descriptor.json_name
        if _is_map(descriptor):
            raise HttpRuleError(f"{proto_path}: map fields cannot be sent as query parameters")
        message_type = descriptor.message_type
        if message_type is not None and message_type.full_name in UNQUERYABLE_TYPES:
            raise HttpRuleError(f"{proto_path}: {message_type.full_name} cannot be sent as a query parameter")
        if message_type is not None and message_type.full_name not in SCALAR_JSON_TYPES:
            if _is_repeated(descriptor):
                raise HttpRuleError(f"{proto_path}: repeated messages cannot be sent as query parameters")
            yield from _query(getattr(message, descriptor.name), proto_path + ".", name + ".", excluded)
            continue
        value = as_json[descriptor.name]
        for item in value if isinstance(value, list) else [value]:
            yield name, _query_text(item)


def _query_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _field_json(request: Message, name: str) -> Any:
    """The JSON form of one top-level field (the `body: "field"` case)."""
    descriptor = request.DESCRIPTOR.fields_by_name.get(name)
    if descriptor is None:
        raise HttpRuleError(f"{request.DESCRIPTOR.full_name} has no field {name!r} (the rule's body)")
    full = json_format.MessageToDict(
        request, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    if name in full:
        return full[name]
    return {} if descriptor.message_type is not None else None


def _without_paths(body: dict[str, Any], descriptor: Any, paths: set[str]) -> dict[str, Any]:
    """`body` (JSON names) without the fields bound by the path (proto field paths)."""
    for path in paths:
        _remove(body, descriptor, path.split("."))
    return body


def _remove(node: dict[str, Any], descriptor: Any, names: Sequence[str]) -> None:
    field_descriptor = descriptor.fields_by_name.get(names[0])
    if field_descriptor is None:
        return
    key = field_descriptor.json_name
    if len(names) == 1 or field_descriptor.message_type is None:
        node.pop(key, None)
        return
    child = node.get(key)
    if isinstance(child, dict):
        _remove(child, field_descriptor.message_type, names[1:])
        if not child:
            node.pop(key)


def _path_value(request: Message, field_path: str) -> str:
    current: Any = request
    descriptor: Any = None
    for name in field_path.split("."):
        if not isinstance(current, Message):
            raise HttpRuleError(f"{field_path}: {name!r} is inside a scalar")
        descriptor = current.DESCRIPTOR.fields_by_name.get(name)
        if descriptor is None:
            raise HttpRuleError(f"{current.DESCRIPTOR.full_name} has no field {name!r} (path variable {field_path})")
        current = getattr(current, name)
    assert descriptor is not None
    if _is_repeated(descriptor) or isinstance(current, Message):
        raise HttpRuleError(f"{field_path}: a path variable must be a singular scalar field")
    if descriptor.enum_type is not None:
        value = descriptor.enum_type.values_by_number.get(current)
        return value.name if value is not None else str(current)
    if isinstance(current, bool):
        return "true" if current else "false"
    if isinstance(current, bytes):
        return base64.urlsafe_b64encode(current).decode()
    return str(current)


def _matches(pattern: str, value: str) -> bool:
    """Whether `value` fits a variable's segment pattern (`*` one segment, `**` any number)."""
    regex = "/".join(
        ".*" if segment == "**" else "[^/]+" if segment == "*" else re.escape(segment) for segment in pattern.split("/")
    )
    return re.fullmatch(regex, value) is not None


def _is_repeated(descriptor: FieldDescriptor) -> bool:
    return bool(descriptor.is_repeated)


def _is_map(descriptor: FieldDescriptor) -> bool:
    message_type = descriptor.message_type
    return _is_repeated(descriptor) and message_type is not None and bool(message_type.GetOptions().map_entry)


# --------------------------------------------------------------- responses


def parse_response(body: Any, response: Message, response_body: str = "") -> Message:
    """Fill `response` from a JSON value (the whole message, or its `response_body` field)."""
    if response_body:
        descriptor = response.DESCRIPTOR.fields_by_name[response_body]
        body = {descriptor.json_name: body}
    json_format.ParseDict(body, response, ignore_unknown_fields=True)
    return response


# ------------------------------------------------------------------ errors


@dataclass(frozen=True)
class HttpError:
    """A failed JSON call as a gRPC status."""

    code: grpc.StatusCode
    message: str
    http_status: int
    status: status_pb2.Status | None = None  # google.rpc.Status with details, when the answer had one


def grpc_code(number: int) -> grpc.StatusCode:
    """The StatusCode of a numeric gRPC code; anything unknown is UNKNOWN."""
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def grpc_code_for_http_status(http_status: int) -> grpc.StatusCode:
    """The gRPC code of an HTTP answer that carries no gRPC status, as gRPC clients (and
    Envoy's local replies to gRPC requests) map it: doc/http-grpc-status-mapping.md."""
    if http_status == 400:
        return grpc.StatusCode.INTERNAL
    if http_status == 401:
        return grpc.StatusCode.UNAUTHENTICATED
    if http_status == 403:
        return grpc.StatusCode.PERMISSION_DENIED
    if http_status == 404:
        return grpc.StatusCode.UNIMPLEMENTED
    if http_status in (429, 502, 503, 504):
        return grpc.StatusCode.UNAVAILABLE
    if 200 <= http_status < 300:
        return grpc.StatusCode.OK
    return grpc.StatusCode.UNKNOWN


def http_status_for_grpc_code(code: grpc.StatusCode) -> int:
    """The HTTP status Envoy's transcoder (convert_grpc_status) answers for a gRPC code."""
    return _HTTP_FOR_CODE.get(code, 500)


_HTTP_FOR_CODE = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def grpc_error_from_http(http_status: int, headers: Mapping[str, str], body: bytes) -> HttpError:
    """The gRPC status of a JSON answer: the `google.rpc.Status` JSON body if there is one,
    else the grpc-status / grpc-message / grpc-status-details-bin headers, else the HTTP status."""
    lowered = {key.lower(): value for key, value in headers.items()}
    status = status_from_json(body)
    if status is not None:
        return HttpError(grpc_code(status.code), status.message, http_status, status)
    if "grpc-status" in lowered:
        code = grpc_code(_int(lowered["grpc-status"]))
        message = decode_grpc_message(lowered.get("grpc-message", ""))
        details = decode_status_details(lowered.get("grpc-status-details-bin", ""))
        return HttpError(code, message, http_status, details)
    text = body.decode("utf-8", errors="replace").strip()
    return HttpError(envoy_deadline_aware(grpc_code_for_http_status(http_status), text), text, http_status)


# What Envoy answers when the deadline the caller sent in grpc-timeout passes first (the routes'
# max_stream_duration honours grpc-timeout): a local reply, HTTP 504 or gRPC UNAVAILABLE.
ENVOY_DEADLINE_TEXT = "downstream duration timeout"


def envoy_deadline_aware(code: grpc.StatusCode, message: str) -> grpc.StatusCode:
    """DEADLINE_EXCEEDED for Envoy's own answer to an expired grpc-timeout, else `code`:
    the caller's deadline passed, whichever of Envoy and the client noticed it first."""
    if message.strip() == ENVOY_DEADLINE_TEXT and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return code


def status_from_json(body: bytes) -> status_pb2.Status | None:
    """A `google.rpc.Status` from a JSON error body (`{"code": 5, "message": ..., "details": [...]}`)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("code"), int):
        return None
    status = status_pb2.Status()
    try:
        json_format.ParseDict(data, status, ignore_unknown_fields=True)
    except json_format.ParseError:  # a detail of a type we cannot resolve: keep code and message
        message = data.get("message")
        status = status_pb2.Status(code=data["code"], message=message if isinstance(message, str) else "")
    return status


def decode_grpc_message(value: str) -> str:
    """grpc-message is percent-encoded UTF-8 on the wire."""
    return urllib.parse.unquote(value, errors="replace")


def decode_status_details(value: str | bytes) -> status_pb2.Status | None:
    """A `google.rpc.Status` from grpc-status-details-bin (base64, padding optional, or raw bytes)."""
    if not value:
        return None
    raw: bytes
    if isinstance(value, str):
        text = value.strip()
        try:
            raw = base64.b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            return None
    else:
        raw = value
    status = status_pb2.Status()
    try:
        status.ParseFromString(raw)
    except DecodeError:
        return None
    return status


def _int(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        return grpc.StatusCode.UNKNOWN.value[0]
