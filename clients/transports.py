"""One RPC, three ways through Envoy: native gRPC, gRPC-Web and JSON.

A contract suite calls every RPC of a service through each `Transport` and compares what comes
back: the response message, or a gRPC status (code, message text, rich details) — for JSON also
the HTTP status Envoy answered with.

    transports = transports_for(stack.envoy_http, stack.envoy_grpc)
    for transport in transports:
        reply = await transport.unary(MethodRef.of("auth.v1.AuthService/GetJwks"), auth_pb2.GetJwksRequest())
        assert reply.ok, reply
    await aclose_all(transports)

What the three see differently, by Envoy's design (each `Reply` says what it could observe):
- JSON server streams arrive as one JSON array over HTTP/1.1. A stream that fails before its
  first message becomes an HTTP error with the status; one that fails after it ends as a
  well-formed array with HTTP 200 and the status is lost (`StreamReply.status_observed` is
  False for every JSON stream that started).
- JSON errors whose details Envoy cannot render (their types are not in its descriptor set,
  e.g. google.rpc.BadRequest) come back with an empty body and the grpc-status,
  grpc-message and grpc-status-details-bin headers; `http_rules.grpc_error_from_http` reads both.
- gRPC-Web errors before any message are "trailers-only": the status is in the response
  headers, not in a trailer frame.
- Envoy enforces the grpc-timeout every transport sends (the routes' max_stream_duration): when
  its timer wins the race with the client's, it answers UNAVAILABLE / HTTP 504 "downstream
  duration timeout", or resets a stream that has started (INTERNAL "Stream removed"). A call
  that fails like that after its deadline is reported as DEADLINE_EXCEEDED on every transport.
- A request JSON cannot express (an empty path variable, a repeated message outside the body)
  raises `http_rules.HttpRuleError` from JsonHttp instead of calling some other route.
"""

from __future__ import annotations

import asyncio
import codecs
import dataclasses
import functools
import importlib
import inspect
import json
import math
import pkgutil
import struct
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol, TypeVar, cast, runtime_checkable

import aiohttp
import grpc
import yarl
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2

from clients.http_rules import (
    HttpError,
    binding_for,
    build_http_request,
    decode_grpc_message,
    decode_status_details,
    envoy_deadline_aware,
    grpc_code,
    grpc_code_for_http_status,
    grpc_error_from_http,
    parse_response,
)

API_PACKAGE = "services.api"
NATIVE_GRPC, GRPC_WEB, JSON_HTTP = "grpc", "grpc-web", "json"
ALL_TRANSPORTS: tuple[str, ...] = (NATIVE_GRPC, GRPC_WEB, JSON_HTTP)  # pytest ids, in this order

GRPC_WEB_CONTENT_TYPE = "application/grpc-web+proto"
DATA_FLAG, COMPRESSED_FLAG, TRAILERS_FLAG = 0x00, 0x01, 0x80

Metadata = Sequence[tuple[str, str]]


# ---------------------------------------------------------------- methods


@functools.cache
def load_api() -> None:
    """Import every generated module under services.api (and health), so that every service,
    method and message is in the default descriptor pool."""
    package = importlib.import_module(API_PACKAGE)
    for module in pkgutil.walk_packages(package.__path__, f"{API_PACKAGE}."):
        if module.name.endswith("_pb2"):
            importlib.import_module(module.name)
    importlib.import_module("grpc_health.v1.health_pb2")


@dataclass(frozen=True)
class MethodRef:
    """One RPC, e.g. `MethodRef.of("auth.v1.AuthService/SignUp")`, with its descriptor and the
    generated request and response classes."""

    service: str  # "auth.v1.AuthService"
    method: str  # "SignUp"
    descriptor: MethodDescriptor = field(compare=False, repr=False)
    request_class: type[Message] = field(compare=False, repr=False)
    response_class: type[Message] = field(compare=False, repr=False)

    @classmethod
    def of(cls, name: str | MethodRef) -> MethodRef:
        """From "auth.v1.AuthService/SignUp", "/auth.v1.AuthService/SignUp" or
        "auth.v1.AuthService.SignUp"."""
        if isinstance(name, MethodRef):
            return name
        return _resolve(name.strip().lstrip("/").replace("/", "."))

    @property
    def name(self) -> str:
        return f"{self.service}/{self.method}"

    @property
    def path(self) -> str:
        """The HTTP/2 path of the native gRPC and gRPC-Web call."""
        return f"/{self.service}/{self.method}"

    @property
    def server_streaming(self) -> bool:
        return bool(self.descriptor.server_streaming)

    @property
    def client_streaming(self) -> bool:
        return bool(self.descriptor.client_streaming)

    def __str__(self) -> str:
        return self.name


@functools.cache
def _resolve(full_name: str) -> MethodRef:
    load_api()
    try:
        descriptor = descriptor_pool.Default().FindMethodByName(full_name)
    except KeyError:
        raise KeyError(f"no RPC {full_name!r} in the generated API ({API_PACKAGE})") from None
    return MethodRef(
        service=descriptor.containing_service.full_name,
        method=descriptor.name,
        descriptor=descriptor,
        request_class=message_factory.GetMessageClass(descriptor.input_type),
        response_class=message_factory.GetMessageClass(descriptor.output_type),
    )


def methods_of(service: str) -> list[MethodRef]:
    """Every RPC of a service ("knowledge.v1.KnowledgeService"), in declaration order."""
    load_api()
    descriptor = descriptor_pool.Default().FindServiceByName(service)
    return [MethodRef.of(f"{service}/{method.name}") for method in descriptor.methods]


# ---------------------------------------------------------------- replies


@dataclass(frozen=True)
class Reply:
    """The outcome of a unary call: `message` when `code` is OK, else None with `details`."""

    transport: str
    method: MethodRef
    message: Message | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""  # the status message text
    http_status: int | None = None  # JSON only
    status: status_pb2.Status | None = None  # google.rpc.Status with rich details, when sent
    metadata: tuple[tuple[str, str], ...] = ()  # response headers/metadata and trailers (text ones)

    @property
    def ok(self) -> bool:
        return self.code == grpc.StatusCode.OK and self.message is not None

    def unwrap(self) -> Message:
        if self.message is None or self.code != grpc.StatusCode.OK:
            raise AssertionError(f"{self.transport} {self.method}: {self.code.name}: {self.details}")
        return self.message

    def header(self, name: str) -> str | None:
        """The first response header / metadata value of that name."""
        return next((value for key, value in self.metadata if key == name.lower()), None)


@dataclass(frozen=True)
class StreamReply:
    """The outcome of a server-streaming call: the messages received and the final status."""

    transport: str
    method: MethodRef
    messages: list[Message] = field(default_factory=list)
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    http_status: int | None = None
    status: status_pb2.Status | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    # False when the transport could not see the final status (a JSON stream that started:
    # Envoy ends the array with HTTP 200 whatever the status); `code` is then OK (or UNKNOWN
    # if the array was cut off).
    status_observed: bool = True
    # True when the caller's `limit` was reached and the call was cancelled.
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.code == grpc.StatusCode.OK


# -------------------------------------------------------------- transport


@runtime_checkable
class Transport(Protocol):
    """Calls an RPC through Envoy in one wire format."""

    name: str

    async def unary(
        self,
        method: MethodRef | str,
        request: Message,
        *,
        token: str | None = None,
        metadata: Metadata = (),
        timeout: float = 10,  # noqa: ASYNC109  (the call's deadline, sent to the server)
    ) -> Reply: ...

    async def server_stream(
        self,
        method: MethodRef | str,
        request: Message,
        *,
        token: str | None = None,
        metadata: Metadata = (),
        timeout: float = 10,  # noqa: ASYNC109  (the call's deadline, sent to the server)
        limit: int | None = None,
    ) -> StreamReply: ...

    async def aclose(self) -> None: ...


def call_headers(token: str | None, metadata: Metadata) -> list[tuple[str, str]]:
    """`authorization: Bearer <token>` and the caller's metadata, names lower-cased."""
    headers = [("authorization", f"Bearer {token}")] if token is not None else []
    headers.extend((key.lower(), value) for key, value in metadata)
    return headers


def grpc_timeout(seconds: float) -> str:
    """A grpc-timeout header value (at most 8 digits and a unit), rounded up."""
    for unit, per_second in (("m", 1000.0), ("S", 1.0), ("M", 1 / 60), ("H", 1 / 3600)):
        value = max(1, math.ceil(seconds * per_second))
        if value < 100_000_000:
            return f"{value}{unit}"
    return "99999999H"


def _checked(method: MethodRef | str, request: Message, streaming: bool) -> MethodRef:
    ref = MethodRef.of(method)
    if ref.client_streaming:
        raise ValueError(f"{ref} streams its requests: call NativeGrpc.bidi_stream() (gRPC-Web and JSON cannot)")
    if ref.server_streaming != streaming:
        use = "server_stream" if ref.server_streaming else "unary"
        raise ValueError(f"{ref} is {'server-streaming' if ref.server_streaming else 'unary'}: call {use}()")
    if request.DESCRIPTOR.full_name != ref.descriptor.input_type.full_name:
        raise TypeError(f"{ref} takes {ref.descriptor.input_type.full_name}, not {request.DESCRIPTOR.full_name}")
    return ref


# Codes a call can end with when its deadline passed first somewhere else: Envoy enforces the
# grpc-timeout the client sends (max_stream_duration) and answers UNAVAILABLE/504 "downstream
# duration timeout", or resets a stream that has started (INTERNAL "Stream removed").
DEADLINE_SUSPECTS = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}
)

# The deadline travels as a grpc-timeout header of whole milliseconds, and Envoy's timers tick in
# milliseconds: Envoy may end a call a moment before the client's own clock says it is due.
DEADLINE_SLACK_S = 0.005

AnyReply = TypeVar("AnyReply", Reply, StreamReply)
P = ParamSpec("P")


def settle_deadline(reply: AnyReply, elapsed_s: float, timeout: float) -> AnyReply:
    """DEADLINE_EXCEEDED for a call that failed once its deadline had passed, whoever (client,
    Envoy, service) noticed the deadline first; the original text stays in `details`."""
    if reply.code in DEADLINE_SUSPECTS and elapsed_s >= timeout - DEADLINE_SLACK_S:
        return dataclasses.replace(reply, code=grpc.StatusCode.DEADLINE_EXCEEDED)
    return reply


def deadline_settled(call: Callable[P, Coroutine[Any, Any, AnyReply]]) -> Callable[P, Coroutine[Any, Any, AnyReply]]:
    default_timeout = inspect.signature(call).parameters["timeout"].default

    @functools.wraps(call)
    async def settled(*args: P.args, **kwargs: P.kwargs) -> AnyReply:
        timeout = float(cast(float, kwargs.get("timeout", default_timeout)))
        began = time.monotonic()
        reply = await call(*args, **kwargs)
        return settle_deadline(reply, time.monotonic() - began, timeout)

    return settled


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _lowered(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((key.lower(), value) for key, value in headers)


# ------------------------------------------------------------ native gRPC


class NativeGrpc:
    """gRPC over HTTP/2 through Envoy's listener, with one `grpc.aio` channel."""

    name = NATIVE_GRPC

    def __init__(self, target: str, authority: str | None = None, metadata: Metadata = ()) -> None:
        self.target = target
        self.authority = authority
        # Sent with every call, e.g. a service token for calls straight to a service.
        self.metadata = tuple(metadata)
        self._channel: grpc.aio.Channel | None = None

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            options = [("grpc.default_authority", self.authority)] if self.authority else []
            self._channel = grpc.aio.insecure_channel(self.target, options=options)
        return self._channel

    @deadline_settled
    async def unary(
        self,
        method: MethodRef | str,
        request: Message,
        *,
        token: str | None = None,
        metadata: Metadata = (),
        timeout: float = 10,  # noqa: ASYNC109  (the call's deadline, sent to the server)
    ) -> Reply:
        ref = _checked(method, request, streaming=False)
        stub = self.channel.unary_unary(
            ref.path, request_serializer=_serialize, response_deserializer=ref.response_class.FromString
        )
        call = stub(request, metadata=tuple(call_headers(token, (*self.metadata, *metadata))), timeout=timeout)
        try:
            response = await call
        except grpc.aio.AioRpcError as error:
            return Reply(
                self.name,
                ref,
                code=error.code(),
                details=error.details() or "",
                status=_status_from_metadata(error.trailing_metadata()),
                metadata=_grpc_metadata(error.initial_metadata(), error.trailing_metadata()),
            )
        received = _grpc_metadata(await call.initial_metadata(), await call.trailing_metadata())
        return Reply(self.name, ref, message=response, details=await call.details() or "", metadata=received)

    @deadline_settled
    async def server_stream(
        self,
        method: MethodRef | str,
        request: Message,
        *,
        token: str | None = None,
        metadata: Metadata = (),
        timeout: float = 10,  # noqa: ASYNC109  (the call's deadline, sent to the server)
        limit: int | None = None,
    ) -> StreamReply:
        ref = _checked(method, request, streaming=True)
        stub = self.channel.unary_stream(
            ref.path, request_serializer=_serialize, response_deserializer=ref.response_class.FromString
        )
        call = stub(request, metadata=tuple(call_headers(token, (*self.metadata, *metadata))), timeout=timeout)
        return await self._collect(ref, call, limit)

    async def bidi_stream(
        self,
        method: MethodRef | str,
        requests: Sequence[Message],
        *,
        token: str | None = None,
        metadata: Metadata = (),
        timeout: float = 10,  # noqa: ASYNC109  (the call's deadline, sent to the server)
        limit: int | None = None,
        pause_s: float = 0.0,
    ) -> StreamReply:
        """A call that streams both ways (e.g. canvas's Collaborate): `requests` are sent in
        order, `pause_s` apart, then the client half-closes; the responses are collected until
        the server ends the call (or `limit` of them arrived, and the call is cancelled)."""
        ref = MethodRef.of(method)
        if not (ref.client_streaming and ref.server_streaming):
            raise ValueError(f"{ref} does not stream both ways: call unary() or server_stream()")
        for request in requests:
            if request.DESCRIPTOR.full_name != ref.descriptor.input_type.full_name:
                raise TypeError(
                    f"{ref} takes {ref.descriptor.input_type.full_name}, not {request.DESCRIPTOR.full_name}"
                )
        stub = self.channel.stream_stream(
            ref.path, request_serializer=_serialize, response_deserializer=ref.response_class.FromString
        )

        async def sent() -> AsyncIterator[Message]:
            for request in requests:
                yield request
                await asyncio.sleep(pause_s)

        call = stub(sent(), metadata=tuple(call_headers(token, (*self.metadata, *metadata))), timeout=timeout)
        return await self._collect(ref, call, limit)

    async def _collect(self, ref: MethodRef, call: Any, limit: int | None) -> StreamReply:
        messages: list[Message] = []
        try:
            async for message in call:
                messages.append(message)
                if limit is not None and len(messages) >= limit:
                    call.cancel()
                    return StreamReply(
                        self.name, ref, messages, metadata=_grpc_metadata(await call.initial_metadata()), truncated=True
                    )
        except grpc.aio.AioRpcError as error:
            return StreamReply(
                self.name,
                ref,
                messages,
                code=error.code(),
                details=error.details() or "",
                status=_status_from_metadata(error.trailing_metadata()),
                metadata=_grpc_metadata(error.initial_metadata(), error.trailing_metadata()),
            )
        return StreamReply(
            self.name,
            ref,
            messages,
            code=await call.code(),
            details=await call.details() or "",
            metadata=_grpc_metadata(await call.initial_metadata(), await call.trailing_metadata()),
        )

    async def aclose(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()


def _grpc_metadata(*groups: Any) -> tuple[tuple[str, str], ...]:
    """Text metadata of the call (initial, then trailing); binary values are left out."""
    return tuple(
        (str(key).lower(), value) for group in groups if group for key, value in group if isinstance(value, str)
    )


def _status_from_metadata(trailing: Any) -> status_pb2.Status | None:
    for key, value in trailing or ():
        if key == "grpc-status-details-bin":
            return decode_status_details(value)
    return None


# --------------------------------------------------------------- gRPC-Web


def grpc_web_frame(message: bytes, *, flags: int = DATA_FLAG) -> bytes:
    """One length-prefixed gRPC-Web frame: flags byte, 4-byte big-endian length, payload."""
    return bytes([flags]) + struct.pack(">I", len(message)) + message


def grpc_web_trailers_frame(trailers: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """The trailers frame a gRPC-Web server ends a response with (flag 0x80)."""
    pairs = trailers.items() if isinstance(trailers, Mapping) else trailers
    return grpc_web_frame("".join(f"{key}:{value}\r\n" for key, value in pairs).encode(), flags=TRAILERS_FLAG)


@dataclass(frozen=True)
class GrpcWebFrame:
    flags: int
    payload: bytes

    @property
    def is_trailers(self) -> bool:
        return bool(self.flags & TRAILERS_FLAG)

    @property
    def is_compressed(self) -> bool:
        return bool(self.flags & COMPRESSED_FLAG)


class GrpcWebDecoder:
    """Splits a gRPC-Web response body, fed in chunks of any size, into frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[GrpcWebFrame]:
        self._buffer += chunk
        frames = []
        while len(self._buffer) >= 5:
            (length,) = struct.unpack(">I", self._buffer[1:5])
            if len(self._buffer) < 5 + length:
                break
            frames.append(GrpcWebFrame(self._buffer[0], bytes(self._buffer[5 : 5 + length])))
            del self._buffer[: 5 + length]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still waiting for the rest of it."""
        return len(self._buffer)


def parse_trailers(payload: bytes) -> dict[str, str]:
    """The `name:value\\r\\n` lines of a trailers frame; names lower-cased, values stripped."""
    trailers: dict[str, str] = {}
    for line in payload.decode("utf-8", errors="replace").split("\r\n"):
        if ":" in line:
            key, value = line.split(":", 1)
            trailers[key.strip().lower()] = value.strip()
    return trailers


def parse_grpc_web(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """The data frames and the trailers of a whole gRPC-Web response body.
    Raises ValueError if the body ends inside a frame."""
    decoder = GrpcWebDecoder()
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    for frame in decoder.feed(body):
        if frame.is_trailers:
            trailers.update(parse_trailers(frame.payload))
        else:
            messages.append(frame.payload)
    if decoder.pending:
        raise ValueError(f"the gRPC-Web body ends inside a frame ({decoder.pending} bytes left over)")
    return messages, trailers


@dataclass(frozen=True)
class GrpcWebStatus:
    code: grpc.StatusCode
    details: str
    status: status_pb2.Status | None


def grpc_web_status(http_status: int, headers: Mapping[str, str], trailers: Mapping[str, str]) -> GrpcWebStatus:
    """The call's status: from the trailers frame, else from the headers (a trailers-only
    response), else from the HTTP status of an answer that is not gRPC-Web at all."""
    lowered = {key.lower(): value for key, value in headers.items()}
    for source in (trailers, lowered):
        if "grpc-status" in source:
            try:
                number = int(source["grpc-status"])
            except ValueError:
                number = grpc.StatusCode.UNKNOWN.value[0]
            details = decode_grpc_message(source.get("grpc-message", ""))
            return GrpcWebStatus(
                envoy_deadline_aware(grpc_code(number), details),
                details,
                decode_status_details(source.get("grpc-status-details-bin", "")),
            )
    if http_status != 200:
        return GrpcWebStatus(grpc_code_for_http_status(http_status), f"HTTP {http_status} without a gRPC status", None)
    return GrpcWebStatus(grpc.StatusCode.UNKNOWN, "the response ended without a grpc-status", None)


@dataclass
class _WebOutcome:
    http_status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)
    error: tuple[grpc.StatusCode, str] | None = None  # a failure seen by the client itself
    truncated: bool = False


class _HttpTransport:
    """What gRPC-Web and JSON share: one aiohttp session, headers, deadlines, errors."""

    name = ""

    def __init__(self, base_url: str, authority: str | None = None, source_address: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.authority = authority
        # The local address connections leave from (the client's address, as the edge sees it).
        self.source_address = source_address
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            local = (self.source_address, 0) if self.source_address else None
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(), connector=aiohttp.TCPConnector(local_addr=local)
            )
        return self._session

    def headers(self, token: str | None, metadata: Metadata, timeout: float) -> list[tuple[str, str]]:
        headers = [("grpc-timeout", grpc_timeout(timeout))]
        if self.authority:
            headers.append(("host", self.authority))
        return [*headers, *call_headers(token, metadata)]

    def url(self, target: str) -> yarl.URL:
        return yarl.URL(self.base_url + target, encoded=True)

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _client_failure(error: BaseException, timeout: float) -> tuple[grpc.StatusCode, str]:
    if isinstance(error, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline of {timeout:g} s exceeded (client side)"
    return grpc.StatusCode.UNAVAILABLE, f"{type(error).__name__}: {error}"


class GrpcWeb(_HttpTransport):
    """gRPC-Web (binary, application/grpc-web+proto) over HTTP/1.1 through Envoy's grpc_web filter."""

    name = GRPC_WEB

    async def _call(
        self,
        ref: MethodRef,
        request: Message,
        token: str | None,
        metadata: Metadata,
        timeout: float,  # noqa: ASYNC109
        limit: int | None,
    ) -> _WebOutcome:
        headers = [
            ("content-type", GRPC_WEB_CONTENT_TYPE),
            ("accept", GRPC_WEB_CONTENT_TYPE),
            ("x-grpc-web", "1"),
            *self.headers(token, metadata, timeout),
        ]
        outcome = _WebOutcome()
        decoder = GrpcWebDecoder()
        try:
            async with self.session.post(
                self.url(ref.path),
                data=grpc_web_frame(request.SerializeToString()),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                outcome.http_status = response.status
                outcome.headers = {key.lower(): value for key, value in response.headers.items()}
                async for chunk in response.content.iter_any():
                    for frame in decoder.feed(chunk):
                        if frame.is_trailers:
                            outcome.trailers.update(parse_trailers(frame.payload))
                            continue
                        if frame.is_compressed:
                            outcome.error = (grpc.StatusCode.INTERNAL, "a compressed gRPC-Web frame was not asked for")
                            return outcome
                        try:
                            outcome.messages.append(ref.response_class.FromString(frame.payload))
                        except DecodeError as error:
                            outcome.error = (grpc.StatusCode.INTERNAL, f"undecodable response message: {error}")
                            return outcome
                        if limit is not None and len(outcome.messages) >= limit:
                            outcome.truncated = True
                            response.close()
                            return outcome
        except (aiohttp.ClientError, TimeoutError) as error:
            outcome.error = _client_failure(error, timeout)
        if outcome.error is None and decoder.pending:
            outcome.error = (grpc.StatusCode.INTERNAL, f"the response ended inside a frame ({decoder.pending} bytes)")
        return outcome

    @staticmethod
    def _status(outcome: _WebOutcome) -> GrpcWebStatus:
        if outcome.error is not None:
            return GrpcWebStatus(*outcome.error, None)
        return grpc_web_status(outcome.http_status, outcome.headers, outcome.trailers)

    @staticmethod
    def _metadata(outcome: _WebOutcome) -> tuple[tuple[str, str], ...]:
        return _lowered([*outcome.headers.items(), *outcome.trailers.items()])

    @deadline_settled
    async def unary(
        self,
        method: MethodRef | str,
        request: Message,
        *,
        token: str | None = None,
        metadata: Metadata = (),
        timeout: float = 10,  # noqa: ASYNC109  (the call's deadline, sent to the server)
    ) -> Reply:
        ref = _checked(method, request, streaming=False)
        outcome = await self._call(ref, request, token, metadata, timeout, limit=None)
        status = self._status(outcome)
        message: Message | None = None
        code, details = status.code, status.details
        if code == grpc.StatusCode.OK:
            if len(outcome.messages) == 1:
                message = outcome.messages[0]
            else:
                code = grpc.StatusCode.INTERNAL
                details = f"a unary call answered {len(outcome.messages)} messages"
        return Reply(self.name, ref, message, code, details, None, status.status, self._metadata(outcome))

    @deadline_settled
    async def server_stream(
        self,
        method: MethodRef | str,
        request: Message,
        *,
        token: str | None = None,
        metadata: Metadata = (),
        timeout: float = 10,  # noqa: ASYNC109  (the call's deadline, sent to the server)
        limit: int | None = None,
    ) -> StreamReply:
        ref = _checked(method, request, streaming=True)
        outcome = await self._call(ref, request, token, metadata, timeout, limit)
        if outcome.truncated:
            return StreamReply(self.name, ref, outcome.messages, metadata=self._metadata(outcome), truncated=True)
        status = self._status(outcome)
        return StreamReply(
            self.name,
            ref,
            outcome.messages,
            status.code,
            status.details,
            None,
            status.status,
            self._metadata(outcome),
        )


# ------------------------------------------------------------------- JSON


class JsonArrayDecoder:
    """Incremental parser of the JSON array Envoy's transcoder streams (`[{...},{...}]`),
    fed bytes in chunks of any size; returns each element as soon as it is complete."""

    def __init__(self) -> None:
        self._text = ""
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._json = json.JSONDecoder()
        self._state = "start"  # start → first → (item → after)* → end
        self.closed = False

    def feed(self, chunk: bytes) -> list[Any]:
        self._text += self._utf8.decode(chunk)
        items: list[Any] = []
        position, text = 0, self._text
        while True:
            while position < len(text) and text[position] in " \t\r\n":
                position += 1
            if position == len(text):
                break
            char = text[position]
            if self._state == "start":
                if char != "[":
                    raise ValueError(f"expected a JSON array, got {text[position : position + 40]!r}")
                self._state, position = "first", position + 1
            elif self._state in ("first", "after") and char == "]":
                self._state, self.closed, position = "end", True, position + 1
            elif self._state == "after":
                if char != ",":
                    raise ValueError(f"expected ',' or ']' in the JSON array, got {char!r}")
                self._state, position = "item", position + 1
            elif self._state in ("first", "item"):
                try:
                    item, position = self._json.raw_decode(text, position)
                except json.JSONDecodeError:
                    break  # incomplete: wait for more
                items.append(item)
                self._state = "after"
            else:
                raise ValueError(f"data after the end of the JSON array: {text[position : position + 40]!r}")
        self._text = text[position:]
        return items


def parse_json_stream(body: bytes) -> list[Any]:
    """Every element of a whole streamed JSON array; ValueError if it is not one, or unclosed."""
    decoder = JsonArrayDecoder()
    items = decoder.feed(body)
    if not decoder.closed:
        raise ValueError("the JSON array is not closed")
    return items


class JsonHttp(_HttpTransport):
    """JSON over HTTP/1.1 through Envoy's grpc_json_transcoder, following each method's
    `google.api.http` rule (see clients.http_rules)."""

    name = JSON_HTTP

    def _request(
        self, ref: MethodRef, request: Message, token: str | None, metadata: Metadata, timeout: float
    ) -> tuple[str, yarl.URL, bytes | None, list[tuple[str, str]]]:
        http = build_http_request(ref.descriptor, request)
        body = http.body_bytes()
        headers = [("accept", "application/json"), *self.headers(token, metadata, timeout)]
        if body is not None:
            headers.insert(0, ("content-type", "application/json"))
        return http.method, self.url(http.target), body, headers

    @staticmethod
    def _message(ref: MethodRef, data: Any) -> Message:
        return parse_response(data, ref.response_class(), binding_for(ref.descriptor).response_body)

    @deadline_settled
    async def unary(
        self,
        method: MethodRef | str,
        request: Message,
        *,
        token: str | None = None,
        metadata: Metadata = (),
        timeout: float = 10,  # noqa: ASYNC109  (the call's deadline, sent to the server)
    ) -> Reply:
        ref = _checked(method, request, streaming=False)
        verb, url, body, headers = self._request(ref, request, token, metadata, timeout)
        try:
            async with self.session.request(
                verb, url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                http_status, received, raw = response.status, _lowered(response.headers.items()), await response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            code, details = _client_failure(error, timeout)
            return Reply(self.name, ref, code=code, details=details)
        failure = json_failure(http_status, received, raw)
        if failure is not None:
            return Reply(self.name, ref, None, failure.code, failure.message, http_status, failure.status, received)
        try:
            message = self._message(ref, json.loads(raw))
        except (ValueError, TypeError) as error:
            return Reply(
                self.name,
                ref,
                None,
                grpc.StatusCode.INTERNAL,
                f"unparseable JSON response: {error}",
                http_status,
                None,
                received,
            )
        return Reply(self.name, ref, message, grpc.StatusCode.OK, "", http_status, None, received)

    @deadline_settled
    async def server_stream(
        self,
        method: MethodRef | str,
        request: Message,
        *,
        token: str | None = None,
        metadata: Metadata = (),
        timeout: float = 10,  # noqa: ASYNC109  (the call's deadline, sent to the server)
        limit: int | None = None,
    ) -> StreamReply:
        ref = _checked(method, request, streaming=True)
        verb, url, body, headers = self._request(ref, request, token, metadata, timeout)
        messages: list[Message] = []
        decoder = JsonArrayDecoder()
        http_status: int | None = None
        received: tuple[tuple[str, str], ...] = ()

        def reply(code: grpc.StatusCode, details: str, **more: Any) -> StreamReply:
            return StreamReply(self.name, ref, messages, code, details, http_status, metadata=received, **more)

        try:
            async with self.session.request(
                verb, url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                http_status, received = response.status, _lowered(response.headers.items())
                if http_status != 200:
                    failure = grpc_error_from_http(http_status, dict(received), await response.read())
                    return reply(failure.code, failure.message, status=failure.status)
                async for chunk in response.content.iter_any():
                    for item in decoder.feed(chunk):
                        messages.append(self._message(ref, item))
                        if limit is not None and len(messages) >= limit:
                            response.close()
                            return reply(grpc.StatusCode.OK, "", truncated=True, status_observed=False)
        except (aiohttp.ClientError, TimeoutError) as error:
            return reply(*_client_failure(error, timeout))
        except (ValueError, TypeError) as error:
            return reply(grpc.StatusCode.INTERNAL, f"unparseable JSON stream: {error}")
        if not decoder.closed:
            return reply(grpc.StatusCode.UNKNOWN, "the stream ended inside its JSON array", status_observed=False)
        return reply(grpc.StatusCode.OK, "", status_observed=False)


def json_failure(http_status: int, headers: tuple[tuple[str, str], ...], body: bytes) -> HttpError | None:
    """The error of a JSON answer, or None for a success (2xx without a failing grpc-status)."""
    grpc_status = next((value for key, value in headers if key == "grpc-status"), "0").strip()
    if 200 <= http_status < 300 and grpc_status == "0":
        return None
    return grpc_error_from_http(http_status, dict(headers), body)


# -------------------------------------------------------------- factories


def transport_for(
    name: str,
    envoy_http_url: str,
    envoy_grpc_target: str,
    authority: str | None = None,
    source_address: str | None = None,
) -> Transport:
    """One transport by its name ("grpc", "grpc-web" or "json"). `source_address` binds the
    HTTP transports' connections to a local address (see fixtures.addresses for native gRPC)."""
    if name == NATIVE_GRPC:
        if source_address is not None:
            raise ValueError("grpcio cannot choose its source address: use fixtures.addresses.transport_from")
        return NativeGrpc(envoy_grpc_target, authority)
    if name == GRPC_WEB:
        return GrpcWeb(envoy_http_url, authority, source_address)
    if name == JSON_HTTP:
        return JsonHttp(envoy_http_url, authority, source_address)
    raise ValueError(f"unknown transport {name!r}; expected one of {', '.join(ALL_TRANSPORTS)}")


def transports_for(
    envoy_http_url: str,
    envoy_grpc_target: str,
    names: Sequence[str] = ALL_TRANSPORTS,
    authority: str | None = None,
) -> list[Transport]:
    """The three transports through one Envoy: HTTP base URL ("http://127.0.0.1:18080") for
    gRPC-Web and JSON, gRPC target ("127.0.0.1:18080") for native gRPC."""
    return [transport_for(name, envoy_http_url, envoy_grpc_target, authority) for name in names]


async def aclose_all(transports: Iterable[Transport]) -> None:
    await asyncio.gather(*(transport.aclose() for transport in transports))
