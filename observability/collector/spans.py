"""OTLP spans → rows of the `otel_traces` table, the way the Collector's ClickHouse exporter
writes them (ids as lowercase hex, kinds and status codes as words, attribute values as
strings). Pure functions, so the mapping is unit-tested without a database.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

COLUMNS = (
    "Timestamp",
    "TraceId",
    "SpanId",
    "ParentSpanId",
    "TraceState",
    "SpanName",
    "SpanKind",
    "ServiceName",
    "ResourceAttributes",
    "ScopeName",
    "ScopeVersion",
    "SpanAttributes",
    "Duration",
    "StatusCode",
    "StatusMessage",
    "Events.Timestamp",
    "Events.Name",
    "Events.Attributes",
    "Links.TraceId",
    "Links.SpanId",
    "Links.TraceState",
    "Links.Attributes",
)

# pdata's names, as the exporter stores them.
SPAN_KINDS = {
    Span.SPAN_KIND_UNSPECIFIED: "Unspecified",
    Span.SPAN_KIND_INTERNAL: "Internal",
    Span.SPAN_KIND_SERVER: "Server",
    Span.SPAN_KIND_CLIENT: "Client",
    Span.SPAN_KIND_PRODUCER: "Producer",
    Span.SPAN_KIND_CONSUMER: "Consumer",
}
STATUS_CODES = {
    Status.STATUS_CODE_UNSET: "Unset",
    Status.STATUS_CODE_OK: "Ok",
    Status.STATUS_CODE_ERROR: "Error",
}

Row = tuple[Any, ...]


class MalformedPayload(ValueError):
    """An OTLP payload that cannot be decoded; the message says what is wrong."""


def decode_protobuf(body: bytes) -> ExportTraceServiceRequest:
    try:
        return ExportTraceServiceRequest.FromString(body)
    except Exception as error:
        raise MalformedPayload(f"not an OTLP ExportTraceServiceRequest in protobuf: {error}") from error


_ID_FIELDS = re.compile(r'"(traceId|spanId|parentSpanId)"\s*:\s*"([0-9a-fA-F]*)"')


def decode_json(body: bytes) -> ExportTraceServiceRequest:
    """OTLP/JSON: like proto3 JSON, except that trace and span ids are hex, not base64."""
    try:
        text = body.decode("utf-8")
        if not text.lstrip().startswith("{"):  # protobuf's parser takes `[]` or `"x"` for an empty message
            raise ValueError("expected a JSON object")
        as_base64 = _ID_FIELDS.sub(
            lambda m: f'"{m.group(1)}":"{base64.b64encode(bytes.fromhex(m.group(2))).decode()}"', text
        )
        return json_format.Parse(as_base64, ExportTraceServiceRequest(), ignore_unknown_fields=True)
    except (UnicodeDecodeError, ValueError, json_format.ParseError) as error:
        raise MalformedPayload(f"not an OTLP ExportTraceServiceRequest in JSON: {error}") from error


def attribute_value(value: AnyValue) -> str:
    """pcommon.Value.AsString(): scalars as text, arrays and maps as JSON."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind is None:
        return ""
    return (
        json.dumps(_plain(value), separators=(",", ":"))
        if kind in ("array_value", "kvlist_value")
        else (_scalar_text(value, kind))
    )


def _scalar_text(value: AnyValue, kind: str) -> str:
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        return _double_text(value.double_value)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return ""


def _double_text(number: float) -> str:
    """pdata's float64AsString: like a JSON number (1.0 -> "1", 1e-07 -> "1e-7"), not Python's repr."""
    if math.isnan(number) or math.isinf(number):
        return "json: unsupported value: " + ("NaN" if math.isnan(number) else "+Inf" if number > 0 else "-Inf")
    shortest = repr(number)  # the shortest text that round-trips, as Go's precision -1
    if number != 0 and (abs(number) < 1e-6 or abs(number) >= 1e21):
        return re.sub(r"e-0(\d)$", r"e-\1", shortest)
    fixed = format(Decimal(shortest), "f")
    return fixed.rstrip("0").rstrip(".") if "." in fixed else fixed


def _plain(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_plain(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: _plain(item.value) for item in value.kvlist_value.values}
    if kind in ("int_value", "double_value", "bool_value", "string_value"):
        return getattr(value, kind)
    return attribute_value(value)


def attributes(pairs: Iterable[KeyValue]) -> dict[str, str]:
    return {pair.key: attribute_value(pair.value) for pair in pairs}


def nanos_to_datetime(nanos: int) -> datetime:
    # clickhouse-connect sends DateTime64(9) from datetimes; keep microseconds (ns are rounded).
    return datetime.fromtimestamp(nanos / 1e9, tz=UTC)


@dataclass
class Conversion:
    """The rows of the usable spans of one request, and what was rejected and why."""

    rows: list[Row] = field(default_factory=list)
    rejected: int = 0
    problems: list[str] = field(default_factory=list)


def convert(request: ExportTraceServiceRequest) -> Conversion:
    """Rows for every valid span; spans with unusable ids are counted and described instead,
    so one bad span never spoils the others."""
    result = Conversion()
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        service = resource.get("service.name", "")
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope
            for span in scope_spans.spans:
                problem = span_problem(span)
                if problem:
                    result.rejected += 1
                    if len(result.problems) < 5:
                        result.problems.append(problem)
                    continue
                result.rows.append(span_row(span, service, resource, scope.name, scope.version))
    return result


def span_problem(span: Span) -> str:
    if len(span.trace_id) != 16 or not any(span.trace_id):
        return f"span {span.name!r}: trace_id must be 16 bytes, not all zero"
    if len(span.span_id) != 8 or not any(span.span_id):
        return f"span {span.name!r}: span_id must be 8 bytes, not all zero"
    if span.parent_span_id and len(span.parent_span_id) != 8:
        return f"span {span.name!r}: parent_span_id must be empty or 8 bytes"
    return ""


def span_row(span: Span, service: str, resource: dict[str, str], scope_name: str, scope_version: str) -> Row:
    return (
        nanos_to_datetime(span.start_time_unix_nano),
        span.trace_id.hex(),
        span.span_id.hex(),
        span.parent_span_id.hex(),
        span.trace_state,
        span.name,
        SPAN_KINDS.get(span.kind, "Unspecified"),
        service,
        resource,
        scope_name,
        scope_version,
        attributes(span.attributes),
        max(0, span.end_time_unix_nano - span.start_time_unix_nano),
        STATUS_CODES.get(span.status.code, "Unset"),
        span.status.message,
        [nanos_to_datetime(event.time_unix_nano) for event in span.events],
        [event.name for event in span.events],
        [attributes(event.attributes) for event in span.events],
        [link.trace_id.hex() for link in span.links],
        [link.span_id.hex() for link in span.links],
        [link.trace_state for link in span.links],
        [attributes(link.attributes) for link in span.links],
    )


def span_count(request: ExportTraceServiceRequest) -> int:
    return sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)
