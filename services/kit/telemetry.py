"""OpenTelemetry for a service: one tracer provider, W3C propagation, and the instrumentation
of every call a service makes.

- gRPC: the kit's server boundary makes SERVER spans; its channels make CLIENT spans;
- PostgreSQL: SQLAlchemy's instrumentation (services.kit.db), plus HotReads' own spans;
- Redis and aiohttp: their OpenTelemetry instrumentations, installed here (aiohttp's spans
  record URLs without their query strings: a WebSocket's token may be in one);
- Kafka: the kit's producer and consumer, which carry the context in record headers;
- background loops poll `untraced()`: an idle service makes no traces;
- DynamoDB (and any AWS API): `trace_aws_client`, on botocore's event hooks, because
  aiobotocore's async clients bypass what the botocore instrumentation patches;
- load runs: the baggage entries a load generator sends (`synthetic_request`, `load.run`,
  `load.scenario`) become attributes of every span of the request, in every service it reaches,
  so a run's traces can be selected and told apart from real users'.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.utils import is_instrumentation_enabled, suppress_instrumentation
from opentelemetry.processor.baggage import BaggageSpanProcessor
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_provider: TracerProvider | None = None

# Baggage copied onto spans: only these keys, so a caller cannot add attributes at will.
SPAN_BAGGAGE_KEYS = frozenset({"synthetic_request", "load.run", "load.scenario"})


@dataclass(frozen=True)
class TelemetrySettings:
    service_name: str
    service_version: str
    environment: str
    otlp_endpoint: str  # host:port of an OTLP/gRPC receiver
    sample_ratio: float = 1.0
    instance: str = ""  # which of a service's instances (service.instance.id), when it runs several
    enabled: bool = True


def resource_for(settings: TelemetrySettings) -> Resource:
    return Resource.create(
        {
            "service.name": settings.service_name,
            "service.version": settings.service_version,
            "deployment.environment": settings.environment,
            **({"service.instance.id": settings.instance} if settings.instance else {}),
        }
    )


def tracer_provider(settings: TelemetrySettings) -> TracerProvider:
    """A tracer provider exporting as every service exports: OTLP/gRPC, batched every 200 ms."""
    sampler = ParentBased(TraceIdRatioBased(settings.sample_ratio))
    provider = TracerProvider(resource=resource_for(settings), sampler=sampler)
    provider.add_span_processor(BaggageSpanProcessor(SPAN_BAGGAGE_KEYS.__contains__))
    if settings.enabled:
        exporter = OTLPSpanExporter(endpoint=f"http://{settings.otlp_endpoint}", insecure=True, timeout=5)
        provider.add_span_processor(
            BatchSpanProcessor(exporter, max_queue_size=20_000, max_export_batch_size=2_000, schedule_delay_millis=200)
        )
    return provider


def setup_telemetry(settings: TelemetrySettings) -> TracerProvider:
    """Install the process-wide tracer provider once; later calls return the same one."""
    global _provider
    if _provider is not None:
        return _provider
    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()]))
    provider = tracer_provider(settings)
    trace.set_tracer_provider(provider)
    _instrument_libraries()
    _provider = provider
    return provider


def _instrument_libraries() -> None:
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    RedisInstrumentor().instrument()
    AioHttpClientInstrumentor().instrument(url_filter=without_query)


@contextmanager
def continuing(parent: Context) -> Iterator[None]:
    """Make `parent` (a producer's or caller's context: trace and baggage) current, so the spans
    started inside are its children and its baggage travels on with their calls and events.
    (`start_as_current_span(context=parent)` alone parents the span but drops the baggage.)"""
    token = otel_context.attach(parent)
    try:
        yield
    finally:
        otel_context.detach(token)


def baggage_only(context: Context | None = None) -> Context:
    """A context with the baggage of `context` (default: the current one) and no span: for work
    done on a caller's behalf that starts traces of its own, such as each message of a session."""
    alone = Context()
    for key, value in baggage.get_all(context).items():
        alone = baggage.set_baggage(key, value, alone)
    return alone


@contextmanager
def untraced() -> Iterator[None]:
    """For background loops: the library calls a poll makes (SQL, Redis) make no spans, so an
    idle service makes no traces. Work done for an event or a request still joins that event's
    or request's trace: the kit starts those spans from the context the work carries."""
    with suppress_instrumentation():
        yield


def without_query(url: Any) -> str:
    """The URL a span records: its query string may carry a secret (`?access_token=`)."""
    return str(url).partition("?")[0]


def trace_aws_client(client: Any, tracer_provider: trace.TracerProvider | None = None) -> None:
    """Make every call of an aiobotocore client (DynamoDB, ...) a CLIENT span of the current
    trace, named "<service>.<Operation>", an error when AWS answers with an error. The span is
    current during the call, so the HTTP request that carries it is its child. (It wraps the
    client's `_make_api_call`, as OpenTelemetry's botocore instrumentation wraps botocore's:
    aiobotocore's async clients bypass what that instrumentation patches.)"""
    tracer = trace.get_tracer("services.kit.aws", tracer_provider=tracer_provider)
    service = client.meta.service_model.service_name
    call = client._make_api_call

    async def traced_call(operation: str, params: dict[str, Any]) -> Any:
        if not is_instrumentation_enabled():  # within untraced(): a background poll
            return await call(operation, params)
        with tracer.start_as_current_span(
            f"{service}.{operation}", kind=SpanKind.CLIENT, record_exception=False, set_status_on_exception=False
        ) as span:
            if span.is_recording():
                span.set_attributes({"rpc.system": "aws-api", "rpc.service": service, "rpc.method": operation})
                if service == "dynamodb":
                    span.set_attribute("db.system", "dynamodb")
                if "TableName" in params:
                    span.set_attribute("aws.dynamodb.table_names", [params["TableName"]])
            try:
                result = await call(operation, params)
            except ClientError as error:
                answer = error.response
                span.set_attribute(
                    "http.response.status_code", answer.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                )
                failure = answer.get("Error", {})
                span.set_status(Status(StatusCode.ERROR, f"{failure.get('Code', '')}: {failure.get('Message', '')}"))
                raise
            except Exception as error:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, str(error)))
                raise
            span.set_attribute("http.response.status_code", result.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            return result

    client._make_api_call = traced_call


def shutdown_telemetry() -> None:
    """Flush every finished span to the receiver; called on clean shutdown."""
    if _provider is not None:
        _provider.force_flush(timeout_millis=5_000)
        _provider.shutdown()


def in_unsampled_trace() -> bool:
    """True inside a call whose trace is not being recorded: under the ParentBased sampler its
    children are never recorded either, so hot paths can skip building them."""
    span = trace.get_current_span()
    return span.get_span_context().is_valid and not span.is_recording()


def current_trace_id() -> str:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)
