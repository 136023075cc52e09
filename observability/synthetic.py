"""Synthetic OTLP span batches: realistic server spans of one trace, for the receiver's tests
and the trace-pipeline benchmarks."""

from __future__ import annotations

import os
import uuid

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span


def attribute(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def export_request(count: int, name: str, now_ns: int) -> trace_service_pb2.ExportTraceServiceRequest:
    """`count` realistic spans (server spans with a handful of attributes) of one trace."""
    trace_id = uuid.uuid4().bytes
    spans = [
        Span(
            trace_id=trace_id,
            span_id=os.urandom(8),
            parent_span_id=os.urandom(8) if n else b"",
            name=name,
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=now_ns - 1_500_000,
            end_time_unix_nano=now_ns,
            attributes=[
                attribute("rpc.system", "grpc"),
                attribute("rpc.service", "knowledge.v1.KnowledgeService"),
                attribute("rpc.method", "GetDocument"),
                attribute("net.peer.ip", "127.0.0.1"),
                KeyValue(key="rpc.grpc.status_code", value=AnyValue(int_value=0)),
            ],
        )
        for n in range(count)
    ]
    resource = Resource(attributes=[attribute("service.name", "bench"), attribute("deployment.environment", "bench")])
    scope = ScopeSpans(scope=InstrumentationScope(name="bench", version="1"), spans=spans)
    return trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[scope])]
    )
