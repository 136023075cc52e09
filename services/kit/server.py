"""The gRPC server every service runs.

`build_server` assembles a `grpc.aio` server with the `RpcBoundary` interceptor (the call's
SERVER span, deadline capture, token verification, error mapping) — one wrapper per call, so
the common path stays cheap —
standard health checking and (in development) reflection. `serve` runs it until SIGTERM/SIGINT and shuts down
gracefully: health turns NOT_SERVING, in-flight calls get a grace period, spans are flushed.

Tests build the same server in-process on port 0 and call it through a real channel.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.kit.auth import (
    MISSING_TOKEN,
    Principal,
    TokenVerifier,
    bearer_token,
    reset_principal,
    set_principal,
)
from services.kit.errors import DomainError, InvalidArgument, Unauthenticated, peer_not_answering, status_for
from services.kit.identity import SERVICE_TOKEN_HEADER, metadata_value
from services.kit.telemetry import current_trace_id
from services.kit.text import check_strings

log = logging.getLogger("services.kit.server")
_tracer = trace.get_tracer("services.kit.server")

HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
# Infrastructure methods that never need a token.
ALWAYS_PUBLIC_PREFIXES = (f"/{HEALTH_SERVICE}/", f"/{REFLECTION_SERVICE}/")

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# How long a unary call's request message may take to arrive whole.
RECEIVE_TIMEOUT_S = 10.0
ONE_MESSAGE = "a unary call carries one request message"
# Streams one client connection may hold open at once (Envoy opens more connections as needed).
MAX_STREAMS_PER_CONNECTION = 256
# Every service's gRPC server is made with these (and so is the benchmarks' matched baseline).
SERVER_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
)

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


def remaining_time(default_s: float) -> float:
    """Seconds left for an outgoing call: the caller's remaining deadline, capped by our default."""
    deadline = _deadline.get()
    if deadline is None:
        return default_s
    return max(0.0, min(default_s, deadline - time.monotonic()))


def set_deadline_in(seconds: float | None) -> contextvars.Token[float | None]:
    return _deadline.set(None if seconds is None else time.monotonic() + seconds)


Registrar = Callable[[grpc.aio.Server], None]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


@dataclass(frozen=True)
class ServiceSpec:
    """What the kit needs to know about a service to serve it."""

    name: str
    version: str
    grpc_services: Sequence[str]  # fully qualified names, for health and reflection
    register: Registrar  # adds the servicers to the server
    public_methods: frozenset[str] = field(default_factory=frozenset)  # e.g. "/auth.v1.AuthService/Login"
    # Methods only other platform services may call: they need a service token (the end
    # user's token, forwarded for audit, is optional), e.g. "/knowledge.v1.KnowledgeService/CheckAccess".
    internal_methods: frozenset[str] = field(default_factory=frozenset)


class RpcBoundary(grpc.aio.ServerInterceptor):
    """Where a call enters the service: its deadline, its caller, and its errors."""

    def __init__(
        self,
        verifier: TokenVerifier | None,
        public_methods: Iterable[str],
        tracer: trace.Tracer | None = None,
        receive_timeout_s: float = RECEIVE_TIMEOUT_S,
        internal_methods: Iterable[str] = (),
        service_verifier: TokenVerifier | None = None,
    ) -> None:
        self.verifier = verifier
        self.public_methods = frozenset(public_methods)
        self.internal_methods = frozenset(internal_methods)
        self.service_verifier = service_verifier
        self.tracer = tracer or _tracer
        self.receive_timeout_s = receive_timeout_s
        # A method's handler never changes: wrap it once, not on every call.
        self._wrapped: dict[str, Handler] = {}

    def is_public(self, method: str) -> bool:
        return method in self.public_methods or method.startswith(ALWAYS_PUBLIC_PREFIXES)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            enter = self._enter(method)
            wrapped = self._wrapped[method] = wrap_handler(handler, enter, self.receive_timeout_s)
        return wrapped

    def _enter(self, method: str) -> Callable[[Context], Awaitable[CallScope]]:
        service, _, name = method.lstrip("/").partition("/")
        internal = method in self.internal_methods
        public = internal or self.is_public(method)

        async def enter(context: Context) -> CallScope:
            scope = CallScope(context, server_span(self.tracer, context, service, name))
            scope.deadline_token = set_deadline_in(context.time_remaining())
            try:
                if internal:
                    await self._authenticate_service(context, method)
                principal = await self._authenticate(context, public)
            except DomainError as error:
                await scope.abort_with(error)
            scope.principal_token = set_principal(principal)
            return scope

        return enter

    async def _authenticate_service(self, context: Context, method: str) -> None:
        """An internal method's caller must be a platform service with a valid service token."""
        token = metadata_value(context.invocation_metadata(), SERVICE_TOKEN_HEADER)
        if token is None or self.service_verifier is None:
            raise Unauthenticated(
                f"{method} is internal to the platform: only its services may call it, "
                f"with a service token from the auth service in '{SERVICE_TOKEN_HEADER}'"
            )
        caller = await self.service_verifier.verify(token)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("rpc.caller.service", caller.user_id)

    async def _authenticate(self, context: Context, public: bool) -> Principal | None:
        """The caller's principal; public methods accept anonymous calls and ignore bad tokens."""
        if self.verifier is None:
            return None
        try:
            token = bearer_token(context.invocation_metadata())
            if token is None:
                raise Unauthenticated(MISSING_TOKEN)
            return await self.verifier.verify(token)
        except Unauthenticated:
            if public:
                return None
            raise


def server_span(tracer: trace.Tracer, context: Context, service: str, method: str) -> ActiveSpan:
    """The call's SERVER span, a child of the caller's trace context (W3C headers in the
    metadata); attributes are computed only when the span is sampled."""
    carrier = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
    caller = propagate.extract(carrier)
    span = tracer.start_span(f"{service}/{method}", context=caller, kind=SpanKind.SERVER)
    if span.is_recording():
        span.set_attributes({"rpc.system": "grpc", "rpc.service": service, "rpc.method": method})
        span.set_attribute("network.peer.address", context.peer() or "")
    # In the caller's context, not the current one: its baggage goes on to every call and event.
    return ActiveSpan(span, otel_context.attach(trace.set_span_in_context(span, caller)))


@dataclass
class ActiveSpan:
    span: trace.Span
    attached: object  # the token that restores the previous OpenTelemetry context


# Server-side outcomes that make a span an error (OpenTelemetry's gRPC conventions); refusing a
# caller's bad request is the service working, not failing.
SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class CallScope:
    """The context of one call: set up on entry, torn down on exit, errors mapped in between."""

    def __init__(self, context: Context, active: ActiveSpan) -> None:
        self.context = context
        self.active: ActiveSpan | None = active
        self.deadline_token: contextvars.Token[float | None] | None = None
        self.principal_token: contextvars.Token[Principal | None] | None = None

    def close(self, code: grpc.StatusCode = grpc.StatusCode.OK, message: str = "") -> None:
        """End the span and restore the caller's context; safe to call twice (abort closes,
        then exit does: the first outcome counts)."""
        if self.principal_token is not None:
            reset_principal(self.principal_token)
            self.principal_token = None
        if self.deadline_token is not None:
            _deadline.reset(self.deadline_token)
            self.deadline_token = None
        if self.active is not None:
            span = self.active.span
            if span.is_recording():
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                if code in SERVER_ERROR_CODES:
                    span.set_status(Status(StatusCode.ERROR, message or code.name))
            span.end()
            otel_context.detach(self.active.attached)  # type: ignore[arg-type]
            self.active = None

    async def abort_with(self, error: BaseException) -> None:
        reply = status_for(error, current_trace_id())
        if peer_not_answering(error):
            log.warning("a peer did not answer (trace %s): %s", current_trace_id(), reply.message)
        elif not isinstance(error, DomainError):
            log.error("unexpected error (trace %s)", current_trace_id(), exc_info=error)
        trailing: tuple[tuple[str, bytes], ...] = ()
        if reply.details is not None:
            trailing = (("grpc-status-details-bin", reply.details.SerializeToString()),)
        if self.active is not None and not isinstance(error, DomainError):
            self.active.span.record_exception(error)
        self.close(reply.code, reply.message)
        await self.context.abort(reply.code, reply.message, trailing)


Enter = Callable[[Context], Awaitable[CallScope]]


@dataclass(frozen=True)
class MalformedRequest:
    """What a request that does not decode becomes, so the call answers INVALID_ARGUMENT
    (instead of grpc's UNKNOWN with the parser's exception text)."""

    problem: str

    def error(self) -> InvalidArgument:
        return InvalidArgument("request", f"is not a valid protobuf message ({self.problem}); strings must be UTF-8")


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as error:
            return MalformedRequest(str(error))

    return parse


async def checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield checked(request)


def checked(request: Any) -> Any:
    """A decoded request message, or the INVALID_ARGUMENT it deserves. (A method registered
    without a deserializer gets the raw bytes, which it parses itself.)"""
    if isinstance(request, MalformedRequest):
        raise request.error()
    if isinstance(request, Message):
        check_strings(request)
    return request


async def the_one_request(context: Context, receive_timeout_s: float) -> Any:
    """A unary call's request: exactly one message, whole, within `receive_timeout_s`.

    grpcio waits forever for a unary request that never comes (the client ended its stream
    without a message, or stopped halfway through one) and answers the first of two. The kit
    serves unary methods as client streams and reads the message itself, so those calls end at
    once, or when the time is up, with INVALID_ARGUMENT instead of holding a stream forever."""
    try:
        async with asyncio.timeout(receive_timeout_s):
            request = await context.read()
            if request is grpc.aio.EOF:
                raise InvalidArgument("request", f"{ONE_MESSAGE}; the stream ended without one")
            if await context.read() is not grpc.aio.EOF:
                raise InvalidArgument("request", f"{ONE_MESSAGE}; this call sent more")
    except TimeoutError:
        raise InvalidArgument(
            "request", f"the request message did not arrive whole within {receive_timeout_s:g} s"
        ) from None
    return checked(request)


def wrap_handler(handler: Handler, enter: Enter, receive_timeout_s: float = RECEIVE_TIMEOUT_S) -> Handler:
    """The same handler, run inside a CallScope, for each of the four RPC shapes. Every method
    is registered with a streaming request, so the kit reads a unary call's one message itself
    (see `the_one_request`). (grpc.aio tells coroutines and async generators apart by inspecting
    the callable on every call: plain `async def` closures keep that visible and cheap.)"""
    behavior: Any = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream

    async def request_of(requests: AsyncIterator[Any], context: Context) -> Any:
        if handler.request_streaming:
            return checked_stream(requests)
        return await the_one_request(context, receive_timeout_s)

    async def run_unary(requests: AsyncIterator[Any], context: Context) -> Any:
        scope = await enter(context)
        try:
            return await behavior(await request_of(requests, context), context)
        except grpc.aio.AbortError:
            scope.close(context.code() or grpc.StatusCode.UNKNOWN)
            raise
        except asyncio.CancelledError:
            scope.close(grpc.StatusCode.CANCELLED)
            raise
        except Exception as error:
            await scope.abort_with(error)
        finally:
            scope.close()

    async def run_streaming(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        scope = await enter(context)
        try:
            async for response in behavior(await request_of(requests, context), context):
                yield response
        except grpc.aio.AbortError:
            scope.close(context.code() or grpc.StatusCode.UNKNOWN)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            scope.close(grpc.StatusCode.CANCELLED)
            raise
        except Exception as error:
            await scope.abort_with(error)
        finally:
            scope.close()

    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            run_streaming,
            request_deserializer=tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    return grpc.stream_unary_rpc_method_handler(
        run_unary,
        request_deserializer=tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


@dataclass
class BuiltServer:
    """A started server. Its health is SERVING while it accepts calls (between `serve`'s start
    and the drain) and every hard dependency answers (services.kit.health)."""

    server: grpc.aio.Server
    health: HealthServicer
    port: int
    spec: ServiceSpec
    accepting: bool = False
    dependencies_up: bool = True

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.spec.grpc_services):
            await self.health.set(name, status)

    async def set_accepting(self, accepting: bool) -> None:
        self.accepting = accepting
        await self._publish()

    async def set_dependencies_up(self, up: bool) -> None:
        self.dependencies_up = up
        await self._publish()

    async def _publish(self) -> None:
        await self.set_serving(self.accepting and self.dependencies_up)


async def build_server(
    spec: ServiceSpec,
    verifier: TokenVerifier | None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    reflection_enabled: bool = False,
    receive_timeout_s: float = RECEIVE_TIMEOUT_S,
    service_verifier: TokenVerifier | None = None,
) -> BuiltServer:
    """A started server that answers health NOT_SERVING until `set_serving(True)`. Reflection
    (listing every method to anyone who asks) is for development only."""
    server = grpc.aio.server(
        interceptors=[
            RpcBoundary(
                verifier,
                spec.public_methods,
                receive_timeout_s=receive_timeout_s,
                internal_methods=spec.internal_methods,
                service_verifier=service_verifier,
            )
        ],
        options=SERVER_OPTIONS,
    )
    spec.register(server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if reflection_enabled:
        reflection.enable_server_reflection([*spec.grpc_services, HEALTH_SERVICE, reflection.SERVICE_NAME], server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:  # grpcio raises instead of returning 0 when the bind fails
        bound = 0
    if bound == 0:
        raise OSError(f"{spec.name}: cannot listen on {host}:{port} (port in use?)")
    await server.start()
    built = BuiltServer(server, health, bound, spec)
    await built.set_serving(False)
    return built


async def serve(built: BuiltServer, grace_s: float, on_stop: Callable[[], Awaitable[None]] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain: NOT_SERVING, finish in-flight calls, stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await built.set_accepting(True)
    log.info("%s serving on port %d", built.spec.name, built.port)
    await stop.wait()
    await built.set_accepting(False)
    await built.server.stop(grace_s)
    if on_stop is not None:
        await on_stop()
