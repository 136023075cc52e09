"""services.kit.clients: one service calling another through `service_channel`.

Two in-process servers (port 0): A's AuthService handlers call B's through a service channel,
and B records what it saw: the caller, the metadata, the time left. Spans go to a tracer
provider local to this module, handed to the gRPC instrumentation while the servers and the
channel are built; no global tracer provider is installed.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from fixtures.tokens import TestIssuer
from services.api.auth.v1 import auth_pb2, auth_pb2_grpc
from services.kit.auth import Principal, current_principal, optional_principal, set_principal
from services.kit.clients import DEFAULT_CALL_TIMEOUT_S, bounded_timeout, call_metadata, service_channel
from services.kit.server import BuiltServer, ServiceSpec, build_server, remaining_time, set_deadline_in

AUTH_SERVICE = "auth.v1.AuthService"
PUBLIC = frozenset({f"/{AUTH_SERVICE}/GetJwks"})
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
# gRPC sends a deadline as a timeout rounded up (to 10 ms between 1 and 10 s) and measures it
# on its own clock, so a callee may see a few ms more than its caller had left (A, called with
# timeout=2, has been seen to report 2.009 s).
SLACK_S = 0.05


@dataclass(frozen=True)
class Seen:
    """What B's handler saw of one call."""

    user_id: str | None
    authorization: str | None
    traceparent: str | None
    request_id: str | None
    remaining_s: float


class Downstream(auth_pb2_grpc.AuthServiceServicer):
    """Server B: records each call."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []

    def record(self, context: Any, user_id: str | None) -> None:
        metadata = dict(context.invocation_metadata())
        self.seen.append(
            Seen(
                user_id=user_id,
                authorization=metadata.get("authorization"),
                traceparent=metadata.get("traceparent"),
                request_id=metadata.get("x-request-id"),
                remaining_s=remaining_time(60),
            )
        )

    async def WhoAmI(self, request: auth_pb2.WhoAmIRequest, context: Any) -> auth_pb2.WhoAmIResponse:
        principal = current_principal()
        self.record(context, principal.user_id)
        return auth_pb2.WhoAmIResponse(user=auth_pb2.User(user_id=principal.user_id, email=principal.email))

    async def GetJwks(self, request: auth_pb2.GetJwksRequest, context: Any) -> auth_pb2.GetJwksResponse:
        principal = optional_principal()
        self.record(context, principal.user_id if principal else None)
        return auth_pb2.GetJwksResponse()


class Upstream(auth_pb2_grpc.AuthServiceServicer):
    """Server A: answers each call by calling B, without a timeout, with `metadata` if set."""

    def __init__(self) -> None:
        self.b: auth_pb2_grpc.AuthServiceAsyncStub | None = None
        self.metadata: tuple[tuple[str, str], ...] = ()
        self.remaining_s: list[float] = []  # A's time left, just before it called B

    def downstream(self) -> auth_pb2_grpc.AuthServiceAsyncStub:
        assert self.b is not None
        self.remaining_s.append(remaining_time(60))
        return self.b

    async def WhoAmI(self, request: auth_pb2.WhoAmIRequest, context: Any) -> auth_pb2.WhoAmIResponse:
        return await self.downstream().WhoAmI(auth_pb2.WhoAmIRequest(), metadata=self.metadata)

    async def GetJwks(self, request: auth_pb2.GetJwksRequest, context: Any) -> auth_pb2.GetJwksResponse:
        return await self.downstream().GetJwks(auth_pb2.GetJwksRequest(), metadata=self.metadata)


def spec(name: str, servicer: auth_pb2_grpc.AuthServiceServicer) -> ServiceSpec:
    def register(server: grpc.aio.Server) -> None:
        auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)

    return ServiceSpec(name=name, version="0", grpc_services=[AUTH_SERVICE], register=register, public_methods=PUBLIC)


@dataclass
class Pair:
    a: BuiltServer
    b: BuiltServer
    upstream: Upstream
    downstream: Downstream
    spans: InMemorySpanExporter


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer()


@pytest.fixture(scope="module")
def tracer_provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture(scope="module")
async def pair(issuer: TestIssuer, tracer_provider: tuple[TracerProvider, InMemorySpanExporter]) -> AsyncIterator[Pair]:
    provider, exporter = tracer_provider
    # The methods not implemented here answer UNIMPLEMENTED, as generated.
    upstream, downstream = Upstream(), Downstream()  # type: ignore[abstract]
    with pytest.MonkeyPatch.context() as patch:
        # The kit builds its interceptors with the global provider; these use the local one.
        patch.setattr("services.kit.server._tracer", provider.get_tracer("services.kit.server"))
        patch.setattr(
            "services.kit.clients.aio_client_interceptors", functools.partial(aio_client_interceptors, provider)
        )
        b = await build_server(spec("b", downstream), issuer.verifier())
        a = await build_server(spec("a", upstream), issuer.verifier())
        channel = service_channel(f"127.0.0.1:{b.port}")
    upstream.b = auth_pb2_grpc.AuthServiceStub(channel)
    yield Pair(a, b, upstream, downstream, exporter)
    await channel.close()
    await a.server.stop(None)
    await b.server.stop(None)


@pytest.fixture
async def a_stub(pair: Pair) -> AsyncIterator[auth_pb2_grpc.AuthServiceAsyncStub]:
    pair.upstream.metadata = ()
    pair.upstream.remaining_s.clear()
    pair.downstream.seen.clear()
    pair.spans.clear()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{pair.a.port}") as channel:
        yield auth_pb2_grpc.AuthServiceStub(channel)


def bearer(token: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {token}")


def only_call_to_b(pair: Pair) -> Seen:
    assert len(pair.downstream.seen) == 1
    return pair.downstream.seen[0]


# ------------------------------------------------------------ the caller's token


async def test_b_sees_the_same_user_as_a(
    a_stub: auth_pb2_grpc.AuthServiceAsyncStub, pair: Pair, issuer: TestIssuer
) -> None:
    token = issuer.token("user-7")
    reply = await a_stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=(bearer(token),), timeout=5)
    assert reply.user.user_id == "user-7"
    seen = only_call_to_b(pair)
    assert seen.user_id == "user-7"
    assert seen.authorization == f"Bearer {token}"


async def test_explicit_authorization_is_not_overwritten(
    a_stub: auth_pb2_grpc.AuthServiceAsyncStub, pair: Pair, issuer: TestIssuer
) -> None:
    own = issuer.token("service-a")
    pair.upstream.metadata = (bearer(own), ("x-request-id", "r-1"))
    reply = await a_stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=(bearer(issuer.token("user-7")),), timeout=5)
    assert reply.user.user_id == "service-a"
    seen = only_call_to_b(pair)
    assert seen.user_id == "service-a"
    assert seen.authorization == f"Bearer {own}"
    assert seen.request_id == "r-1"


async def test_other_metadata_travels_with_the_token(
    a_stub: auth_pb2_grpc.AuthServiceAsyncStub, pair: Pair, issuer: TestIssuer
) -> None:
    token = issuer.token("user-7")
    pair.upstream.metadata = (("x-request-id", "r-2"),)
    await a_stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=(bearer(token),), timeout=5)
    seen = only_call_to_b(pair)
    assert seen.request_id == "r-2"
    assert seen.authorization == f"Bearer {token}"


async def test_anonymous_caller_of_a_public_method_forwards_no_token(
    a_stub: auth_pb2_grpc.AuthServiceAsyncStub, pair: Pair
) -> None:
    await a_stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=5)
    seen = only_call_to_b(pair)
    assert seen.user_id is None
    assert seen.authorization is None


async def test_a_call_made_outside_any_call_carries_no_token(pair: Pair) -> None:
    async with service_channel(f"127.0.0.1:{pair.b.port}") as channel:
        pair.downstream.seen.clear()
        await auth_pb2_grpc.AuthServiceStub(channel).GetJwks(auth_pb2.GetJwksRequest())
    seen = only_call_to_b(pair)
    assert seen.authorization is None
    assert seen.remaining_s <= DEFAULT_CALL_TIMEOUT_S + SLACK_S


def test_call_metadata_outside_any_call_adds_nothing() -> None:
    assert call_metadata(None) == []
    assert call_metadata([("x-request-id", "1")]) == [("x-request-id", "1")]


def test_call_metadata_adds_the_principals_token() -> None:
    def as_a_caller() -> None:
        set_principal(Principal(user_id="user-7", email="", token_id="t", expires_at=0, raw_token="tok.en"))
        assert call_metadata(None) == [("authorization", "Bearer tok.en")]
        assert call_metadata([("x-request-id", "1")]) == [("x-request-id", "1"), ("authorization", "Bearer tok.en")]
        assert call_metadata([("authorization", "Bearer other")]) == [("authorization", "Bearer other")]

    contextvars.copy_context().run(as_a_caller)


# ------------------------------------------------------------ deadlines


async def test_b_is_bounded_by_the_deadline_a_was_given(
    a_stub: auth_pb2_grpc.AuthServiceAsyncStub, pair: Pair, issuer: TestIssuer
) -> None:
    await a_stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=(bearer(issuer.token()),), timeout=2)
    (a_remaining,) = pair.upstream.remaining_s
    b_remaining = only_call_to_b(pair).remaining_s
    # A called B without a timeout: B got what A had left, not the 5 s default.
    assert a_remaining <= 2 + SLACK_S
    assert 1 < b_remaining <= min(2, a_remaining) + SLACK_S


async def test_without_a_deadline_b_gets_the_default(
    a_stub: auth_pb2_grpc.AuthServiceAsyncStub, pair: Pair, issuer: TestIssuer
) -> None:
    await a_stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=(bearer(issuer.token()),))
    assert pair.upstream.remaining_s == [60]
    assert DEFAULT_CALL_TIMEOUT_S - 1 < only_call_to_b(pair).remaining_s <= DEFAULT_CALL_TIMEOUT_S + SLACK_S


def test_bounded_timeout_outside_any_call() -> None:
    assert bounded_timeout(None) == DEFAULT_CALL_TIMEOUT_S
    assert bounded_timeout(3.0) == 3.0
    assert bounded_timeout(None, default_s=7.0) == 7.0


def test_bounded_timeout_is_capped_by_the_callers_deadline() -> None:
    def with_a_second_left() -> None:
        set_deadline_in(1.0)
        assert 0.5 < bounded_timeout(None) <= 1.0
        assert 0.5 < bounded_timeout(30.0) <= 1.0
        assert bounded_timeout(0.25) == 0.25

    contextvars.copy_context().run(with_a_second_left)


# ------------------------------------------------------------ tracing


async def finished_spans(exporter: InMemorySpanExporter, count: int) -> tuple[ReadableSpan, ...]:
    for _ in range(100):
        spans = exporter.get_finished_spans()
        if len(spans) >= count:
            return spans
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} finished spans, got {exporter.get_finished_spans()}")


async def test_b_joins_the_trace_as_a_child_of_as_client_span(
    a_stub: auth_pb2_grpc.AuthServiceAsyncStub, pair: Pair, issuer: TestIssuer
) -> None:
    traceparent = f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"
    metadata = (bearer(issuer.token()), ("traceparent", traceparent))
    await a_stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=metadata, timeout=5)
    spans = await finished_spans(pair.spans, 3)
    (a_client,) = [s for s in spans if s.kind == SpanKind.CLIENT]
    servers = [s for s in spans if s.kind == SpanKind.SERVER]
    (a_server,) = [s for s in servers if s.parent is not None and f"{s.parent.span_id:016x}" == CLIENT_SPAN_ID]
    (b_server,) = [s for s in servers if s is not a_server]
    assert all(format(s.context.trace_id, "032x") == TRACE_ID for s in spans)
    assert a_client.parent is not None
    assert a_client.parent.span_id == a_server.context.span_id
    assert b_server.parent is not None
    assert b_server.parent.span_id == a_client.context.span_id
    assert only_call_to_b(pair).traceparent == f"00-{TRACE_ID}-{a_client.context.span_id:016x}-01"
