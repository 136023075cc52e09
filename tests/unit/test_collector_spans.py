"""observability.collector.spans: OTLP requests to rows of `otel_traces`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from observability.collector.spans import (
    COLUMNS,
    MalformedPayload,
    attribute_value,
    convert,
    decode_json,
    decode_protobuf,
    span_count,
)

TRACE_ID = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN_ID = bytes.fromhex("eee19b7ec3c1b174")
PARENT_ID = bytes.fromhex("eee19b7ec3c1b173")
START_NS = 1_700_000_000_123_456_000
END_NS = START_NS + 2_500_000


def kv(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def s(text: str) -> AnyValue:
    return AnyValue(string_value=text)


def make_span(name: str = "auth.v1.AuthService/Login", **fields: Any) -> Span:
    base: dict[str, Any] = {
        "trace_id": TRACE_ID,
        "span_id": SPAN_ID,
        "parent_span_id": PARENT_ID,
        "name": name,
        "kind": Span.SPAN_KIND_SERVER,
        "start_time_unix_nano": START_NS,
        "end_time_unix_nano": END_NS,
    }
    base.update(fields)
    return Span(**base)


def request_of(*spans: Span, service: str = "auth") -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[kv("service.name", s(service)), kv("host.name", s("box"))]),
                scope_spans=[
                    ScopeSpans(scope=InstrumentationScope(name="opentelemetry.grpc", version="0.66b1"), spans=spans)
                ],
            )
        ]
    )


def row_of(span: Span) -> dict[str, Any]:
    conversion = convert(request_of(span))
    assert conversion.rejected == 0, conversion.problems
    [row] = conversion.rows
    assert len(row) == len(COLUMNS)
    return dict(zip(COLUMNS, row, strict=True))


def test_row_columns_in_order() -> None:
    span = make_span(
        trace_state="vendor=1",
        status=Status(code=Status.STATUS_CODE_ERROR, message="boom"),
        attributes=[kv("rpc.method", s("Login"))],
    )
    row = convert(request_of(span)).rows[0]
    assert row == (
        datetime.fromtimestamp(START_NS / 1e9, tz=UTC),
        "5b8efff798038103d269b633813fc60c",
        "eee19b7ec3c1b174",
        "eee19b7ec3c1b173",
        "vendor=1",
        "auth.v1.AuthService/Login",
        "Server",
        "auth",
        {"service.name": "auth", "host.name": "box"},
        "opentelemetry.grpc",
        "0.66b1",
        {"rpc.method": "Login"},
        2_500_000,
        "Error",
        "boom",
        [],
        [],
        [],
        [],
        [],
        [],
        [],
    )


def test_timestamp_is_utc_with_microseconds() -> None:
    assert row_of(make_span())["Timestamp"] == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (Span.SPAN_KIND_UNSPECIFIED, "Unspecified"),
        (Span.SPAN_KIND_INTERNAL, "Internal"),
        (Span.SPAN_KIND_SERVER, "Server"),
        (Span.SPAN_KIND_CLIENT, "Client"),
        (Span.SPAN_KIND_PRODUCER, "Producer"),
        (Span.SPAN_KIND_CONSUMER, "Consumer"),
    ],
)
def test_span_kinds(kind: Span.SpanKind.ValueType, name: str) -> None:
    assert row_of(make_span(kind=kind))["SpanKind"] == name


@pytest.mark.parametrize(
    ("code", "name"),
    [(Status.STATUS_CODE_UNSET, "Unset"), (Status.STATUS_CODE_OK, "Ok"), (Status.STATUS_CODE_ERROR, "Error")],
)
def test_status_codes(code: Status.StatusCode.ValueType, name: str) -> None:
    assert row_of(make_span(status=Status(code=code)))["StatusCode"] == name


def test_root_span_has_empty_parent() -> None:
    assert row_of(make_span(parent_span_id=b""))["ParentSpanId"] == ""


def test_negative_duration_is_zero() -> None:
    assert row_of(make_span(end_time_unix_nano=START_NS - 1))["Duration"] == 0


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (s("plain"), "plain"),
        (AnyValue(int_value=42), "42"),
        (AnyValue(int_value=-7), "-7"),
        (AnyValue(bool_value=True), "true"),
        (AnyValue(bool_value=False), "false"),
        (AnyValue(double_value=1.5), "1.5"),
        (AnyValue(double_value=2.0), "2"),
        (AnyValue(double_value=1e-7), "1e-7"),
        (AnyValue(double_value=1e16), "10000000000000000"),
        (AnyValue(double_value=1e21), "1e+21"),
        (AnyValue(bytes_value=b"\x00\x01"), "AAE="),
        (AnyValue(), ""),
        (
            AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1), s("a"), AnyValue(bool_value=True)])),
            '[1,"a",true]',
        ),
        (AnyValue(array_value=ArrayValue()), "[]"),
        (
            AnyValue(kvlist_value=KeyValueList(values=[kv("k", s("v")), kv("n", AnyValue(int_value=2))])),
            '{"k":"v","n":2}',
        ),
    ],
)
def test_attribute_values_are_stringified(value: AnyValue, text: str) -> None:
    assert attribute_value(value) == text
    assert row_of(make_span(attributes=[kv("x", value)]))["SpanAttributes"] == {"x": text}


def test_nested_array_is_json() -> None:
    inner = AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1), AnyValue(int_value=2)]))
    value = AnyValue(array_value=ArrayValue(values=[inner, s("x")]))
    assert json.loads(attribute_value(value)) == [[1, 2], "x"]


def test_events_and_links_are_nested_arrays() -> None:
    other_trace = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
    other_span = bytes.fromhex("b7ad6b7169203331")
    span = make_span(
        events=[
            Span.Event(time_unix_nano=START_NS + 1000, name="retry", attributes=[kv("attempt", AnyValue(int_value=1))]),
            Span.Event(time_unix_nano=START_NS + 2000, name="exception"),
        ],
        links=[Span.Link(trace_id=other_trace, span_id=other_span, trace_state="a=b", attributes=[kv("k", s("v"))])],
    )
    row = row_of(span)
    assert row["Events.Timestamp"] == [
        datetime.fromtimestamp((START_NS + 1000) / 1e9, tz=UTC),
        datetime.fromtimestamp((START_NS + 2000) / 1e9, tz=UTC),
    ]
    assert row["Events.Name"] == ["retry", "exception"]
    assert row["Events.Attributes"] == [{"attempt": "1"}, {}]
    assert row["Links.TraceId"] == ["0af7651916cd43dd8448eb211c80319c"]
    assert row["Links.SpanId"] == ["b7ad6b7169203331"]
    assert row["Links.TraceState"] == ["a=b"]
    assert row["Links.Attributes"] == [{"k": "v"}]


def test_missing_service_name_is_empty() -> None:
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[make_span()])])])
    [row] = convert(request).rows
    assert row[COLUMNS.index("ServiceName")] == ""
    assert row[COLUMNS.index("ScopeName")] == ""


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"trace_id": b"\x00" * 16}, "trace_id"),
        ({"trace_id": b"\x01" * 15}, "trace_id"),
        ({"trace_id": b""}, "trace_id"),
        ({"span_id": b"\x00" * 8}, "span_id"),
        ({"span_id": b"\x01" * 9}, "span_id"),
        ({"parent_span_id": b"\x01" * 3}, "parent_span_id"),
    ],
)
def test_bad_ids_are_rejected_without_spoiling_the_rest(fields: dict[str, bytes], problem: str) -> None:
    request = request_of(make_span("good-1"), make_span("bad", **fields), make_span("good-2"))
    conversion = convert(request)
    assert conversion.rejected == 1
    assert [row[COLUMNS.index("SpanName")] for row in conversion.rows] == ["good-1", "good-2"]
    [message] = conversion.problems
    assert "'bad'" in message
    assert problem in message


def test_problems_are_capped_but_all_rejections_counted() -> None:
    request = request_of(*(make_span(f"bad-{i}", span_id=b"") for i in range(8)))
    conversion = convert(request)
    assert conversion.rejected == 8
    assert conversion.rows == []
    assert len(conversion.problems) == 5


def test_empty_json_object_is_an_empty_request() -> None:
    assert decode_json(b"{}") == ExportTraceServiceRequest()


def test_protobuf_round_trip() -> None:
    request = request_of(make_span(), make_span("second"))
    decoded = decode_protobuf(request.SerializeToString())
    assert decoded == request
    assert span_count(decoded) == 2


def test_decode_json_with_hex_ids() -> None:
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "chat"}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "manual"},
                        "spans": [
                            {
                                "traceId": TRACE_ID.hex(),
                                "spanId": SPAN_ID.hex().upper(),
                                "parentSpanId": "",
                                "name": "ask",
                                "kind": 3,
                                "startTimeUnixNano": str(START_NS),
                                "endTimeUnixNano": str(END_NS),
                                "attributes": [{"key": "n", "value": {"intValue": "3"}}],
                                "links": [
                                    {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331"}
                                ],
                                "status": {"code": 2, "message": "nope"},
                                "unknownField": True,
                            }
                        ],
                    }
                ],
            }
        ]
    }
    request = decode_json(json.dumps(body, indent=2).encode())
    [row] = convert(request).rows
    values = dict(zip(COLUMNS, row, strict=True))
    assert values["TraceId"] == TRACE_ID.hex()
    assert values["SpanId"] == SPAN_ID.hex()
    assert values["ParentSpanId"] == ""
    assert values["SpanKind"] == "Client"
    assert values["ServiceName"] == "chat"
    assert values["SpanAttributes"] == {"n": "3"}
    assert values["StatusCode"] == "Error"
    assert values["Duration"] == END_NS - START_NS
    assert values["Links.TraceId"] == ["0af7651916cd43dd8448eb211c80319c"]


def test_decode_json_matches_protobuf_for_the_same_request() -> None:
    request = request_of(make_span())
    # proto3 JSON has base64 ids; OTLP/JSON has hex. Turn one into the other.
    as_json = json.loads(json_format.MessageToJson(request))
    span = as_json["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["traceId"], span["spanId"], span["parentSpanId"] = TRACE_ID.hex(), SPAN_ID.hex(), PARENT_ID.hex()
    assert decode_json(json.dumps(as_json).encode()) == request


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe\x00garbage",
        b"not json",
        b'{"resourceSpans": 5}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "abc"}]}]}]}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}',
        b"{",
        b"[]",
        b'"resourceSpans"',
        b"null",
    ],
)
def test_decode_json_rejects_garbage(body: bytes) -> None:
    with pytest.raises(MalformedPayload, match="JSON"):
        decode_json(body)


@pytest.mark.parametrize("body", [b"\xff\xff\xff\xff", b"\x0a\x05abc", b"garbage in, garbage out"])
def test_decode_protobuf_rejects_garbage(body: bytes) -> None:
    with pytest.raises(MalformedPayload, match="protobuf"):
        decode_protobuf(body)
