"""services.chat.websocket: the protocol as pure functions, then the real WebSocket server (port
0) driven by a real client, in front of a stand-in for the Ask use case (the use case has its
own tests): authentication and 4401, several asks on one socket, cancel, errors that keep the
socket open, the caller's identity during an ask, and one span per message."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.http11 import Request
from websockets.typing import Subprotocol

from fixtures.tokens import TestIssuer
from services.chat.domain import AnswerComplete, AnswerDelta, AnswerKind, AskUpdate, Citation
from services.chat.websocket import (
    CHAT_SUBPROTOCOL,
    MAX_ASKS_IN_FLIGHT,
    WS_PATH,
    AskCommand,
    CancelCommand,
    ChatProtocol,
    ProtocolError,
    error_event,
    parse_command,
    update_event,
)
from services.kit.auth import optional_principal
from services.kit.errors import InvalidArgument, NotFound, Unauthenticated
from services.kit.server import remaining_time
from services.kit.websocket import (
    CLOSE_REASON_MAX_BYTES,
    CLOSE_UNAUTHENTICATED,
    WebSocketBridge,
    close_reason,
    token_of,
)

CONVERSATION = "0c0c0c0c-0000-4000-8000-000000000001"
CITATION = Citation(
    document_id="d0d0d0d0-0000-4000-8000-000000000001",
    space_id="5a5a5a5a-0000-4000-8000-000000000001",
    chunk_index=2,
    document_version=3,
    snippet="Refunds are paid within 14 days.",
    score=0.75,
)
COMPLETE = AnswerComplete(
    "a0a0a0a0-0000-4000-8000-000000000001",
    "b0b0b0b0-0000-4000-8000-000000000001",
    AnswerKind.EXTRACTIVE,
    "From your documents:\n> Refunds are paid within 14 days. [1]",
)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


# ------------------------------------------------------------ protocol


def test_an_ask_is_parsed_with_its_optional_trace_context() -> None:
    raw = json.dumps(
        {
            "type": "ask",
            "request_id": "r1",
            "conversation_id": CONVERSATION,
            "question": "How fast are refunds?",
            "traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01",
        }
    )
    command = parse_command(raw)
    assert command == AskCommand("r1", CONVERSATION, "How fast are refunds?", f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
    assert isinstance(command, AskCommand)
    assert command.trace_carrier == {"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"}


def test_a_cancel_names_its_ask() -> None:
    assert parse_command('{"type": "cancel", "request_id": "r1"}') == CancelCommand("r1")


def test_missing_ask_fields_are_left_to_the_use_case_to_name() -> None:
    # The use case answers "conversation_id: is required", exactly as over gRPC.
    assert parse_command('{"type": "ask", "request_id": "r1"}') == AskCommand("r1", "", "")


@pytest.mark.parametrize(
    ("raw", "field", "request_id"),
    [
        ("{not json", "message", None),
        (b'{"type": "ask"}', "message", None),
        ("[1, 2]", "message", None),
        ('{"type": "shout", "request_id": "r9"}', "type", "r9"),
        ('{"request_id": "r9"}', "type", "r9"),
        ('{"type": "ask", "conversation_id": "x", "question": "q"}', "request_id", None),
        ('{"type": "ask", "request_id": "", "question": "q"}', "request_id", None),
        ('{"type": "ask", "request_id": 7, "question": "q"}', "request_id", None),
        (json.dumps({"type": "ask", "request_id": "r" * 101}), "request_id", None),
        ('{"type": "ask", "request_id": "r2", "question": 42}', "question", "r2"),
        ('{"type": "ask", "request_id": "r2", "question": "q", "traceparent": {}}', "traceparent", "r2"),
        ('{"type": "cancel"}', "request_id", None),
        # Lone surrogates are no text: refused before anything is stored or echoed.
        ('{"type": "ask", "request_id": "r3", "question": "\\ud800"}', "question", "r3"),
        ('{"type": "ask", "request_id": "\\udfff", "question": "q"}', "request_id", None),
        ('{"type": "ask", "request_id": "r4", "\\ud800": 1}', "message", "r4"),
        # Nesting without end is refused, at any depth Python could or could not parse.
        ('{"type": "ask", "request_id": "r5", "x": ' + "[" * 40 + "]" * 40 + "}", "x" + "[0]" * 31, "r5"),
        ("[" * 100_000 + "]" * 100_000, "message", None),
        ('{"request_id": "r6", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "message", None),
    ],
)
def test_protocol_errors_name_the_field_and_the_ask_when_known(
    raw: str | bytes, field: str, request_id: str | None
) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_command(raw)
    assert caught.value.error.field == field
    assert caught.value.request_id == request_id
    event = error_event(caught.value.request_id, caught.value.error)
    assert (event["type"], event["code"], event["field"]) == ("error", "INVALID_ARGUMENT", field)


def test_updates_become_json_events() -> None:
    assert update_event("r1", AnswerDelta(" text ")) == {"type": "delta", "request_id": "r1", "text": " text "}
    assert update_event("r1", CITATION, 2) == {
        "type": "citation",
        "request_id": "r1",
        "number": 2,
        "document_id": CITATION.document_id,
        "space_id": CITATION.space_id,
        "chunk_index": 2,
        "document_version": 3,
        "snippet": CITATION.snippet,
        "score": 0.75,
    }
    assert update_event("r1", COMPLETE) == {
        "type": "complete",
        "request_id": "r1",
        "message_id": COMPLETE.message_id,
        "question_message_id": COMPLETE.question_message_id,
        "answer_kind": "ANSWER_KIND_EXTRACTIVE",
        "text": COMPLETE.text,
    }


def test_errors_map_like_grpc_and_never_leak_internals() -> None:
    assert error_event("r1", NotFound("conversation x does not exist")) == {
        "type": "error",
        "request_id": "r1",
        "code": "NOT_FOUND",
        "message": "conversation x does not exist",
    }
    assert error_event("r1", InvalidArgument("question", "is required"))["field"] == "question"
    internal = error_event("r1", RuntimeError("password=hunter2"), trace_id=TRACE_ID)
    assert internal["code"] == "INTERNAL"
    assert "hunter2" not in internal["message"]
    assert TRACE_ID in internal["message"]


def upgrade(path: str, **headers: str) -> Request:
    return Request(path, Headers(**headers))


def test_the_token_comes_from_the_header_a_subprotocol_or_else_the_query() -> None:
    assert token_of(upgrade(WS_PATH, Authorization="Bearer abc")) == "abc"
    offered = {"Sec-WebSocket-Protocol": "kp.chat.v1, access_token.x.y-z_"}
    assert token_of(upgrade(WS_PATH, **offered)) == "x.y-z_"
    assert token_of(upgrade(f"{WS_PATH}?access_token=xyz", **offered)) == "x.y-z_"
    assert token_of(upgrade(f"{WS_PATH}?access_token=xyz")) == "xyz"
    assert token_of(upgrade(f"{WS_PATH}?access_token=xyz", Authorization="Bearer abc")) == "abc"
    assert token_of(upgrade(f"{WS_PATH}?access_token=")) is None
    assert token_of(upgrade(WS_PATH)) is None
    assert token_of(None) is None
    with pytest.raises(Unauthenticated):
        token_of(upgrade(WS_PATH, Authorization="Basic dXNlcjpwYXNz"))


def test_close_reasons_fit_a_close_frame() -> None:
    assert close_reason("short") == "short"
    long = close_reason("é" * 200)
    assert len(long.encode()) <= CLOSE_REASON_MAX_BYTES
    assert long.endswith("...")


# ------------------------------------------------------------ the server


@dataclass
class Seen:
    caller_id: str
    conversation_id: str
    question: str
    forwarded_token: str | None
    deadline_s: float


@dataclass
class FakeAsk:
    """Stands in for ChatService.ask; questions pick its behaviour."""

    seen: list[Seen] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def ask(self, caller_id: str, conversation_id: str, question: str) -> AsyncIterator[AskUpdate]:
        principal = optional_principal()
        token = principal.raw_token if principal else None
        self.seen.append(Seen(caller_id, conversation_id, question, token, remaining_time(1000)))
        if question == "missing":
            raise NotFound(f"conversation {conversation_id} does not exist")
        if question == "boom":
            raise RuntimeError("password=hunter2")
        if question == "wait":
            yield AnswerDelta("thinking")
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.append(conversation_id)
                raise
        yield AnswerDelta("From your documents:")
        yield CITATION
        yield AnswerDelta("\n> Refunds are paid within 14 days. [1]")
        yield COMPLETE


@dataclass
class Running:
    url: str
    fake: FakeAsk
    issuer: TestIssuer
    spans: InMemorySpanExporter


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer()


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("services.kit.websocket._tracer", provider.get_tracer("services.kit.websocket"))
        yield spans
    provider.shutdown()


@pytest.fixture
async def running(issuer: TestIssuer, exporter: InMemorySpanExporter) -> AsyncIterator[Running]:
    fake = FakeAsk()
    verifier = issuer.verifier()
    server = await WebSocketBridge(ChatProtocol(fake, verifier.leeway_s), verifier).open_server("127.0.0.1", 0)
    await server.start_serving()
    serving = asyncio.create_task(server.serve_forever())
    port = server.sockets[0].getsockname()[1]
    exporter.clear()
    yield Running(f"ws://127.0.0.1:{port}{WS_PATH}", fake, issuer, exporter)
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving


@contextlib.asynccontextmanager
async def socket(running: Running, user: str = "user-1") -> AsyncIterator[ClientConnection]:
    token = running.issuer.token(user)
    async with connect(running.url, additional_headers={"Authorization": f"Bearer {token}"}) as connection:
        yield connection


async def send(connection: ClientConnection, **message: Any) -> None:
    await connection.send(json.dumps(message))


async def receive(connection: ClientConnection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await asyncio.wait_for(connection.recv(), timeout=5))
    return event


async def until_end(connection: ClientConnection, request_id: str) -> list[dict[str, Any]]:
    """The events of one ask, through its complete or error (others' events are skipped)."""
    events = []
    while True:
        event = await receive(connection)
        if event["request_id"] != request_id:
            continue
        events.append(event)
        if event["type"] in ("complete", "error"):
            return events


async def closed_with(connection: ClientConnection) -> tuple[int, str]:
    with pytest.raises(ConnectionClosedError):
        await asyncio.wait_for(connection.recv(), timeout=5)
    assert connection.close_code is not None
    return connection.close_code, connection.close_reason or ""


async def test_an_ask_streams_deltas_citations_then_complete(running: Running) -> None:
    async with socket(running) as connection:
        await send(connection, type="ask", request_id="r1", conversation_id=CONVERSATION, question="refunds?")
        events = await until_end(connection, "r1")
    assert [event["type"] for event in events] == ["delta", "citation", "delta", "complete"]
    assert events[1]["number"] == 1
    assert "".join(e["text"] for e in events if e["type"] == "delta") == events[-1]["text"]
    [seen] = running.fake.seen
    assert (seen.caller_id, seen.conversation_id, seen.question) == ("user-1", CONVERSATION, "refunds?")


async def test_the_ask_runs_as_the_sockets_user_within_a_deadline(running: Running) -> None:
    token = running.issuer.token("user-7")
    async with connect(f"{running.url}?access_token={token}") as connection:
        await send(connection, type="ask", request_id="r1", conversation_id=CONVERSATION, question="q")
        await until_end(connection, "r1")
    [seen] = running.fake.seen
    assert seen.caller_id == "user-7"
    assert seen.forwarded_token == token, "peers called during the ask receive the user's token"
    assert 0 < seen.deadline_s <= 60


@pytest.mark.parametrize("token", [None, "not-a-jwt", "expired"])
async def test_a_socket_without_a_valid_token_is_closed_with_4401(running: Running, token: str | None) -> None:
    headers = {}
    if token == "expired":
        headers["Authorization"] = "Bearer " + running.issuer.token(exp=1, iat=0)
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with connect(running.url, additional_headers=headers) as connection:
        code, reason = await closed_with(connection)
    assert code == CLOSE_UNAUTHENTICATED
    assert reason
    assert running.fake.seen == []


async def test_a_browser_offers_its_token_as_a_subprotocol_which_is_never_echoed(running: Running) -> None:
    token = running.issuer.token("user-9")
    async with connect(
        running.url, subprotocols=[Subprotocol(CHAT_SUBPROTOCOL), Subprotocol(f"access_token.{token}")]
    ) as connection:
        assert connection.subprotocol == CHAT_SUBPROTOCOL
        await send(connection, type="ask", request_id="r1", conversation_id=CONVERSATION, question="q")
        await until_end(connection, "r1")
    assert running.fake.seen[0].caller_id == "user-9"
    with pytest.raises(InvalidStatus) as caught:
        async with connect(running.url, subprotocols=[Subprotocol(f"access_token.{token}")]):
            pass
    assert caught.value.response.status_code == 400, "the token alone would have to be echoed back: refused"


async def test_other_paths_are_not_found(running: Running) -> None:
    with pytest.raises(InvalidStatus) as caught:
        async with connect(running.url.replace(WS_PATH, "/elsewhere")):
            pass
    assert caught.value.response.status_code == 404


async def test_bad_messages_get_an_error_and_the_socket_stays_open(running: Running) -> None:
    async with socket(running) as connection:
        await connection.send("{not json")
        first = await receive(connection)
        await send(connection, type="shout", request_id="r0")
        second = await receive(connection)
        await send(connection, type="ask", request_id="r1", conversation_id=CONVERSATION, question="q")
        events = await until_end(connection, "r1")
    assert (first["code"], first["request_id"], first["field"]) == ("INVALID_ARGUMENT", None, "message")
    assert (second["code"], second["request_id"], second["field"]) == ("INVALID_ARGUMENT", "r0", "type")
    assert events[-1]["type"] == "complete"


async def test_deep_nesting_and_lone_surrogates_are_answered_and_the_socket_stays_open(running: Running) -> None:
    """Before: the first closed the socket with 1011 (RecursionError), the second reached the
    use case, which stored the question and then failed with INTERNAL."""
    async with socket(running) as connection:
        await connection.send('{"type": "ask", "request_id": "deep", "x": ' + "[" * 30_000 + "]" * 30_000 + "}")
        deep = await receive(connection)
        await connection.send('{"type": "ask", "request_id": "r2", "conversation_id": "c", "question": "\\ud800?"}')
        lone = await receive(connection)
        await send(connection, type="ask", request_id="r1", conversation_id=CONVERSATION, question="q")
        events = await until_end(connection, "r1")
    assert (deep["code"], deep["field"]) == ("INVALID_ARGUMENT", "message")
    assert (lone["code"], lone["request_id"], lone["field"]) == ("INVALID_ARGUMENT", "r2", "question")
    assert events[-1]["type"] == "complete"
    assert [seen.question for seen in running.fake.seen] == ["q"], "the refused asks never reached the use case"


async def test_use_case_errors_end_only_their_ask(running: Running) -> None:
    async with socket(running) as connection:
        await send(connection, type="ask", request_id="nf", conversation_id=CONVERSATION, question="missing")
        [not_found] = await until_end(connection, "nf")
        await send(connection, type="ask", request_id="bug", conversation_id=CONVERSATION, question="boom")
        [internal] = await until_end(connection, "bug")
        await send(connection, type="ask", request_id="ok", conversation_id=CONVERSATION, question="q")
        events = await until_end(connection, "ok")
    assert (not_found["code"], not_found["request_id"]) == ("NOT_FOUND", "nf")
    assert internal["code"] == "INTERNAL"
    assert "hunter2" not in internal["message"]
    assert events[-1]["type"] == "complete"


async def test_several_asks_share_a_socket_and_one_can_be_cancelled(running: Running) -> None:
    async with socket(running) as connection:
        await send(connection, type="ask", request_id="slow", conversation_id=CONVERSATION, question="wait")
        assert (await receive(connection))["text"] == "thinking"
        await send(connection, type="ask", request_id="fast", conversation_id=CONVERSATION, question="q")
        fast = await until_end(connection, "fast")
        await send(connection, type="cancel", request_id="slow")
        slow = await until_end(connection, "slow")
        await send(connection, type="cancel", request_id="long-gone")  # ignored
        await send(connection, type="ask", request_id="slow", conversation_id=CONVERSATION, question="q")
        again = await until_end(connection, "slow")
    assert fast[-1]["type"] == "complete"
    assert slow == [{"type": "error", "request_id": "slow", "code": "CANCELLED", "message": "the ask was cancelled"}]
    assert running.fake.cancelled == [CONVERSATION]
    assert again[-1]["type"] == "complete", "a finished ask's request_id may be used again"


async def test_a_request_id_in_use_and_too_many_asks_are_refused(running: Running) -> None:
    async with socket(running) as connection:
        for index in range(MAX_ASKS_IN_FLIGHT):
            await send(connection, type="ask", request_id=f"w{index}", conversation_id=CONVERSATION, question="wait")
        for _ in range(MAX_ASKS_IN_FLIGHT):
            assert (await receive(connection))["type"] == "delta"
        await send(connection, type="ask", request_id="w0", conversation_id=CONVERSATION, question="q")
        duplicate = await receive(connection)
        await send(connection, type="ask", request_id="extra", conversation_id=CONVERSATION, question="q")
        extra = await receive(connection)
        running.fake.release.set()
        for index in range(MAX_ASKS_IN_FLIGHT):
            assert (await until_end(connection, f"w{index}"))[-1]["type"] == "complete"
    assert (duplicate["request_id"], duplicate["code"], duplicate["field"]) == ("w0", "INVALID_ARGUMENT", "request_id")
    assert (extra["request_id"], extra["code"]) == ("extra", "RESOURCE_EXHAUSTED")


async def test_asks_in_progress_end_when_the_client_goes_away(running: Running) -> None:
    async with socket(running) as connection:
        await send(connection, type="ask", request_id="slow", conversation_id=CONVERSATION, question="wait")
        assert (await receive(connection))["text"] == "thinking"
    for _ in range(50):
        if running.fake.cancelled:
            break
        await asyncio.sleep(0.02)
    assert running.fake.cancelled == [CONVERSATION]


async def test_each_message_is_a_server_span_joining_the_asks_trace(running: Running) -> None:
    traceparent = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"
    async with socket(running) as connection:
        await send(
            connection, type="ask", request_id="r1", conversation_id=CONVERSATION, question="q", traceparent=traceparent
        )
        await until_end(connection, "r1")
        await connection.send("{not json")
        await receive(connection)
    spans = {span.name: span for span in running.spans.get_finished_spans()}
    ask = spans[f"WS {WS_PATH} ask"]
    assert ask.kind is SpanKind.SERVER
    assert format(ask.context.trace_id, "032x") == TRACE_ID
    assert ask.parent is not None
    assert format(ask.parent.span_id, "016x") == PARENT_SPAN_ID
    assert ask.attributes is not None
    assert ask.attributes["chat.request_id"] == "r1"
    invalid = spans[f"WS {WS_PATH} invalid"]
    assert invalid.kind is SpanKind.SERVER
    assert format(invalid.context.trace_id, "032x") != TRACE_ID
    assert f"WS {WS_PATH} connect" in spans
