"""The kit traces every kind of call a service makes, against the stack's real components:
DynamoDB (aiobotocore), Redis and HTTP — each a CLIENT span of the current trace."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aioboto3
import aiohttp
import pytest
import redis.asyncio as aioredis
from botocore.exceptions import ClientError
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from services.kit.telemetry import trace_aws_client, untraced
from simulations.components.dynamodb import LOCAL_ACCESS_KEY, LOCAL_REGION, LOCAL_SECRET_KEY
from simulations.endpoints import StackEndpoints


@contextlib.asynccontextmanager
async def traced_dynamodb(stack: StackEndpoints, provider: TracerProvider) -> AsyncIterator[Any]:
    """A DynamoDB client of the stack, traced into `provider` as the services' are."""
    session = aioboto3.Session(
        aws_access_key_id=LOCAL_ACCESS_KEY, aws_secret_access_key=LOCAL_SECRET_KEY, region_name=LOCAL_REGION
    )
    async with session.client("dynamodb", endpoint_url=stack.dynamodb_url) as dynamodb:
        trace_aws_client(dynamodb, tracer_provider=provider)
        yield dynamodb


@pytest.fixture
def recorded() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


async def test_dynamodb_calls_are_client_spans_and_refusals_are_errors(
    stack: StackEndpoints, recorded: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = recorded
    table = f"telemetry-{uuid.uuid4().hex[:8]}"
    parent = provider.get_tracer("test").start_as_current_span("use case")
    async with traced_dynamodb(stack, provider) as dynamodb:
        with parent:
            await dynamodb.create_table(
                TableName=table,
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
            item = {"pk": {"S": "a"}}
            await dynamodb.put_item(TableName=table, Item=item, ConditionExpression="attribute_not_exists(pk)")
            with pytest.raises(ClientError):
                await dynamodb.put_item(TableName=table, Item=item, ConditionExpression="attribute_not_exists(pk)")
            await dynamodb.delete_table(TableName=table)
    spans = {s.name: s for s in exporter.get_finished_spans() if s.name != "put_item"}
    names = [s.name for s in exporter.get_finished_spans()]
    assert names.count("dynamodb.PutItem") == 2
    assert {"dynamodb.CreateTable", "dynamodb.DeleteTable"} <= set(spans)
    puts = [s for s in exporter.get_finished_spans() if s.name == "dynamodb.PutItem"]
    assert all(s.kind == SpanKind.CLIENT for s in puts)
    assert puts[0].attributes is not None
    assert puts[0].attributes["aws.dynamodb.table_names"] == (table,)
    assert puts[0].attributes["db.system"] == "dynamodb"
    assert puts[0].status.status_code == StatusCode.UNSET
    assert puts[1].status.status_code == StatusCode.ERROR
    assert "ConditionalCheckFailedException" in (puts[1].status.description or "")
    use_case = next(s for s in exporter.get_finished_spans() if s.name == "use case")
    assert all(s.parent is not None and s.parent.span_id == use_case.context.span_id for s in puts)


async def test_dynamodb_calls_of_a_background_poll_make_no_spans(
    stack: StackEndpoints, recorded: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """Health probes and outbox polls run untraced(): an idle canvas service makes no traces."""
    provider, exporter = recorded
    async with traced_dynamodb(stack, provider) as dynamodb:
        with untraced():
            await dynamodb.list_tables(Limit=1)
        await dynamodb.list_tables(Limit=2)  # the positive control: outside, the same call is a span
    assert [span.name for span in exporter.get_finished_spans()] == ["dynamodb.ListTables"]


@pytest.fixture
def instrumented(recorded: tuple[TracerProvider, InMemorySpanExporter]) -> Iterator[InMemorySpanExporter]:
    """Redis and aiohttp instrumented for the test's provider. The process may already be
    instrumented for the stack (the `traces` fixture sets up telemetry): that is put back after."""
    provider, exporter = recorded
    instrumentors: list[BaseInstrumentor] = [RedisInstrumentor(), AioHttpClientInstrumentor()]
    already = [instrumentor.is_instrumented_by_opentelemetry for instrumentor in instrumentors]
    for instrumentor, was in zip(instrumentors, already, strict=True):
        if was:
            instrumentor.uninstrument()
    RedisInstrumentor().instrument(tracer_provider=provider)
    AioHttpClientInstrumentor().instrument(tracer_provider=provider)
    try:
        yield exporter
    finally:
        RedisInstrumentor().uninstrument()
        AioHttpClientInstrumentor().uninstrument()
        for instrumentor, was in zip(instrumentors, already, strict=True):
            if was:
                instrumentor.instrument()


async def test_redis_and_http_calls_are_client_spans(stack: StackEndpoints, instrumented: InMemorySpanExporter) -> None:
    client = aioredis.Redis.from_url(stack.redis_url)
    await client.set(f"telemetry-{uuid.uuid4().hex}", "1", ex=10)
    await client.aclose()
    async with aiohttp.ClientSession() as session, session.get(f"{stack.mail_api}/livez") as response:
        assert response.status == 200
    kinds = {(s.name.split()[0], s.kind) for s in instrumented.get_finished_spans()}
    assert ("SET", SpanKind.CLIENT) in kinds
    assert ("GET", SpanKind.CLIENT) in kinds


async def test_the_http_request_of_a_dynamodb_call_is_a_child_of_its_span(
    stack: StackEndpoints, recorded: tuple[TracerProvider, InMemorySpanExporter], instrumented: InMemorySpanExporter
) -> None:
    """Not a sibling that overlaps it: where a request's time went adds up."""
    provider, _ = recorded
    async with traced_dynamodb(stack, provider) as dynamodb:
        with provider.get_tracer("test").start_as_current_span("use case"):
            await dynamodb.list_tables(Limit=1)
    spans = {span.name: span for span in instrumented.get_finished_spans()}
    call, http = spans["dynamodb.ListTables"], spans["POST"]
    assert http.parent is not None
    assert http.parent.span_id == call.context.span_id
