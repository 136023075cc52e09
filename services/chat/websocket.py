"""The chat service's WebSocket endpoint: Ask for browsers, over one two-way socket.

Browsers stream two ways over WebSockets (the seed's choice), so the chat process also serves
`ws://<host>:<ws_port>/v1/chat/ws` (through Envoy: the same path on the edge listener). It is a
second adapter of the same use case as gRPC Ask (`ChatService.ask`): one implementation of
asking, two ways in.

The kit's WebSocket bridge (services.kit.websocket) serves it: authentication (the token in
the Authorization header, or offered as the subprotocol `access_token.<token>` beside
`kp.chat.v1`: `new WebSocket(url, ["kp.chat.v1", "access_token." + token])`; 4401 when it is
missing, invalid or expired, 1013 when keys cannot be fetched), keepalive, frame limits and a
bounded send queue (a client that falls behind is closed with 1008). An ask sent after the
token expired also closes the socket with 4401 (reconnect with a fresh token).

Protocol: every message is one JSON object in a text frame.

Client → server
    {"type": "ask", "request_id": "r1", "conversation_id": "<uuid>", "question": "...",
     "traceparent": "00-...-01"}            traceparent (and tracestate) are optional
    {"type": "cancel", "request_id": "r1"}  ends that ask; unknown or finished ids are ignored

Server → client (each carries the request_id of its ask)
    {"type": "delta", "request_id": "r1", "text": "..."}
    {"type": "citation", "request_id": "r1", "number": 1, "document_id": "...", "space_id": "...",
     "chunk_index": 0, "document_version": 3, "snippet": "...", "score": 0.82}
    {"type": "complete", "request_id": "r1", "message_id": "...", "question_message_id": "...",
     "answer_kind": "ANSWER_KIND_EXTRACTIVE", "text": "..."}
    {"type": "error", "request_id": "r1" | null, "code": "NOT_FOUND", "message": "...",
     "field": "question"}                   field only for INVALID_ARGUMENT

Deltas and citations come in any interleaving, exactly as in gRPC Ask; every ask ends with
exactly one `complete` or one `error` (code CANCELLED after a cancel). Codes are gRPC status
names and mean what they mean for gRPC Ask. A socket may carry several asks at once (up to 8;
more get RESOURCE_EXHAUSTED), each with a request_id not in use by another ask in progress. A
message that is not valid JSON, or has an unknown type or malformed fields, gets an
INVALID_ARGUMENT error (with its request_id when one could be read) and the socket stays open.

Tracing: each message is one SERVER span (the ask's lasts until its last reply), a child of
the `traceparent` the ask carries, if any; the upgrade is a SERVER span of its own, a child of
the request's trace headers (Envoy's span when it came through Envoy).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import grpc

from services.chat.domain import AnswerComplete, AnswerDelta, AskUpdate, Citation
from services.kit.auth import Principal, set_principal
from services.kit.errors import DomainError, InvalidArgument, RateLimited, status_for
from services.kit.server import set_deadline_in
from services.kit.telemetry import current_trace_id
from services.kit.text import is_unicode, json_object
from services.kit.websocket import CLOSE_UNAUTHENTICATED, Socket, message_span, record_outcome, trace_carrier

log = logging.getLogger("services.chat.websocket")

WS_PATH = "/v1/chat/ws"
CHAT_SUBPROTOCOL = "kp.chat.v1"
MAX_ASKS_IN_FLIGHT = 8
REQUEST_ID_MAX = 100
# Calls made for one ask (knowledge, vector) share this budget, as a gRPC caller's deadline would.
ASK_DEADLINE_S = 60.0


# ------------------------------------------------------------ protocol


@dataclass(frozen=True)
class AskCommand:
    request_id: str
    conversation_id: str
    question: str
    traceparent: str = ""
    tracestate: str = ""

    @property
    def trace_carrier(self) -> dict[str, str]:
        """The W3C trace context the client sent with the ask (if any)."""
        return trace_carrier([("traceparent", self.traceparent), ("tracestate", self.tracestate)])


@dataclass(frozen=True)
class CancelCommand:
    request_id: str


Command: TypeAlias = AskCommand | CancelCommand
Event: TypeAlias = dict[str, Any]


class ProtocolError(Exception):
    """A client message that breaks the protocol; answered INVALID_ARGUMENT, the socket stays."""

    def __init__(self, field: str, problem: str, request_id: str | None = None) -> None:
        super().__init__(f"{field}: {problem}")
        self.error = InvalidArgument(field, problem)
        self.request_id = request_id


def parse_command(raw: str | bytes) -> Command:
    """A client message as a command, or ProtocolError saying what is wrong with it."""
    try:
        body = json_object(raw)
    except InvalidArgument as error:
        raise ProtocolError(error.field, error.problem, _request_id_in(raw)) from None
    request_id = _request_id(body.get("request_id"))
    kind = body.get("type")
    if kind == "ask":
        if request_id is None:
            raise ProtocolError("request_id", f"is required: 1–{REQUEST_ID_MAX} characters naming this ask")
        return AskCommand(
            request_id=request_id,
            conversation_id=_string(body, "conversation_id", request_id),
            question=_string(body, "question", request_id),
            traceparent=_string(body, "traceparent", request_id),
            tracestate=_string(body, "tracestate", request_id),
        )
    if kind == "cancel":
        if request_id is None:
            raise ProtocolError("request_id", "is required: the request_id of the ask to cancel")
        return CancelCommand(request_id)
    raise ProtocolError("type", f"must be 'ask' or 'cancel', got {kind!r}", request_id)


def _request_id(value: object) -> str | None:
    """A usable request id, or None when absent or unusable (the error then names no ask)."""
    if isinstance(value, str) and 1 <= len(value) <= REQUEST_ID_MAX and is_unicode(value):
        return value
    return None


def _request_id_in(raw: str | bytes) -> str | None:
    """The request id of a message refused as a whole, when a shallow look can find it (so
    the error names the ask); a message too deep or malformed to read names none."""
    try:
        body = json.loads(raw) if isinstance(raw, str) else None
    except (ValueError, RecursionError):
        return None
    return _request_id(body.get("request_id")) if isinstance(body, dict) else None


def _string(body: dict[str, Any], field: str, request_id: str) -> str:
    """An optional string field ("" when absent); the use case says when a required one is empty."""
    value = body.get(field, "")
    if not isinstance(value, str):
        raise ProtocolError(field, f"must be a string, got {type(value).__name__}", request_id)
    return value


def update_event(request_id: str, update: AskUpdate, citation_number: int = 0) -> Event:
    """The JSON message of one Ask update; citations carry their number (1, 2, ...)."""
    if isinstance(update, AnswerDelta):
        return {"type": "delta", "request_id": request_id, "text": update.text}
    if isinstance(update, Citation):
        return {
            "type": "citation",
            "request_id": request_id,
            "number": citation_number,
            "document_id": update.document_id,
            "space_id": update.space_id,
            "chunk_index": update.chunk_index,
            "document_version": update.document_version,
            "snippet": update.snippet,
            "score": update.score,
        }
    complete: AnswerComplete = update
    return {
        "type": "complete",
        "request_id": request_id,
        "message_id": complete.message_id,
        "question_message_id": complete.question_message_id,
        "answer_kind": f"ANSWER_KIND_{complete.answer_kind.name}",
        "text": complete.text,
    }


def error_event(request_id: str | None, error: BaseException, trace_id: str = "") -> Event:
    """The JSON message of a failure, mapped exactly as for gRPC (services.kit.errors)."""
    reply = status_for(error, trace_id)
    event: Event = {"type": "error", "request_id": request_id, "code": reply.code.name, "message": reply.message}
    if isinstance(error, InvalidArgument):
        event["field"] = error.field
    return event


def cancelled_event(request_id: str) -> Event:
    return {"type": "error", "request_id": request_id, "code": "CANCELLED", "message": "the ask was cancelled"}


# ------------------------------------------------------------ endpoint


class Asker(Protocol):
    """The Ask use case (services.chat.service.ChatService.ask)."""

    def ask(self, caller_id: str, conversation_id: str, question: str) -> AsyncIterator[AskUpdate]: ...


class ChatSocket:
    """One client's socket: who it is, and its asks in progress."""

    def __init__(self, socket: Socket, principal: Principal, asker: Asker, leeway_s: int) -> None:
        self.socket = socket
        self.principal = principal
        self.asker = asker
        self.leeway_s = leeway_s
        self.asks: dict[str, asyncio.Task[None]] = {}

    async def serve(self) -> None:
        """Handle messages until the client or the server closes the socket."""
        try:
            async for raw in self.socket.frames():
                await self.receive(raw)
        finally:
            await self.cancel_all()

    async def receive(self, raw: str | bytes) -> None:
        try:
            command = parse_command(raw)
        except ProtocolError as error:
            with message_span(WS_PATH, "invalid") as span:
                record_outcome(span, error.error.code)
                self.socket.send(error_event(error.request_id, error.error))
            return
        if isinstance(command, CancelCommand):
            with message_span(WS_PATH, "cancel", attributes={"chat.request_id": command.request_id}) as span:
                task = self.asks.get(command.request_id)
                if task is not None:
                    task.cancel()
                record_outcome(span, grpc.StatusCode.OK)
            return
        if time.time() >= self.principal.expires_at + self.leeway_s:
            await self.socket.close(CLOSE_UNAUTHENTICATED, "access token expired; reconnect with a fresh token")
            return
        refusal = self.refusal_of(command)
        if refusal is not None:
            with message_span(WS_PATH, "ask", command.trace_carrier, {"chat.request_id": command.request_id}) as span:
                record_outcome(span, refusal.code)
                self.socket.send(error_event(command.request_id, refusal))
            return
        self.asks[command.request_id] = asyncio.create_task(self.run_ask(command), name=f"ws ask {command.request_id}")

    def refusal_of(self, command: AskCommand) -> InvalidArgument | RateLimited | None:
        if command.request_id in self.asks:
            return InvalidArgument(
                "request_id", f"{command.request_id!r} names an ask still in progress on this socket"
            )
        if len(self.asks) >= MAX_ASKS_IN_FLIGHT:
            return RateLimited(
                f"at most {MAX_ASKS_IN_FLIGHT} asks may be in progress on one socket; wait for one to complete",
                retry_after_s=1.0,
            )
        return None

    async def run_ask(self, command: AskCommand) -> None:
        """One ask, in its own task: as the socket's user, within the ask's deadline, in the
        ask's span; its updates are sent as they come and it ends with complete or error."""
        # The task has its own copy of the context: these settings end with it.
        set_principal(self.principal)
        set_deadline_in(ASK_DEADLINE_S)
        with message_span(WS_PATH, "ask", command.trace_carrier, {"chat.request_id": command.request_id}) as span:
            citations = 0
            try:
                async for update in self.asker.ask(self.principal.user_id, command.conversation_id, command.question):
                    if isinstance(update, Citation):
                        citations += 1
                    self.socket.send(update_event(command.request_id, update, citations))
                record_outcome(span, grpc.StatusCode.OK)
            except asyncio.CancelledError:
                record_outcome(span, grpc.StatusCode.CANCELLED)
                self.socket.send(cancelled_event(command.request_id))
                raise
            except Exception as error:
                reply = status_for(error, current_trace_id())
                if not isinstance(error, DomainError):
                    log.error("ask failed (trace %s)", current_trace_id(), exc_info=error)
                    span.record_exception(error)
                record_outcome(span, reply.code, reply.message)
                self.socket.send(error_event(command.request_id, error, current_trace_id()))
            finally:
                # Right after the last reply, with no await in between: a client that reuses
                # the request_id as soon as it sees `complete` is not refused.
                self.asks.pop(command.request_id, None)

    async def cancel_all(self) -> None:
        tasks = list(self.asks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class ChatProtocol:
    """The chat protocol, as the kit's WebSocket bridge serves it."""

    path = WS_PATH
    subprotocol = CHAT_SUBPROTOCOL

    def __init__(self, asker: Asker, leeway_s: int) -> None:
        self.asker = asker
        self.leeway_s = leeway_s

    async def session(self, socket: Socket, principal: Principal) -> None:
        await ChatSocket(socket, principal, self.asker, self.leeway_s).serve()
