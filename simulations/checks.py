"""One real-client check per component of the running stack.

Each check does real work over the component's own protocol and raises AssertionError with
what it saw when the component misbehaves; a service is checked as its users reach it, over
JSON through Envoy (sign up; a space and a document; found by search; asked about, answered
with a citation). The smoke scenario runs them all and prints a
summary; the system tests run the same table, one test per row. Adding a component means
adding one check and one row to `CHECKS`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TypeVar

import aioboto3
import aiohttp
import asyncpg
import grpc
import redis.asyncio as aioredis
from aiobotocore.config import AioConfig
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from botocore.exceptions import ClientError
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.canvas import Collaborator, NodeChanged
from clients.transports import JSON_HTTP, Transport, grpc_web_frame, parse_grpc_web, transport_for
from services.api.activity.v1 import activity_pb2
from services.api.auth.v1 import auth_pb2
from services.api.canvas.v1 import canvas_pb2
from services.api.chat.v1 import chat_pb2
from services.api.knowledge.v1 import knowledge_pb2
from services.api.vector.v1 import vector_pb2
from simulations.components.dynamodb import LOCAL_ACCESS_KEY, LOCAL_REGION, LOCAL_SECRET_KEY
from simulations.endpoints import StackEndpoints
from simulations.envoy_config import UPSTREAM_DOMAIN

Check = Callable[[StackEndpoints], Awaitable[str]]
MessageT = TypeVar("MessageT", bound=Message)


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    seconds: float


async def run_check(name: str, check: Check, stack: StackEndpoints, timeout_s: float = 30.0) -> CheckResult:
    began = time.monotonic()
    try:
        detail = await asyncio.wait_for(check(stack), timeout_s)
        ok = True
    except TimeoutError:
        detail, ok = f"no answer within {timeout_s:.0f} s", False
    except Exception as error:
        detail, ok = f"{type(error).__name__}: {error}", False
    return CheckResult(name, ok, detail, time.monotonic() - began)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# ------------------------------------------------------------------- Kafka


async def check_kafka(stack: StackEndpoints) -> str:
    """Create a topic, produce keyed records with headers, consume them in a consumer group
    and commit; a second consumer in the same group then sees nothing new."""
    topic, group = unique("smoke-topic"), unique("smoke-group")
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = [f"message {n}".encode() for n in range(20)]
        for n, value in enumerate(sent):
            await producer.send(topic, value=value, key=str(n % 4).encode(), headers=[("n", str(n).encode())])
        await producer.flush()
    finally:
        await producer.stop()
    received = await _consume(stack, topic, group, expected=len(sent))
    assert sorted(received) == sorted(sent), f"consumed {len(received)} of {len(sent)} records"
    leftover = await _consume(stack, topic, group, expected=0, wait_s=1.0)
    assert leftover == [], f"the group's committed offsets were not honoured: {len(leftover)} re-delivered"
    return f"{len(sent)} records produced (idempotent, acks=all) and consumed by group {group}"


async def _consume(stack: StackEndpoints, topic: str, group: str, expected: int, wait_s: float = 15.0) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=stack.kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received: list[bytes] = []
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and (expected == 0 or len(received) < expected):
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                received.extend(record.value or b"" for record in records)
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()
    return received


# -------------------------------------------------------------- PostgreSQL


async def check_postgres(stack: StackEndpoints) -> str:
    """SQL in every service database: a table, a transaction, a query."""
    databases = ("auth", "knowledge", "chat", "notifications", "ml")
    table = unique("smoke").replace("-", "_")
    for database in databases:
        connection = await asyncpg.connect(stack.postgres_dsn(database), timeout=5)
        try:
            async with connection.transaction():
                await connection.execute(f"CREATE TEMP TABLE {table} (id int PRIMARY KEY, note text)")
                await connection.executemany(
                    f"INSERT INTO {table} VALUES ($1, $2)", [(n, f"note {n}") for n in range(10)]
                )
                total = await connection.fetchval(f"SELECT sum(id) FROM {table}")
            assert total == 45, f"{database}: expected 45, got {total}"
            version = await connection.fetchval("SHOW server_version")
        finally:
            await connection.close()
    return f"PostgreSQL {version}: SQL in {len(databases)} databases ({', '.join(databases)})"


# ------------------------------------------------------------------- Redis


async def check_redis(stack: StackEndpoints) -> str:
    """PING, then a message through pub/sub."""
    client = aioredis.Redis.from_url(stack.redis_url)
    try:
        assert await client.ping(), "PING was not answered"
        channel = unique("smoke-channel")
        pubsub = client.pubsub()
        await pubsub.subscribe(channel)
        try:
            await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
            receivers = await client.publish(channel, b"hello")
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)
        finally:
            await pubsub.unsubscribe(channel)
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        assert receivers == 1, f"publish reached {receivers} subscribers"
        assert message is not None, "pub/sub delivered nothing"
        assert message["data"] == b"hello", f"pub/sub delivered {message!r}"
        version = (await client.info("server"))["redis_version"]
    finally:
        await client.aclose()
    return f"Redis {version}: PING and pub/sub"


# -------------------------------------------------------------- ClickHouse


async def check_clickhouse(stack: StackEndpoints) -> str:
    """Insert rows over the HTTP interface and read them back."""
    from observability.clickhouse import connect

    table = unique("smoke").replace("-", "_")

    def work() -> str:
        client = connect(stack.clickhouse_url)
        try:
            client.command(
                f"CREATE TABLE {table} (id UInt32, labels Map(String, String)) ENGINE = MergeTree ORDER BY id"
            )
            client.insert(table, [(n, {"n": str(n)}) for n in range(1000)], column_names=["id", "labels"])
            count, total = client.query(f"SELECT count(), sum(id) FROM {table}").result_rows[0]
            client.command(f"DROP TABLE {table}")
            assert (count, total) == (1000, 499500), f"read back {count} rows summing to {total}"
            return str(client.server_version)
        finally:
            client.close()

    version = await asyncio.to_thread(work)
    return f"ClickHouse {version}: 1000 rows inserted and selected"


# ---------------------------------------------------------------- DynamoDB


async def check_dynamodb(stack: StackEndpoints) -> str:
    """Create a table, put and get an item, and see a conditional put refused."""
    table = unique("smoke")
    session = aioboto3.Session(
        aws_access_key_id=LOCAL_ACCESS_KEY, aws_secret_access_key=LOCAL_SECRET_KEY, region_name=LOCAL_REGION
    )
    config = AioConfig(retries={"max_attempts": 2}, connect_timeout=2, read_timeout=5)
    async with session.client("dynamodb", endpoint_url=stack.dynamodb_url, config=config) as dynamodb:
        await dynamodb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        try:
            item = {"pk": {"S": "node-1"}, "version": {"N": "1"}}
            await dynamodb.put_item(TableName=table, Item=item, ConditionExpression="attribute_not_exists(pk)")
            got = await dynamodb.get_item(TableName=table, Key={"pk": {"S": "node-1"}}, ConsistentRead=True)
            assert got.get("Item") == item, f"get_item returned {got.get('Item')!r}"
            try:
                await dynamodb.put_item(TableName=table, Item=item, ConditionExpression="attribute_not_exists(pk)")
            except ClientError as error:
                code = error.response["Error"]["Code"]
                assert code == "ConditionalCheckFailedException", f"unexpected error {code}"
            else:
                raise AssertionError("a conditional put on an existing key was accepted")
        finally:
            await dynamodb.delete_table(TableName=table)
    return "put, get and a refused conditional put"


# -------------------------------------------------------------------- mail


async def check_mail(stack: StackEndpoints) -> str:
    """Send a message over SMTP and find it through the sink's Mailpit-style API."""
    import aiosmtplib

    recipient = f"{unique('smoke')}@example.test"
    message = EmailMessage()
    message["From"] = "platform@example.test"
    message["To"] = recipient
    message["Subject"] = "smoke check"
    message.set_content("The stack can send mail.")
    host, port = stack.smtp_address
    await aiosmtplib.send(message, hostname=host, port=port, timeout=5)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with session.get(f"{stack.mail_api}/api/v1/search", params={"query": f"to:{recipient}"}) as response:
            found = await response.json()
        assert found["messages_count"] == 1, f"found {found['messages_count']} messages to {recipient}"
        async with session.get(f"{stack.mail_api}/api/v1/message/{found['messages'][0]['ID']}") as response:
            detail = await response.json()
    assert "The stack can send mail." in detail["Text"], f"body was {detail['Text']!r}"
    return f"sent to {recipient} over SMTP and read back over HTTP"


# ------------------------------------------------------------------- Envoy


async def check_envoy(stack: StackEndpoints, upstream: str = "otlp") -> str:
    """gRPC health of an upstream through Envoy three ways, and a JWT rejection at the edge."""
    authority = f"{upstream}.{UPSTREAM_DOMAIN}"
    async with grpc.aio.insecure_channel(stack.envoy_grpc, options=[("grpc.default_authority", authority)]) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING, f"native gRPC: {reply}"

    url = f"{stack.envoy_http}/grpc.health.v1.Health/Check"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1", "host": authority}
        body = grpc_web_frame(health_pb2.HealthCheckRequest().SerializeToString())
        async with session.post(url, data=body, headers=headers) as response:
            messages, trailers = parse_grpc_web(await response.read())
        assert trailers.get("grpc-status") == "0", f"gRPC-Web trailers {trailers}"
        web_reply = health_pb2.HealthCheckResponse.FromString(messages[0])
        assert web_reply.status == health_pb2.HealthCheckResponse.SERVING, f"gRPC-Web: {web_reply}"

        async with session.post(url, json={}, headers={"host": authority}) as response:
            json_reply = await response.json()
        assert json_reply == {"status": "SERVING"}, f"JSON: {json_reply}"

        async with session.get(f"{stack.envoy_http}/v1/spaces", headers={"authorization": "Bearer forged"}) as response:
            rejected_status, rejected_body = response.status, await response.text()
    assert rejected_status == 401, f"a forged token got {rejected_status} {rejected_body!r}"
    return f"health of {upstream} over gRPC, gRPC-Web and JSON; forged token → 401 ({rejected_body})"


# ------------------------------------------------------------- OTLP → ClickHouse


async def check_traces(stack: StackEndpoints, timeout_s: float = 10.0) -> str:
    """A request through Envoy, sampled by its caller, becomes a span queryable in ClickHouse's
    otel_traces: Envoy exports it over OTLP (once a second), the receiver writes it."""
    from observability.clickhouse import connect
    from observability.testing import wait_for_trace
    from observability.traces import TraceStore, span

    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    authority = f"otlp.{UPSTREAM_DOMAIN}"
    began = time.monotonic()
    async with grpc.aio.insecure_channel(stack.envoy_grpc, options=[("grpc.default_authority", authority)]) as channel:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5, metadata=[("traceparent", traceparent)]
        )
    client = connect(stack.clickhouse_url)
    try:
        tree = await wait_for_trace(TraceStore(client), stack.otlp_http, trace_id, [span("envoy")], timeout_s)
    finally:
        client.close()
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(f"{stack.otlp_http}/stats") as response,
    ):
        stats = await response.json()
    return (
        f"Envoy's {len(tree.find(span('envoy')))} spans of trace {trace_id[:8]}… queryable after "
        f"{time.monotonic() - began:.1f} s; receiver wrote {stats['written']}, dropped {stats['dropped']}"
    )


# ------------------------------------------------------------- the services, through Envoy

HARBOUR = (
    "Harbour tides",
    "The harbour master posts the tide tables every Monday. Ships wait for high tide before they enter the lock.",
)


@dataclass
class Visitor:
    """A new user of the platform, calling it over JSON through Envoy, as a browser would."""

    transport: Transport
    user_id: str
    token: str

    @classmethod
    async def signed_up(cls, stack: StackEndpoints) -> Visitor:
        transport = transport_for(JSON_HTTP, stack.envoy_http, stack.envoy_grpc)
        request = auth_pb2.SignUpRequest(
            email=f"{unique('smoke')}@example.test", password=f"pw-{uuid.uuid4().hex}", display_name="Smoke"
        )
        response = (await transport.unary("auth.v1.AuthService/SignUp", request, timeout=20)).unwrap()
        assert isinstance(response, auth_pb2.SignUpResponse)
        return cls(transport, response.user.user_id, response.tokens.access_token)

    async def call(self, method: str, request: Message, expected: type[MessageT]) -> MessageT:
        response = (await self.transport.unary(method, request, token=self.token, timeout=20)).unwrap()
        assert isinstance(response, expected), f"{method}: {response!r}"
        return response

    async def space_with_document(self) -> tuple[str, str]:
        space = await self.call(
            "knowledge.v1.KnowledgeService/CreateSpace",
            knowledge_pb2.CreateSpaceRequest(name="Smoke"),
            knowledge_pb2.CreateSpaceResponse,
        )
        title, content = HARBOUR
        created = await self.call(
            "knowledge.v1.KnowledgeService/CreateDocument",
            knowledge_pb2.CreateDocumentRequest(space_id=space.space.space_id, title=title, content=content),
            knowledge_pb2.CreateDocumentResponse,
        )
        return space.space.space_id, created.document.document_id

    async def search_until_found(self, space_id: str, document_id: str, timeout_s: float = 30.0) -> float:
        """Seconds from now until a search finds the document (indexing is eventual)."""
        began = time.monotonic()
        request = vector_pb2.SearchRequest(query="when is the tide high enough", space_ids=[space_id])
        while time.monotonic() - began < timeout_s:
            found = await self.call("vector.v1.VectorService/Search", request, vector_pb2.SearchResponse)
            if any(hit.document_id == document_id for hit in found.hits):
                return time.monotonic() - began
            await asyncio.sleep(0.1)
        raise AssertionError(f"search did not find the new document within {timeout_s:.0f} s")

    async def close(self) -> None:
        await self.transport.aclose()


async def check_auth(stack: StackEndpoints) -> str:
    """Sign up, then the token names the new user."""
    visitor = await Visitor.signed_up(stack)
    try:
        me = await visitor.call("auth.v1.AuthService/WhoAmI", auth_pb2.WhoAmIRequest(), auth_pb2.WhoAmIResponse)
    finally:
        await visitor.close()
    assert me.user.user_id == visitor.user_id
    return f"signed up {me.user.email} over JSON through Envoy; WhoAmI names the new user"


async def check_knowledge(stack: StackEndpoints) -> str:
    """A space and a document in it, read back."""
    visitor = await Visitor.signed_up(stack)
    try:
        space_id, document_id = await visitor.space_with_document()
        read = await visitor.call(
            "knowledge.v1.KnowledgeService/GetDocument",
            knowledge_pb2.GetDocumentRequest(space_id=space_id, document_id=document_id),
            knowledge_pb2.GetDocumentResponse,
        )
    finally:
        await visitor.close()
    assert (read.document.title, read.document.version) == (HARBOUR[0], 1)
    return f"created a space and document {document_id[:8]}… and read version 1 back"


async def check_vector(stack: StackEndpoints) -> str:
    """A new document is found by searching for what it says."""
    visitor = await Visitor.signed_up(stack)
    try:
        space_id, document_id = await visitor.space_with_document()
        waited = await visitor.search_until_found(space_id, document_id)
    finally:
        await visitor.close()
    return f"a new document found by search {waited * 1000:.0f} ms after it was written"


async def check_chat(stack: StackEndpoints) -> str:
    """A question about a new document gets an answer that cites it."""
    visitor = await Visitor.signed_up(stack)
    try:
        space_id, document_id = await visitor.space_with_document()
        await visitor.search_until_found(space_id, document_id)
        conversation = await visitor.call(
            "chat.v1.ChatService/CreateConversation",
            chat_pb2.CreateConversationRequest(title="Smoke", space_ids=[space_id]),
            chat_pb2.CreateConversationResponse,
        )
        request = chat_pb2.AskRequest(
            conversation_id=conversation.conversation.conversation_id, question="When do ships enter the lock?"
        )
        streamed = await visitor.transport.server_stream(
            "chat.v1.ChatService/Ask", request, token=visitor.token, timeout=30
        )
    finally:
        await visitor.close()
    assert streamed.ok, f"Ask: {streamed.code.name} {streamed.details}"
    events = [message for message in streamed.messages if isinstance(message, chat_pb2.AskResponse)]
    cited = {m.citation.document_id for m in events if m.WhichOneof("event") == "citation"}
    [complete] = [m.complete for m in events if m.WhichOneof("event") == "complete"]
    assert document_id in cited, f"the answer cites {sorted(cited)}, not the new document"
    assert complete.answer_kind == chat_pb2.ANSWER_KIND_EXTRACTIVE, complete
    return f"asked about it: an answer with {len(cited)} citation(s) of the new document, streamed over JSON"


async def check_canvas_instance(stack: StackEndpoints, instance: str, other: str) -> str:
    """A node placed in a session on one canvas instance (over JSON, through Envoy's choice of
    instance) and moved in a session on `instance` reaches a session on `other`."""
    visitor = await Visitor.signed_up(stack)
    here = grpc.aio.insecure_channel(stack.of(instance)["grpc"])
    there = grpc.aio.insecure_channel(stack.of(other)["grpc"])
    try:
        space = await visitor.call(
            "knowledge.v1.KnowledgeService/CreateSpace",
            knowledge_pb2.CreateSpaceRequest(name="Smoke canvas"),
            knowledge_pb2.CreateSpaceResponse,
        )
        space_id = space.space.space_id
        placed = await visitor.call(
            "canvas.v1.CanvasService/PlaceNode",
            canvas_pb2.PlaceNodeRequest(space_id=space_id, label="Harbour", x=10, y=20),
            canvas_pb2.PlaceNodeResponse,
        )
        mover = await Collaborator.join(here, visitor.token, space_id)
        watcher = await Collaborator.join(there, visitor.token, space_id)
        began = time.monotonic()
        request_id = await mover.move(placed.node.node_id, 30, 40, expected_version=1)
        outcome = await mover.outcome(request_id)
        assert isinstance(outcome, NodeChanged), f"the move was refused: {outcome}"
        await watcher.until_version(outcome.canvas_version)
        waited = time.monotonic() - began
        seen = watcher.nodes[placed.node.node_id]
        await mover.close()
        await watcher.close()
    finally:
        await visitor.close()
        await here.close()
        await there.close()
    assert (seen.x, seen.y, seen.version) == (30, 40, 2), f"the other session sees {seen}"
    return f"a move in a session on {instance} reached a session on {other} in {waited * 1000:.0f} ms"


async def check_canvas(stack: StackEndpoints) -> str:
    return await check_canvas_instance(stack, "canvas", "canvas-2")


async def check_canvas_replica(stack: StackEndpoints) -> str:
    return await check_canvas_instance(stack, "canvas-2", "canvas")


async def check_activity(stack: StackEndpoints) -> str:
    """A new document's creation (from knowledge's events) and a view tracked by the client are
    both counted in the document's stats."""
    visitor = await Visitor.signed_up(stack)
    try:
        space_id, document_id = await visitor.space_with_document()
        view = activity_pb2.ActivityEvent(
            event_id=str(uuid.uuid4()),
            kind=activity_pb2.ACTIVITY_KIND_DOCUMENT_VIEWED,
            space_id=space_id,
            document_id=document_id,
        )
        view.occurred_at.GetCurrentTime()
        await visitor.call(
            "activity.v1.ActivityService/TrackEvent",
            activity_pb2.TrackEventRequest(event=view),
            activity_pb2.TrackEventResponse,
        )
        began = time.monotonic()
        request = activity_pb2.GetDocumentStatsRequest(
            space_id=space_id, document_id=document_id, window=activity_pb2.TIME_WINDOW_LAST_HOUR
        )
        while True:
            stats = await visitor.call(
                "activity.v1.ActivityService/GetDocumentStats", request, activity_pb2.GetDocumentStatsResponse
            )
            if (stats.views, stats.edits) == (1, 1) or time.monotonic() - began > 30:
                break
            await asyncio.sleep(0.1)
    finally:
        await visitor.close()
    assert (stats.views, stats.edits) == (1, 1), f"after 30 s the stats say {stats.views} views, {stats.edits} edits"
    return f"a tracked view and the document's creation counted in its stats within {time.monotonic() - began:.1f} s"


CHECKS: dict[str, Check] = {
    "kafka": check_kafka,
    "postgres": check_postgres,
    "redis": check_redis,
    "clickhouse": check_clickhouse,
    "dynamodb": check_dynamodb,
    "smtp": check_mail,
    "envoy": check_envoy,
    "otlp": check_traces,
    "auth": check_auth,
    "knowledge": check_knowledge,
    "vector": check_vector,
    "chat": check_chat,
    "canvas": check_canvas,
    "canvas-2": check_canvas_replica,
    "activity": check_activity,
}
