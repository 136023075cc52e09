"""The WebSocket side of a service: what every two-way browser endpoint needs, once.

A service with a WebSocket endpoint (chat's asks; canvas's collaboration next) describes its
protocol as a `SocketProtocol`: a path, a subprotocol name, and `session(socket, principal)`,
which reads the client's frames and answers through `socket.send`. The bridge does the rest:

- only the path upgrades (anything else is 404 before the handshake);
- authentication: `Authorization: Bearer <token>`, or, since browsers cannot set headers on a
  WebSocket, a subprotocol entry `access_token.<token>` offered beside the protocol's own
  name (the server selects the protocol's name, never the token entry, so the token is not
  echoed), or the `access_token` query parameter (which the edge moves out of the URL before
  anything logs it). The token is verified like a gRPC call's and never logged; a missing,
  invalid or expired one closes the socket with 4401 and the reason, a verifier that cannot
  fetch keys with 1013 (try again later);
- frames: `json_object` (valid JSON, bounded depth, valid Unicode), and for protocols whose
  frames are protobuf messages, `proto_frame` / `parse_proto_frame` in the proto3 JSON mapping;
- ping/pong keepalive, a bounded message size, and a bounded send queue per socket: a client
  that reads too slowly to keep up is closed with 1008 and a reason saying so, rather than
  growing the server's memory without end;
- tracing: the upgrade is a SERVER span (a child of the request's trace headers); each message
  is one SERVER span (`message_span`), a child of the trace context the message carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack
from http import HTTPStatus
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from services.kit.auth import Principal, TokenVerifier, bearer_token
from services.kit.errors import InvalidArgument, Unauthenticated, Unavailable
from services.kit.events import TRACE_HEADERS
from services.kit.server import SERVER_ERROR_CODES
from services.kit.telemetry import baggage_only, continuing
from services.kit.text import check_strings, json_object

log = logging.getLogger("services.kit.websocket")
_tracer = trace.get_tracer("services.kit.websocket")

TOKEN_QUERY_PARAMETER = "access_token"
TOKEN_SUBPROTOCOL_PREFIX = "access_token."  # the rest of the offered subprotocol is the token
CLOSE_UNAUTHENTICATED = 4401
# A session ended by a status closes its socket with 4000 + the HTTP status Envoy gives that
# gRPC code (4403: permission denied, 4429: fell behind, ...), the reason naming the code.
HTTP_STATUS_OF_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_POLICY = 1008  # RFC 6455: a message (here: a client's pace) the endpoint will not accept
CLOSE_REASON_MAX_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes
MAX_MESSAGE_BYTES = 64 * 1024
SEND_QUEUE = 256  # messages waiting for a slow client before it is closed
PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0
CLOSE_TIMEOUT_S = 2.0

MessageT = TypeVar("MessageT", bound=Message)


class SocketProtocol(Protocol):
    """A service's WebSocket protocol, as the bridge serves it."""

    path: str  # e.g. "/v1/chat/ws"
    subprotocol: str  # e.g. "kp.chat.v1"

    async def session(self, socket: Socket, principal: Principal) -> None:
        """Serve one authenticated client until its socket closes (read `socket.frames()`)."""
        ...


class Socket:
    """One client's socket: its frames in, and a bounded queue of messages out."""

    def __init__(self, connection: ServerConnection, queue_size: int = SEND_QUEUE) -> None:
        self.connection = connection
        self.fell_behind = False
        self._closing: asyncio.Task[None] | None = None  # the close of a client that fell behind
        self._out: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        self._sender = asyncio.create_task(self._send_forever())

    async def frames(self) -> Any:
        """The client's frames, until it closes (a client that goes away is no error)."""
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.connection:
                yield raw

    def send(self, message: Mapping[str, Any] | str) -> None:
        """Queue a message (a JSON object, or a text frame already made); a client whose queue
        is full has fallen behind and is closed."""
        if self.fell_behind:
            return
        text = message if isinstance(message, str) else json.dumps(message, ensure_ascii=False)
        try:
            self._out.put_nowait(text)
        except asyncio.QueueFull:
            self.fell_behind = True
            log.warning("a WebSocket client fell behind by %d messages; closing it", self._out.maxsize)
            self._sender.cancel()
            reason = f"the client fell behind: {self._out.maxsize} messages were waiting for it"
            self._closing = asyncio.get_running_loop().create_task(self.close(CLOSE_POLICY, reason))

    async def close(self, code: int, reason: str) -> None:
        await self.connection.close(code, close_reason(reason))

    async def drain(self) -> None:
        """Send what is queued (a closed socket loses it), then stop sending."""
        with contextlib.suppress(ConnectionClosed, asyncio.CancelledError):
            while not self._out.empty() and not self._sender.done():
                await asyncio.sleep(0.01)
        self._sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender

    async def _send_forever(self) -> None:
        while True:
            text = await self._out.get()
            try:
                await self.connection.send(text)
            except ConnectionClosed:
                return


# ---------------------------------------------------------------- frames


def proto_frame(message: Message) -> str:
    """A protobuf message as a text frame, in the proto3 JSON mapping."""
    return json_format.MessageToJson(message, indent=None, ensure_ascii=False)


def parse_proto_frame(raw: str | bytes, message_type: type[MessageT]) -> MessageT:
    """A client's frame as a protobuf message, or INVALID_ARGUMENT naming what is wrong: the
    frame's JSON is checked first (depth, Unicode), then read as the proto3 JSON mapping
    reads it (unknown fields refused), then its strings (no NUL)."""
    body = json_object(raw)
    try:
        message = json_format.ParseDict(body, message_type())
    except json_format.ParseError as error:
        raise InvalidArgument("message", str(error)) from None
    check_strings(message)
    return message


# ---------------------------------------------------------------- authentication


def token_of(request: Request | None) -> str | None:
    """The access token of an upgrade request: the Authorization header, else an offered
    `access_token.` subprotocol, else the query."""
    if request is None:
        return None
    token = bearer_token(request.headers.raw_items())
    if token is not None:
        return token
    for offered in offered_subprotocols(request):
        if offered.startswith(TOKEN_SUBPROTOCOL_PREFIX) and len(offered) > len(TOKEN_SUBPROTOCOL_PREFIX):
            return offered.removeprefix(TOKEN_SUBPROTOCOL_PREFIX)
    values = parse_qs(urlsplit(request.path).query).get(TOKEN_QUERY_PARAMETER, [])
    if not values or not values[0].strip():
        return None
    return values[0].strip()


def offered_subprotocols(request: Request) -> list[str]:
    return [item.strip() for value in request.headers.get_all("Sec-WebSocket-Protocol") for item in value.split(",")]


def missing_token(subprotocol: str) -> str:
    return (
        "this socket needs an access token: send 'Authorization: Bearer <token>', or offer the subprotocols "
        f"'{subprotocol}' and '{TOKEN_SUBPROTOCOL_PREFIX}<token>'"
    )


def close_code_for(code: grpc.StatusCode) -> int:
    """The close code of a socket whose session ended with this gRPC status."""
    return 4000 + HTTP_STATUS_OF_CODE.get(code, 500)


def close_reason(text: str) -> str:
    """The text cut to fit a close frame (whole characters only)."""
    encoded = text.encode()
    if len(encoded) <= CLOSE_REASON_MAX_BYTES:
        return text
    return encoded[: CLOSE_REASON_MAX_BYTES - 3].decode(errors="ignore") + "..."


# ---------------------------------------------------------------- tracing


def trace_carrier(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {key.lower(): value for key, value in pairs if value and key.lower() in TRACE_HEADERS}


@contextlib.contextmanager
def message_span(
    path: str, kind: str, carrier: Mapping[str, str] | None = None, attributes: Mapping[str, str] | None = None
) -> Iterator[trace.Span]:
    """The SERVER span of one client message (or of the upgrade), current while it is
    handled; a child of the trace context in `carrier`, when there is one."""
    caller = propagate.extract(carrier or {})
    span = _tracer.start_span(f"WS {path} {kind}", context=caller, kind=SpanKind.SERVER)
    if span.is_recording():
        span.set_attributes({"network.protocol.name": "websocket", "url.path": path, "websocket.message.type": kind})
        span.set_attributes(dict(attributes or {}))
    token = otel_context.attach(trace.set_span_in_context(span, caller))  # keeps the caller's baggage
    try:
        yield span
    finally:
        otel_context.detach(token)
        span.end()


def record_outcome(span: trace.Span, code: grpc.StatusCode, message: str = "") -> None:
    """The outcome as on a gRPC SERVER span: an error only when the service failed."""
    if not span.is_recording():
        return
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in SERVER_ERROR_CODES:
        span.set_status(Status(StatusCode.ERROR, message or code.name))


# ---------------------------------------------------------------- the bridge


class WebSocketBridge:
    """Accepts sockets on the protocol's path, authenticates them, and hands each to the
    protocol's session with its own `Socket`."""

    def __init__(self, protocol: SocketProtocol, verifier: TokenVerifier, send_queue: int = SEND_QUEUE) -> None:
        self.protocol = protocol
        self.verifier = verifier
        self.send_queue = send_queue

    def check_path(self, connection: ServerConnection, request: Request) -> Response | None:
        """Only the protocol's path upgrades; anything else is 404 before the handshake."""
        if urlsplit(request.path).path != self.protocol.path:
            return connection.respond(HTTPStatus.NOT_FOUND, f"this WebSocket is at {self.protocol.path}\n")
        return None

    def select_subprotocol(self, connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        """The protocol's name when the client offers it; never the token entry (it would be
        echoed back); none for a client that offers none (it sent its token in a header)."""
        if self.protocol.subprotocol in offered:
            return Subprotocol(self.protocol.subprotocol)
        if offered:
            raise NegotiationError(
                f"offer the '{self.protocol.subprotocol}' subprotocol beside '{TOKEN_SUBPROTOCOL_PREFIX}<token>'"
            )
        return None

    async def handle(self, connection: ServerConnection) -> None:
        principal = await self.authenticate(connection)
        if principal is None:
            return
        socket = Socket(connection, self.send_queue)
        # Each message's span starts a trace of its own, carrying the upgrade request's baggage
        # (a load run's marks); one trace for a whole session would never end.
        request = connection.request
        upgrade = propagate.extract(trace_carrier(request.headers.raw_items() if request is not None else ()))
        try:
            with continuing(baggage_only(upgrade)):
                await self.protocol.session(socket, principal)
        finally:
            await socket.drain()

    async def authenticate(self, connection: ServerConnection) -> Principal | None:
        """The socket's user, or None once the socket is closed with the reason."""
        request = connection.request
        headers = list(request.headers.raw_items()) if request is not None else []
        with message_span(self.protocol.path, "connect", trace_carrier(headers)) as span:
            try:
                token = token_of(request)
                if token is None:
                    raise Unauthenticated(missing_token(self.protocol.subprotocol))
                principal = await self.verifier.verify(token)
            except Unauthenticated as error:
                record_outcome(span, error.code)
                await connection.close(CLOSE_UNAUTHENTICATED, close_reason(error.message))
                return None
            except Unavailable as error:
                record_outcome(span, error.code, error.message)
                await connection.close(CLOSE_TRY_AGAIN_LATER, close_reason(error.message))
                return None
            record_outcome(span, grpc.StatusCode.OK)
            return principal

    async def open_in(self, resources: AsyncExitStack, host: str, port: int) -> Server:
        """`open_server`, closed with `resources` (even if its loop never ran: a start-up
        that failed later); run its `serve_forever` as a background loop."""
        server = await self.open_server(host, port)
        resources.push_async_callback(close_server, server)
        # The library logs every connection at INFO; the endpoint's own spans already record them.
        logging.getLogger("websockets").setLevel(logging.WARNING)
        log.info("WebSocket endpoint at ws://%s:%d%s", host, port, self.protocol.path)
        return server

    async def open_server(self, host: str, port: int) -> Server:
        """The bridge's server, bound (a taken port fails here, at start-up) but not yet
        accepting: `serve_forever` starts accepting and, when cancelled, closes every socket."""
        try:
            return await serve(
                self.handle,
                host,
                port,
                process_request=self.check_path,
                select_subprotocol=self.select_subprotocol,
                max_size=MAX_MESSAGE_BYTES,
                ping_interval=PING_INTERVAL_S,
                ping_timeout=PING_TIMEOUT_S,
                # A client that does not answer our close frame must not hold up shutdown.
                close_timeout=CLOSE_TIMEOUT_S,
                start_serving=False,
            )
        except OSError as error:
            raise OSError(
                f"WebSocket {self.protocol.path}: cannot listen on {host}:{port} (port in use?): {error}"
            ) from error


async def close_server(server: Server) -> None:
    server.close()
    await server.wait_closed()
